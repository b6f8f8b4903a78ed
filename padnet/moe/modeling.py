"""Turn a Hugging Face BERT-family model into an MoE / PAD-MoE BERT (PAD-Net Sec. 4.2; original ``modeling_bert``).

:func:`moefy` replaces the FFN linears of every encoder layer in place: ``pos_moe="int"`` the
``intermediate.dense`` (hidden -> intermediate), ``"out"`` the ``output.dense`` (intermediate -> hidden), ``"both"``
the two. Attention is untouched. The experts (and PAD-MoE's static weight) are *upcycled*: initialised as copies of
the pretrained dense layer, so that at initialisation the MoE model computes exactly what the dense one did.

State-dict keys follow the original: ``bert.encoder.layer.{l}.intermediate.dense.experts.{i}.dense.weight``,
``...dense.w_gate``, ``w_noise``, ``mean``, ``std`` and, for PAD-MoE, ``phi``, ``static_fc.{weight,bias}`` and the
buffer ``mask``. :func:`moe_aux_loss` sums the load-balancing losses of all MoE layers after a forward pass; the
training loss is the task loss plus that sum, for every ``pos_moe`` (the original dropped it unless ``both``).
"""

from __future__ import annotations

import torch
from torch import nn

from padnet.moe.layers import MoE, PadMoE

MOE_CLASSES: dict[str, type[MoE]] = {"MoE": MoE, "PadMoE": PadMoE}
USE_MOE_CHOICES = ("none", *MOE_CLASSES)
POS_MOE_CHOICES = ("int", "out", "both")


def ffn_linears(model: nn.Module, pos_moe: str = "both") -> list[tuple[str, nn.Module, nn.Linear]]:
    """``(name, parent, dense)`` for the FFN linears that ``pos_moe`` selects, in model order.

    The FFN of a BERT-family layer is ``<layer>.intermediate.dense`` and ``<layer>.output.dense``; the attention's
    own ``attention.output.dense`` is excluded.
    """
    if pos_moe not in POS_MOE_CHOICES:
        raise ValueError(f"pos_moe must be one of {POS_MOE_CHOICES}, got {pos_moe!r}")
    wanted = {"int": ("intermediate",), "out": ("output",), "both": ("intermediate", "output")}[pos_moe]
    found = []
    for name, module in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if leaf in wanted and "attention" not in name and isinstance(getattr(module, "dense", None), nn.Linear):
            found.append((f"{name}.dense", module, module.dense))
    return found


def moe_layers(model: nn.Module) -> dict[str, MoE]:
    """The MoE / PAD-MoE layers of a model by qualified name."""
    return {name: module for name, module in model.named_modules() if isinstance(module, MoE)}


def moe_aux_loss(model: nn.Module) -> torch.Tensor | None:
    """The sum of the load-balancing losses of the last forward over all MoE layers (None without MoE layers)."""
    losses = [m.aux_loss for m in moe_layers(model).values() if m.aux_loss is not None]
    return torch.stack([loss.float() for loss in losses]).sum() if losses else None


def moefy(model: nn.Module, use_moe: str = "MoE", n_experts: int = 8, k: int = 2, pos_moe: str = "both",
          moe_level: str = "context", Lambda: str = "both", pad_forward: str = "paper",  # noqa: N803
          upcycle: bool = True) -> nn.Module:
    """Replace the FFN linears of a BERT-family model by MoE (``use_moe="MoE"``) or PAD-MoE (``"PadMoE"``) layers.

    ``use_moe="none"`` returns the model unchanged (a plain BERT). The settings are also written to
    ``model.config`` (``use_moe``, ``n_experts``, ``k``, ``pos_moe``, ``moe_level``, ``Lambda``, ``pad_forward``),
    as the original does, so a saved model records what it is.
    """
    if use_moe not in USE_MOE_CHOICES:
        raise ValueError(f"use_moe must be one of {USE_MOE_CHOICES}, got {use_moe!r}")
    if use_moe == "none":
        return model
    if moe_layers(model):
        raise ValueError("the model already has MoE layers")
    linears = ffn_linears(model, pos_moe)
    if not linears:
        raise ValueError(f"{type(model).__name__} has no BERT-style FFN (<layer>.intermediate.dense / "
                         "<layer>.output.dense) to turn into experts")
    cls = MOE_CLASSES[use_moe]
    extra = {"Lambda": Lambda, "pad_forward": pad_forward} if cls is PadMoE else {}
    for _, parent, dense in linears:
        factory = dict(device=dense.weight.device, dtype=dense.weight.dtype)
        with torch.device(factory["device"]):
            layer = cls(dense.in_features, dense.out_features, n_experts, k, moe_level, **extra)
        layer.to(dtype=factory["dtype"]).train(dense.training)
        if upcycle:
            layer.upcycle_(dense)
        parent.dense = layer
    config = getattr(model, "config", None)
    if config is not None:
        for key, value in dict(use_moe=use_moe, n_experts=n_experts, k=k, pos_moe=pos_moe, moe_level=moe_level,
                               Lambda=Lambda, pad_forward=pad_forward).items():
            setattr(config, key, value)
    return model
