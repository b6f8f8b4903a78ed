"""The original's models beyond the paper tables: Swin-V2-T-ADN and ResNet50vd / ResNet101vd-ADN (with their
HEAD flags), against ``data/ref_original_head.pt`` (made by ``data/make_original_reference.py`` from the
original code: key layouts and the outputs of every skip configuration)."""

from __future__ import annotations

import re
import sqlite3
from importlib.util import module_from_spec, spec_from_file_location
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torchvision

from adn.engine import freeze_all_but_classifier, train_one_epoch, train_step
from adn.models import create_model
from adn.models.convert import from_torchvision
from adn.models.resnet import ResNetADN
from adn.models.swin_transformer import SwinTransformerADN
from adn.train_adn import main, parse_args
from common.errors import UserError

DATA = Path(__file__).parent / "data"
HEAD_MODELS = ["swin_v2_t", "resnet50vd", "resnet101vd"]


def _load_generator():
    spec = spec_from_file_location("make_original_reference", DATA / "make_original_reference.py")
    module = module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def reference():
    return torch.load(DATA / "ref_original_head.pt", weights_only=True)


@pytest.mark.parametrize("name", HEAD_MODELS)
def test_key_layout_and_outputs_match_the_original(name, reference):
    expected = reference[name]
    model = create_model(name)
    assert [[k, list(v.shape)] for k, v in model.state_dict().items()] == expected["state_dict"]
    assert sum(p.numel() for p in model.parameters()) == expected["num_params"]
    assert [n for n, m in model.named_modules() if getattr(m, "skippable", False)] == expected["skippable_blocks"]
    model.load_state_dict(_load_generator().fill_state_dict(model.state_dict()), strict=True)
    model.eval()
    assert sorted(expected["outputs"]) == sorted(model.configurations())
    with torch.no_grad():
        for cfg, output in expected["outputs"].items():
            torch.testing.assert_close(model(reference["input"], cfg), output, rtol=0, atol=1e-5, msg=cfg)


def test_vd_shortcut_and_swin_v2_norm_placement():
    resnet = create_model("resnet50vd", num_classes=10)
    assert isinstance(resnet.layer2[0].downsample[0], torch.nn.AvgPool2d)
    assert resnet.layer1[0].downsample[0].stride == (1, 1)  # layer1's stride-1 shortcut is unchanged
    swin = create_model("swin_v2_t", num_classes=10)
    assert swin.features[1].norm_skip.normalized_shape == (192,)  # after the reduction: 2 * dim
    assert swin.features[0][0].attn.window_size == [8, 8]


def test_a_swin_v2_training_step_reaches_both_norm_sets():
    torch.manual_seed(0)
    model = create_model("swin_v2_t", num_classes=10).train()
    stats = train_step(model, torch.randn(2, 3, 8, 8), torch.tensor([1, 7]), torch.nn.CrossEntropyLoss(), topk=5)
    assert all(torch.isfinite(torch.tensor(v)) for v in stats.values())
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert grads["features.0.0.norm1_skip.weight"].abs().sum() > 0  # base-net pass (post-norm after attention)
    assert grads["features.0.0.norm1.weight"].abs().sum() > 0  # super-net pass
    assert grads["features.0.1.norm1.weight"].abs().sum() > 0 and "features.0.1.norm1_skip.weight" not in grads


def test_freeze_params_trains_only_the_head_and_keeps_bn_statistics():
    torch.manual_seed(0)
    model = create_model("resnet_adn_cifar", num_classes=10)
    assert freeze_all_but_classifier(model) == sum(p.numel() for p in model.fc.parameters())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    loader = [(torch.randn(8, 3, 8, 8), torch.randint(0, 10, (8,))) for _ in range(2)]
    train_one_epoch(model, torch.nn.CrossEntropyLoss(), optimizer, loader, "cpu", 0,
                    SimpleNamespace(freeze_params=True, subpath_topk=5))
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {"fc.weight", "fc.bias"}


def test_vd_trains_resumes_and_tracks_through_the_entry_point(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.chdir(tmp_path)  # MLflow's artifacts
    out = tmp_path / "vd"
    base = ["--dataset", "synthetic", "--model", "resnet50vd", "--device", "cpu", "--val-crop-size", "8", "-b", "128",
            "-j", "0", "--freeze_params", "--output-dir", str(out)]
    first = main(parse_args(base + ["--epochs", "1"]))
    second = main(parse_args(base + ["--epochs", "2", "--resume", str(out / "checkpoint.pth")]))
    assert first["epoch"] == 0 and second["epoch"] == 1
    printed = capsys.readouterr().out
    assert "training only fc (20,490 parameters)" in printed and "continuing at epoch 1" in printed
    ckpt = torch.load(out / "checkpoint.pth", weights_only=True)
    assert ckpt["args"]["model"] == "resnet50vd" and "layer2.0.downsample.2.running_var" in ckpt["model"]
    db = sqlite3.connect(tmp_path / "mlflow.db")
    assert db.execute("select value from params where key = 'model'").fetchall() == [("resnet50vd",)] * 2
    assert len(list(tmp_path.glob("mlruns/*/*/artifacts/run_summary.json"))) == 2


@pytest.mark.slow
def test_torch_compile_trains_as_eager(tmp_path):
    """One epoch through torch.compile gives the eager run's losses (minutes of compilation on a CPU). Inductor's
    fused kernels sum in another order, and four SGD steps on a randomly initialised net carry that into the
    epoch means: 1.3 % apart in the run that set the tolerance."""
    argv = ["--dataset", "synthetic", "--model", "resnet_adn_cifar", "--device", "cpu", "--val-crop-size", "8",
            "-b", "64", "-j", "0", "--epochs", "1", "--lr", "0.05", "--no-mlflow"]
    eager = main(parse_args(argv + ["--output-dir", str(tmp_path / "eager")]))
    compiled = main(parse_args(argv + ["--output-dir", str(tmp_path / "compiled"), "--torch-compile"]))
    for key in ("loss_full_acc", "loss_kd"):
        assert compiled["train"][key] == pytest.approx(eager["train"][key], rel=5e-2), key


@pytest.mark.parametrize("extra, needle", [
    (["--imagenet21k"], "--imagenet21k / --tree_path"),
    (["--tree_path", "tree.pth"], "not supported"),
    (["--torch-compile", "--test-only"], "drop it with --test-only"),
])
def test_unsupported_head_flags_are_one_line_errors(extra, needle, tmp_path):
    with pytest.raises(UserError, match=re.escape(needle)):
        main(parse_args(["--dataset", "synthetic", "--model", "resnet50vd", "--device", "cpu", "--no-mlflow",
                         "--output-dir", str(tmp_path)] + extra))


def test_bad_variants_and_foreign_weights():
    with pytest.raises(ValueError, match="variant"):
        ResNetADN(variant="b")
    with pytest.raises(ValueError, match="version"):
        SwinTransformerADN(version=3)
    with pytest.raises(ValueError, match="no ResNet-D"):
        from_torchvision(torchvision.models.resnet50().state_dict(), create_model("resnet50vd"))


def test_torchvision_swin_v2_weights_convert_to_an_identical_super_net():
    torch.manual_seed(0)
    tv = torchvision.models.swin_v2_t(num_classes=10).eval()
    model = create_model("swin_v2_t", num_classes=10).eval()
    model.load_state_dict(from_torchvision(tv.state_dict(), model))
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), tv(x), rtol=0, atol=0)
