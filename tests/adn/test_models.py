"""ADN models: manifest key layouts, the split into mandatory and skippable sub-paths, skip configurations."""

from __future__ import annotations

import json

import pytest
import torch
import torchvision

from adn.models import create_model, parse_skip_cfg, skip_cfg_name
from adn.models.convert import from_torchvision, from_training_checkpoint, is_skip_norm_key
from adn.models.skip import all_skip_cfgs

FULL_SIZE = ["resnet50", "mobilenet_v2", "swin_t", "vit_b_16"]


@pytest.fixture(scope="module", params=FULL_SIZE)
def model_and_manifest(request, shared_dir):
    path = shared_dir / "reference" / "adn" / f"manifest_{request.param}_adn.json"
    torch.manual_seed(0)
    return request.param, create_model(request.param).eval(), json.loads(path.read_text())


def test_state_dict_matches_the_manifest_key_for_key(model_and_manifest, shared_dir):
    _, model, manifest = model_and_manifest
    ours = [[key, list(value.shape)] for key, value in model.state_dict().items()]
    assert ours == manifest["state_dict"]


def test_parameter_counts_match(model_and_manifest, shared_dir):
    _, model, manifest = model_and_manifest
    params = dict(model.named_parameters())
    assert sum(p.numel() for p in params.values()) == manifest["num_params"]
    assert sum(p.numel() for k, p in params.items() if is_skip_norm_key(k)) == manifest["num_params_skip_norms_only"]


def test_skippable_blocks_and_stage_count(model_and_manifest, shared_dir):
    _, model, manifest = model_and_manifest
    assert [n for n, m in model.named_modules() if getattr(m, "skippable", False)] == manifest["skippable_blocks"]
    assert model.num_skippable_stages == manifest["num_skippable_stages"]
    assert model.configurations() == list(manifest["flops"])


def calls_per_module(model, cfg: str) -> dict[str, int]:
    """How often each module runs in one forward of ``cfg`` (a 32x32 ResNet/MobileNet input keeps this fast)."""
    counts: dict[str, int] = {}
    hooks = [m.register_forward_hook(lambda mod, i, o, n=name: counts.__setitem__(n, counts.get(n, 0) + 1))
             for name, m in model.named_modules() if name]
    size = 224 if type(model).__name__ == "VisionTransformerADN" else 64
    with torch.no_grad():
        model(torch.randn(1, 3, size, size), cfg)
    for hook in hooks:
        hook.remove()
    return counts


@pytest.mark.parametrize("name", ["resnet50", "mobilenet_v2", "swin_t", "vit_b_16"])
def test_skipped_blocks_do_not_run_and_mandatory_ones_switch_norms(name):
    model = create_model(name, num_classes=10).eval()
    skippable = [n for n, m in model.named_modules() if getattr(m, "skippable", False)]
    super_calls, base_calls = calls_per_module(model, "F" * 5 if name == "mobilenet_v2" else "FFFF"), \
        calls_per_module(model, "T" * model.num_skippable_stages)
    assert all(super_calls.get(b) == 1 for b in skippable)
    assert not any(b in base_calls for b in skippable)
    skip_norms = [n for n, _ in model.named_modules() if n.endswith("_skip")]
    assert skip_norms and all(n in base_calls for n in skip_norms)
    assert not any(n in super_calls for n in skip_norms)


def test_mixed_configuration_switches_only_its_stages():
    model = create_model("resnet50", num_classes=10).eval()
    calls = calls_per_module(model, "TFFT")
    assert "layer1.2" not in calls and "layer4.2" not in calls
    assert calls["layer2.2"] == 1 and calls["layer3.5"] == 1
    assert "layer1.0.bn1_skip" in calls and "layer2.0.bn1_skip" not in calls and "layer2.0.bn1" in calls


def test_swin_patch_merging_follows_the_next_stage():
    model = create_model("swin_t", num_classes=10).eval()
    calls = calls_per_module(model, "FTFF")
    assert "features.1.norm_skip" in calls and "features.3.norm" in calls and "features.3.norm_skip" not in calls


def test_mobilenet_outer_layers_follow_the_first_and_last_flags():
    model = create_model("mobilenet_v2", num_classes=10).eval()
    first = calls_per_module(model, "TFFFF")
    assert "features.0.norm_skip" in first and "features.1.conv.0.norm_skip" in first
    assert "features.8.norm" in first and "features.8.norm_skip" not in first
    last = calls_per_module(model, "FFFFT")
    assert "features.8.norm_skip" in last and "features.7.conv.0.norm_skip" in last and "features.0.norm" in last


def test_default_configuration_is_the_super_net_and_settable():
    model = create_model("resnet_adn_cifar", num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), model(x, "FFFF"))
        model.skip_cfg = "TTTT"
        assert model.skip_cfg == (True,) * 4
        assert torch.equal(model(x), model(x, "TTTT"))
        assert not torch.equal(model(x), model(x, "FFFF"))


def test_wrong_configurations_are_rejected():
    model = create_model("resnet_adn_cifar", num_classes=10)
    with pytest.raises(ValueError, match="4 skippable stages"):
        model(torch.randn(1, 3, 32, 32), "TFT")
    with pytest.raises(ValueError, match="not one of"):
        model.skip_cfg = ["yes", "no", "F", "F"]


@pytest.mark.parametrize("value, expected", [
    ("TFTF", (True, False, True, False)),
    ("tftf", (True, False, True, False)),
    (["True", "false", "T", "0"], (True, False, True, False)),
    (["TRUE", "1", "f", "F"], (True, True, False, False)),
    ("T F T F", (True, False, True, False)),
    ([True, False, False, True], (True, False, False, True)),
    (None, (False,) * 4),
])
def test_parse_skip_cfg_accepts_every_spelling(value, expected):
    assert parse_skip_cfg(value, 4) == expected
    assert skip_cfg_name(expected) == "".join("T" if f else "F" for f in expected)


def test_all_skip_cfgs_order():
    cfgs = all_skip_cfgs(3)
    assert len(cfgs) == 8 and cfgs[0] == (False,) * 3 and cfgs[-1] == (True,) * 3 and cfgs[1] == (False, False, True)


def test_shared_norm_ablation_has_no_skip_norms():
    model = create_model("resnet_adn_cifar", num_classes=10, skip_aware_norms=False)
    assert not any(is_skip_norm_key(k) for k in model.state_dict())
    calls = calls_per_module(model.eval(), "TTTT")
    assert "layer1.0.bn1" in calls


def test_unknown_model_name():
    with pytest.raises(ValueError, match="choose one of"):
        create_model("resnet18")


def perturb_norms(model: torch.nn.Module) -> torch.nn.Module:
    """Random norm parameters, statistics and biases, so that a wrongly paired tensor changes the output."""
    with torch.no_grad():
        for value in model.state_dict().values():
            if value.is_floating_point() and value.dim() == 1:
                value.copy_(0.9 + 0.2 * torch.rand_like(value))
    return model


@pytest.mark.parametrize("name", ["resnet50", "mobilenet_v2", "swin_t"])
def test_torchvision_weights_convert_to_an_identical_super_net(name):
    torch.manual_seed(0)
    tv = perturb_norms(getattr(torchvision.models, name)(num_classes=10)).eval()
    model = create_model(name, num_classes=10).eval()
    state = from_torchvision(tv.state_dict(), model)
    model.load_state_dict(state)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x, "F" * model.num_skippable_stages), tv(x), rtol=0, atol=0)
    skip_keys = [k for k in state if is_skip_norm_key(k)]
    assert skip_keys and all(torch.equal(state[k], state[k.replace("_skip.", ".")]) for k in skip_keys)


def test_torchvision_vit_converts():
    tv = torchvision.models.vit_b_16(num_classes=10).eval()
    torch.nn.init.normal_(tv.heads.head.weight, std=0.02)
    model = create_model("vit_b_16", num_classes=10).eval()
    model.load_state_dict(from_torchvision(tv.state_dict(), model))
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(model(x), tv(x), rtol=0, atol=0)


def test_converter_rejects_another_architecture():
    with pytest.raises(ValueError, match="same architecture|architectures differ"):
        from_torchvision(torchvision.models.resnet18().state_dict(), create_model("resnet50"))
    with pytest.raises(ValueError, match="architectures differ"):
        from_torchvision(torchvision.models.resnet50(num_classes=10).state_dict(), create_model("resnet50"))


def test_training_checkpoint_converter():
    model = create_model("resnet_adn_cifar", num_classes=10)
    ema = {f"module.{k}": v + 1 if v.is_floating_point() else v for k, v in model.state_dict().items()}
    checkpoint = {"model": model.state_dict(), "model_ema": {**ema, "n_averaged": torch.tensor(3)}, "epoch": 9}
    plain = from_training_checkpoint(checkpoint)
    averaged = from_training_checkpoint(checkpoint, use_ema=True)
    assert list(plain) == list(averaged) == list(model.state_dict())
    assert torch.equal(averaged["fc.bias"], model.state_dict()["fc.bias"] + 1)
    with pytest.raises(KeyError, match="no 'model_ema'"):
        from_training_checkpoint({"model": {}}, use_ema=True)
