"""Converters into the ADN key layout: torchvision-pretrained weights and ``train_adn.py`` checkpoints.

``from_torchvision`` maps a torchvision ``resnet50`` / ``resnet101`` / ``mobilenet_v2`` / ``swin_t`` /
``vit_b_16`` / ``vit_b_32`` state dict onto the ADN model of the same name. The two layouts hold the same
layers in the same order and differ in names (``pre`` vs ``features.0`` in Swin, stages grouped under
``features.<stage>.<block>`` in MobileNetV2) and in the extra skip-aware norms, so the tensors are paired in
order, every pair checked for equal shape and parameter kind, and each ``*_skip`` norm starts as a copy of
the norm it stands in for. The converted super-net computes exactly what the torchvision model computes.

Usage::

    from torchvision.models import resnet50, ResNet50_Weights
    tv = resnet50(weights=ResNet50_Weights.IMAGENET1K_V2)   # downloads; do it where you have internet
    model = adn.models.create_model("resnet50")
    model.load_state_dict(from_torchvision(tv.state_dict(), model))
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from torch import nn

_SKIP_NORM = re.compile(r"(bn\d|norm\d?|ln_\d)_skip\.")


def is_skip_norm_key(key: str) -> bool:
    """Whether a state-dict key belongs to a skip-aware norm (``bn1_skip``, ``norm_skip``, ``ln_1_skip`` ...)."""
    return _SKIP_NORM.search(key) is not None


def _stands_in_for(key: str) -> str:
    """``layer1.0.bn1_skip.weight`` -> ``layer1.0.bn1.weight``."""
    return _SKIP_NORM.sub(lambda m: f"{m.group(1)}.", key)


def from_torchvision(state_dict: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """A state dict for ``model`` (an ADN model) made from the torchvision state dict of the same architecture.

    Raises ``ValueError`` when the two architectures do not line up (another model, another class count).
    """
    if getattr(model, "variant", "a") == "d":
        raise ValueError("torchvision has no ResNet-D (average-pool shortcut) model to convert from; "
                         "resnet50vd / resnet101vd start from scratch or from an ADN checkpoint")
    target = model.state_dict()
    ours = [k for k in target if not is_skip_norm_key(k)]
    theirs = list(state_dict)
    if len(ours) != len(theirs):
        raise ValueError(f"the torchvision state dict has {len(theirs)} entries, but {type(model).__name__} expects "
                         f"{len(ours)} (besides its skip-aware norms); is it the same architecture?")
    converted: dict[str, torch.Tensor] = {}
    for our_key, their_key in zip(ours, theirs, strict=True):
        value = state_dict[their_key]
        if our_key.rsplit(".", 1)[-1] != their_key.rsplit(".", 1)[-1] or value.shape != target[our_key].shape:
            raise ValueError(f"cannot map torchvision '{their_key}' {list(value.shape)} onto '{our_key}' "
                             f"{list(target[our_key].shape)}; the architectures differ")
        converted[our_key] = value.clone()
    for key in target:
        if is_skip_norm_key(key):
            converted[key] = converted[_stands_in_for(key)].clone()
    return {key: converted[key] for key in target}


def from_training_checkpoint(checkpoint: Mapping, use_ema: bool = False) -> dict[str, torch.Tensor]:
    """The bare state dict (the released format) inside a ``train_adn.py`` checkpoint.

    Takes ``model`` (or ``model_ema`` with ``use_ema``), strips the ``module.`` prefix that ``AveragedModel`` and
    DDP add and drops ``n_averaged``.
    """
    entry = "model_ema" if use_ema else "model"
    if entry not in checkpoint:
        raise KeyError(f"the checkpoint has no '{entry}' entry (it has: {', '.join(map(str, checkpoint))})")
    return {k.removeprefix("module."): v for k, v in checkpoint[entry].items() if k != "n_averaged"}
