"""adn.optim: torchvision's parameter groups (with ViT's pos_embedding fixed), schedules and EMA decay."""

from __future__ import annotations

import argparse

import pytest
import torch

from adn.models import create_model
from adn.optim import build_lr_scheduler, build_optimizer, ema_decay, parameter_groups, set_weight_decay
from common.errors import UserError


def _args(**kw) -> argparse.Namespace:
    base = dict(weight_decay=1e-4, norm_weight_decay=None, bias_weight_decay=None, transformer_embedding_decay=None,
                opt="sgd", lr=0.1, momentum=0.9, lr_scheduler="steplr", lr_step_size=30, lr_multi_steps=[2, 4],
                lr_gamma=0.1, lr_min=0.0, epochs=10, lr_warmup_epochs=0, lr_warmup_method="constant",
                lr_warmup_decay=0.01)
    base.update(kw)
    return argparse.Namespace(**base)


def _names(model, group):
    ids = {id(p) for p in group["params"]}
    return {n for n, p in model.named_parameters() if id(p) in ids}


def test_embedding_decay_reaches_vit_pos_embedding_and_class_token():
    model = create_model("vit_b_32", num_classes=10)
    groups = parameter_groups(model, _args(transformer_embedding_decay=0.0, norm_weight_decay=0.0,
                                           bias_weight_decay=0.0))
    zero = set().union(*(_names(model, g) for g in groups if g["weight_decay"] == 0.0))
    assert {"class_token", "encoder.pos_embedding"} <= zero  # the original's key list missed pos_embedding
    assert "encoder.layers.encoder_layer_0.ln_1_skip.weight" in zero and "heads.head.bias" in zero
    decayed = set().union(*(_names(model, g) for g in groups if g["weight_decay"] == 1e-4))
    assert "conv_proj.weight" in decayed and "heads.head.weight" in decayed
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_embedding_decay_reaches_swin_bias_tables():
    model = create_model("swin_t", num_classes=10)
    groups = parameter_groups(model, _args(transformer_embedding_decay=0.5))
    tables = {n for n, _ in model.named_parameters() if n.endswith("relative_position_bias_table")}
    assert len(tables) == 12
    assert [g for g in groups if g["weight_decay"] == 0.5 and _names(model, g) == tables]


def test_norm_weight_decay_covers_skip_aware_norms():
    model = create_model("resnet_adn_cifar", num_classes=10)
    groups = set_weight_decay(model, 1e-4, norm_weight_decay=0.0)
    norm = next(g for g in groups if g["weight_decay"] == 0.0)
    names = _names(model, norm)
    assert "layer1.0.bn1_skip.weight" in names and "bn1.bias" in names and "fc.bias" not in names


def test_optimizers_and_schedules():
    model = torch.nn.Linear(2, 2)
    assert build_optimizer(model.parameters(), _args(opt="sgd_nesterov")).defaults["nesterov"]
    assert isinstance(build_optimizer(model.parameters(), _args(opt="adamw")), torch.optim.AdamW)
    assert build_optimizer(model.parameters(), _args(opt="rmsprop")).defaults["eps"] == 0.0316
    with pytest.raises(UserError):
        build_optimizer(model.parameters(), _args(opt="lamb"))

    opt = build_optimizer(model.parameters(), _args())
    sched = build_lr_scheduler(opt, _args(lr_scheduler="cosineannealinglr", lr_warmup_epochs=2,
                                          lr_warmup_method="linear", lr_warmup_decay=0.1))
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.01) and lrs[2] == pytest.approx(0.1) and lrs[-1] < 0.01

    opt = build_optimizer(model.parameters(), _args())
    sched = build_lr_scheduler(opt, _args(lr_scheduler="MultiStepLR"))
    lrs = []
    for _ in range(5):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001])
    with pytest.raises(UserError):
        build_lr_scheduler(opt, _args(lr_scheduler="onecycle"))


def test_ema_decay_follows_torchvision():
    # 4 GPUs x 256 images, every 32 steps, 300 epochs (the Swin-T / ViT recipes)
    assert ema_decay(0.99998, 4, 256, 32, 300) == pytest.approx(1 - 2e-5 * 4 * 256 * 32 / 300)
    assert ema_decay(0.5, 8, 256, 32, 1) == 0.0  # clipped: the EMA simply copies
