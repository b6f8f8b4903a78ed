"""T2T-ViT-7/14 with JEI-DNN exits: layout against the manifests, the public API, the gates, and weight loading in
the original repositories' checkpoint formats (spec Sec. b, c)."""

from __future__ import annotations

import argparse
import json
import math

import pytest
import torch
from timm.layers import DropPath
from torch import nn

from common.checkpoint import CheckpointError
from jeidnn.models import IdentityGate, LearnableUncGate, create_model, sinusoid_table, uncertainty_features
from jeidnn.weights import (
    load_imagenet_pretrained,
    load_jeidnn_checkpoint,
    load_transfer_checkpoint,
    load_weights,
    resize_pos_embed,
)

VARIANTS = {  # manifest suffix: (arch, num_classes, img_size)
    "7": ("t2t_vit_7", 10, 224),
    "7_c100": ("t2t_vit_7", 100, 224),
    "7_svhn32": ("t2t_vit_7", 10, 32),
    "14": ("t2t_vit_14", 10, 224),
    "14_c100": ("t2t_vit_14", 100, 224),
}
EXITS = ("intermediate_heads.", "gates.")



@pytest.fixture(scope="module")
def svhn_model():
    """T2T-ViT-7 at SVHN's 32 px (4 tokens + CLS): the cheap model for API tests."""
    return create_model("t2t_vit_7", num_classes=10, img_size=32)


# ------------------------------------------------------------------------------------------------- layout
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_state_dict_matches_manifest(reference_dir, variant):
    manifest = json.loads((reference_dir / f"manifest_t2t_vit_{variant}.json").read_text())
    arch, num_classes, img_size = VARIANTS[variant]
    model = create_model(arch, num_classes=num_classes, img_size=img_size)
    state = model.state_dict()
    assert [[k, list(v.shape)] for k, v in state.items()] == manifest["state_dict"]
    assert {str(v.dtype) for v in state.values()} == set(manifest["state_dict_dtypes"])
    assert sum(v.numel() for v in state.values()) == manifest["num_params"]
    assert sum(p.numel() for p in model.parameters()) == manifest["num_params_nn_parameters"]
    assert sum(p.numel() for p in model.intermediate_heads.parameters()) == manifest["num_params_intermediate_heads"]
    assert sum(p.numel() for p in model.gates.parameters()) == manifest["num_params_gates"]
    assert not list(model.buffers())
    assert model.num_exits == len(manifest["exit_positions_after_block_idx"]) == manifest["num_blocks"] - 1


@pytest.mark.parametrize(("arch", "num_classes", "expected"), [
    ("t2t_vit_7", 10, 4_071_242), ("t2t_vit_7", 100, 4_233_152)])
def test_parameter_counts_of_spec_table(arch, num_classes, expected):
    model = create_model(arch, num_classes=num_classes)
    assert sum(p.numel() for p in model.parameters()) == expected
    embed, exits = model.embed_dim, model.num_exits
    assert sum(p.numel() for p in model.intermediate_heads.parameters()) == exits * (embed * num_classes + num_classes)
    assert sum(p.numel() for p in model.gates.parameters()) == exits * 5


def test_fixed_parameters_and_init(svhn_model):
    model = svhn_model
    assert not model.pos_embed.requires_grad
    assert not model.tokens_to_token.attention1.w.requires_grad and not model.tokens_to_token.attention2.w.requires_grad
    assert model.pos_embed.shape == (1, 5, 256)
    torch.testing.assert_close(model.pos_embed.data, sinusoid_table(5, 256))
    # backbone: zero biases, unit LayerNorms, trunc_normal(.02) weights; ICs and gates: PyTorch's default init
    state = model.state_dict()
    assert all(float(v.abs().max()) == 0 for k, v in state.items() if k.endswith("bias") and not k.startswith(EXITS))
    assert all(float(v.min()) == float(v.max()) == 1 for k, v in state.items() if "norm" in k and k.endswith("weight"))
    assert all(abs(float(v.std()) - 0.02) < 0.002 for k, v in state.items() if k.endswith(("qkv.weight", "fc1.weight")))
    assert all(float(head.bias.detach().abs().max()) > 0 for head in model.intermediate_heads)
    assert all(float(gate.linear.bias.detach().abs().max()) > 0 for gate in model.gates)
    assert float(model.intermediate_heads[0].weight.detach().std()) > 0.03  # kaiming-uniform: 1/sqrt(3 * 256)


def test_drop_path_schedule():
    model = create_model("t2t_vit_7", img_size=32, drop_path_rate=0.1)
    assert isinstance(model.blocks[0].drop_path, nn.Identity)
    rates = [block.drop_path.drop_prob for block in model.blocks[1:]]
    assert all(isinstance(block.drop_path, DropPath) for block in model.blocks[1:])
    assert rates == pytest.approx([0.1 * i / 6 for i in range(1, 7)])
    assert model.blocks[0].attn.qkv.bias is None and model.blocks[0].attn.scale == 64 ** -0.5


def test_create_model_rejects_unknown_names():
    with pytest.raises(ValueError, match="t2t_vit_7"):
        create_model("t2t_vit_19")
    with pytest.raises(ValueError, match="identity"):
        create_model("t2t_vit_7", gate="threshold")


# ---------------------------------------------------------------------------------------------------- API
def test_public_api_shapes(svhn_model):
    model = svhn_model.eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        tokens = model.embed(x)
        final, ics = model(x)
        features = model.forward_features(x)
        gates = model.gate_logits(ics)
    assert tokens.shape == (3, 5, 256)
    assert model.num_exits == 6 and model.num_classes == 10 and model.embed_dim == 256
    assert final.shape == (3, 10) and len(ics) == 6 and all(ic.shape == (3, 10) for ic in ics)
    assert len(features) == len(model.blocks) == 7 and all(f.shape == (3, 256) for f in features)
    assert len(gates) == 6 and all(g.shape == (3, 1) for g in gates)
    torch.testing.assert_close(ics[2], model.intermediate_heads[2](model.norm(
        _tokens_after(model, x, 2))[:, 0]))
    torch.testing.assert_close(final, model.head(features[-1]))


def _tokens_after(model, x, block_index):
    with torch.no_grad():
        x = model.embed(x)
        for block in model.blocks[: block_index + 1]:
            x = block(x)
    return x


def test_identity_gates_pass_logits_through():
    model = create_model("t2t_vit_7", img_size=32, gate="identity").eval()
    assert all(isinstance(g, IdentityGate) for g in model.gates) and not list(model.gates.parameters())
    with torch.no_grad():
        _, ics = model(torch.randn(2, 3, 32, 32))
    assert all(g is ic for g, ic in zip(model.gate_logits(ics), ics, strict=True))


def test_rectangular_input_has_matching_grid():
    model = create_model("t2t_vit_7", img_size=32)
    assert model.tokens_to_token.token_grid(224, 224) == (14, 14)
    assert model.tokens_to_token.token_grid(32, 32) == (2, 2)
    assert model.tokens_to_token.token_grid(32, 48) == (2, 3)


# -------------------------------------------------------------------------------------------------- gates
def test_uncertainty_features_by_hand():
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 0.0, 0.0]], requires_grad=True)
    features = uncertainty_features(logits)
    assert features.dtype == torch.float32 and features.shape == (2, 4) and not features.requires_grad
    p = torch.softmax(logits.detach(), dim=1)[0]
    q = p ** 2 / (p ** 2).sum()
    expected = torch.stack([p[0], -(p * p.log()).sum(), p[0] - p[1], -(q * q.log()).sum()])
    torch.testing.assert_close(features[0], expected)
    torch.testing.assert_close(features[1], torch.tensor([1 / 3, math.log(3), 0.0, math.log(3)]))


def test_uncertainty_features_are_float32_and_handle_saturation():
    logits = torch.tensor([[1000.0, 0.0, -1000.0]], dtype=torch.float64)
    features = uncertainty_features(logits)
    assert features.dtype == torch.float32 and torch.isfinite(features).all()
    torch.testing.assert_close(features, torch.tensor([[1.0, 0.0, 1.0, 0.0]]))
    assert uncertainty_features(logits.half()).dtype == torch.float32


def test_gate_trains_only_its_linear():
    head = nn.Linear(8, 10)
    gate = LearnableUncGate()
    logits = head(torch.randn(4, 8))
    out = gate(logits)
    assert out.shape == (4, 1)
    nn.functional.binary_cross_entropy_with_logits(out, torch.ones(4, 1)).backward()
    assert gate.linear.weight.grad is not None and head.weight.grad is None


# ------------------------------------------------------------------------------------------------ weights
def _backbone(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if not k.startswith(EXITS)}


def _module(state: dict) -> dict:
    return {f"module.{k}": v for k, v in state.items()}


@pytest.fixture(scope="module")
def imagenet_file(tmp_path_factory):
    """A timm train checkpoint of a 1000-class T2T-ViT-7 at 224 px, as in 71.7_T2T_ViT_7.pth.tar."""
    torch.manual_seed(0)
    source = create_model("t2t_vit_7", num_classes=1000, img_size=224)
    plain = _backbone(source)
    ema = {k: v + 1 if v.is_floating_point() and not k.endswith(("pos_embed", ".w")) else v for k, v in plain.items()}
    path = tmp_path_factory.mktemp("ckpt") / "71.7_T2T_ViT_7.pth.tar"
    torch.save({"epoch": 309, "arch": "t2t_vit_7", "state_dict": _module(plain), "state_dict_ema": _module(ema),
                "args": argparse.Namespace(model="t2t_vit_7", lr=5e-4), "metric": 71.7}, path)
    return path, plain, ema


def test_load_imagenet_weights_into_svhn_model(imagenet_file):
    path, plain, ema = imagenet_file
    model = create_model("t2t_vit_7", num_classes=10, img_size=32)
    report = load_imagenet_pretrained(model, path)
    assert set(report.missing) == {k for k in model.state_dict() if k.startswith(EXITS + ("head.",))}
    assert not report.unexpected and not report.mismatched
    torch.testing.assert_close(model.blocks[3].mlp.fc1.weight, ema["blocks.3.mlp.fc1.weight"])
    resized = resize_pos_embed(plain["pos_embed"], (2, 2))
    assert resized.shape == (1, 5, 256)
    torch.testing.assert_close(model.pos_embed.data, resized)
    torch.testing.assert_close(resized[:, 0], plain["pos_embed"][:, 0])  # the CLS entry is kept
    load_imagenet_pretrained(model, path, use_ema=False)
    torch.testing.assert_close(model.blocks[3].mlp.fc1.weight, plain["blocks.3.mlp.fc1.weight"])


def test_load_imagenet_weights_with_imagenet_head(imagenet_file):
    path, _, ema = imagenet_file
    model = create_model("t2t_vit_7", num_classes=1000, img_size=224)
    report = load_weights(model, path)
    assert all(k.startswith(EXITS) for k in report.missing) and report.missing
    torch.testing.assert_close(model.head.weight, ema["head.weight"])
    torch.testing.assert_close(model.pos_embed.data, ema["pos_embed"])  # same grid: unchanged


def test_resize_pos_embed_same_grid_is_identity():
    table = sinusoid_table(197, 64)
    torch.testing.assert_close(resize_pos_embed(table, (14, 14)), table)


@pytest.fixture(scope="module")
def svhn_state():
    torch.manual_seed(1)
    return create_model("t2t_vit_7", num_classes=10, img_size=32).state_dict()


def test_load_transfer_checkpoint(tmp_path, svhn_state):
    path = tmp_path / "ckpt_0.01_0.0005_91.9.pth"
    backbone = {k: v for k, v in svhn_state.items() if not k.startswith(EXITS)}
    torch.save({"net": _module(backbone), "acc": 91.9, "epoch": 59}, path)
    model = create_model("t2t_vit_7", num_classes=10, img_size=32)
    ics_before = model.intermediate_heads[0].weight.clone()
    report = load_transfer_checkpoint(model, path)
    assert set(report.missing) == {k for k in model.state_dict() if k.startswith(EXITS)}
    torch.testing.assert_close(model.head.weight, svhn_state["head.weight"])
    torch.testing.assert_close(model.intermediate_heads[0].weight, ics_before)
    assert load_weights(create_model("t2t_vit_7", img_size=32), path).missing == report.missing


def test_load_full_jeidnn_checkpoint_strictly(tmp_path, svhn_state):
    path = tmp_path / "ckpt_0.5_90.49.pth"
    torch.save({"net": _module(svhn_state), "acc": 90.49, "epoch": 14}, path)
    model = create_model("t2t_vit_7", num_classes=10, img_size=32)
    assert load_jeidnn_checkpoint(model, path).clean
    torch.testing.assert_close(model.gates[5].linear.weight, svhn_state["gates.5.linear.weight"])
    assert load_weights(create_model("t2t_vit_7", img_size=32), path).clean
    bad = dict(svhn_state)
    del bad["gates.2.linear.bias"]
    torch.save({"net": bad}, path)
    with pytest.raises(CheckpointError, match="gates.2.linear.bias"):
        load_jeidnn_checkpoint(model, path)


def test_wrong_architecture_names_the_flag(tmp_path):
    fake_14 = {"cls_token": torch.zeros(1, 1, 384), "tokens_to_token.project.bias": torch.zeros(384),
               **{f"blocks.{i}.norm1.weight": torch.zeros(384) for i in range(14)}}
    path = tmp_path / "t2t14.pth"
    torch.save({"net": fake_14, "acc": 96.35, "epoch": 59}, path)
    with pytest.raises(CheckpointError, match="--arch t2t_vit_14"):
        load_transfer_checkpoint(create_model("t2t_vit_7", img_size=32), path)
    torch.save({"state_dict": fake_14}, path)
    with pytest.raises(CheckpointError, match="--arch t2t_vit_14"):
        load_imagenet_pretrained(create_model("t2t_vit_7", img_size=32), path)


def test_wrong_classes_and_image_size_name_the_flag(tmp_path, svhn_state):
    path = tmp_path / "ckpt.pth"
    model = create_model("t2t_vit_7", num_classes=100, img_size=32)
    torch.save({"net": _module(svhn_state), "acc": 1.0, "epoch": 1}, path)
    with pytest.raises(CheckpointError, match=r"10 classes .* has 100.*--dataset .*cifar10 or svhn"):
        load_weights(model, path)
    model = create_model("t2t_vit_7", num_classes=10, img_size=224)
    with pytest.raises(CheckpointError, match=r"32 px .* 224 px.*--dataset svhn"):
        load_transfer_checkpoint(model, path)


def test_wrong_kind_of_file(tmp_path, svhn_state):
    path = tmp_path / "other.pth"
    torch.save({"net": {"conv1.weight": torch.zeros(3)}, "acc": 1.0, "epoch": 1}, path)
    model = create_model("t2t_vit_7", img_size=32)
    with pytest.raises(CheckpointError, match="not a T2T-ViT checkpoint"):
        load_weights(model, path)
    backbone = {k: v for k, v in svhn_state.items() if not k.startswith(EXITS)}
    torch.save({"net": backbone, "acc": 1.0, "epoch": 1}, path)
    with pytest.raises(CheckpointError, match="fine-tuned backbone"):
        load_imagenet_pretrained(model, path)
    with pytest.raises(CheckpointError, match="no intermediate_heads"):
        load_jeidnn_checkpoint(model, path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_weights(model, tmp_path / "absent.pth")
