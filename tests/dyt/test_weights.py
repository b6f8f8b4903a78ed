"""Pretrained weights: --finetune resolution, IN21K loading, what trains (spec Sec. b.4, c.1)."""

from __future__ import annotations

import pytest
import torch

from common.checkpoint import CheckpointError
from common.errors import UserError
from dyt.models import build_model
from dyt.weights import load_pretrained_vit, logged_param_count, resolve_finetune, set_trainable


@pytest.fixture(scope="module")
def in21k_like(tmp_path_factory):
    """A file with the jx IN21K layout (plain ViT keys, ``pre_logits.fc``, a 21,843-class head) at digits size."""
    torch.manual_seed(0)
    state = build_model("vit_digits", num_classes=21843, ffn_num=0, dispatch="none").state_dict()
    state["pre_logits.fc.weight"], state["pre_logits.fc.bias"] = torch.zeros(192, 192), torch.zeros(192)
    path = tmp_path_factory.mktemp("weights") / "jx_like.pth"
    torch.save(state, path)
    return path, state


def test_load_and_set_trainable(in21k_like):
    path, state = in21k_like
    model = build_model("vit_digits", num_classes=5, ffn_num=8)
    report = load_pretrained_vit(model, path)
    assert not report.unexpected and not report.mismatched
    assert set(report.missing) == {k for k in model.state_dict() if "adaptmlp" in k or "token_select" in k
                                   or k.startswith("head.")}
    torch.testing.assert_close(model.blocks[3].mlp.fc1.weight, state["blocks.3.mlp.fc1.weight"])
    count = set_trainable(model, report)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(report.missing) and count == sum(model.state_dict()[n].numel() for n in trainable)
    assert model.head.bias.abs().sum() == 0 and 0.005 < model.head.weight.std() < 0.015
    assert logged_param_count(model) == 6 * (2 * 192 * 8 + 8 + 192)
    assert set_trainable(model, report, fulltune=True) == sum(p.numel() for p in model.parameters())


def test_pos_embed_resampled_for_another_image_size(in21k_like):
    model = build_model("vit_digits", num_classes=5, ffn_num=8, img_size=48)
    load_pretrained_vit(model, in21k_like[0])
    assert model.pos_embed.shape == (1, 145, 192)
    torch.testing.assert_close(model.pos_embed[:, 0], in21k_like[1]["pos_embed"][:, 0])


def test_rejects_another_vit_size_and_non_vit(tmp_path, in21k_like):
    model = build_model("vit_tiny_d4_e192", num_classes=5, ffn_num=8)
    with pytest.raises(CheckpointError, match="depth 6.*depth 4"):
        load_pretrained_vit(model, in21k_like[0])
    torch.save({"conv1.weight": torch.zeros(3)}, tmp_path / "resnet.pth")
    with pytest.raises(CheckpointError, match="not a ViT"):
        load_pretrained_vit(model, tmp_path / "resnet.pth")
    (tmp_path / "corrupt.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError):
        load_pretrained_vit(model, tmp_path / "corrupt.pth")


def test_resolve_finetune(tmp_path, monkeypatch, in21k_like):
    assert resolve_finetune(str(in21k_like[0])) == in21k_like[0]
    monkeypatch.setenv("DYT_VIT_BASE_IN21K", str(in21k_like[0]))
    assert resolve_finetune("VIT_BASE_IN21K") == in21k_like[0]
    monkeypatch.setenv("DYT_VIT_BASE_IN21K", str(tmp_path / "absent.pth"))
    with pytest.raises(UserError, match="DYT_VIT_BASE_IN21K"):
        resolve_finetune("VIT_BASE_IN21K")
    with pytest.raises(UserError, match="does not exist"):
        resolve_finetune(str(tmp_path / "nope.pth"))
