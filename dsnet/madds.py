"""MAdds of DS-Net sub-networks with the original's convention (spec Sec. 9).

The original sums, per image, the multiply-adds of every convolution and linear layer at its active width
(``in * out * k * k * H_out * W_out / groups``) plus the input elements of every average pool (the SE pools and the
global pool); batch norm and activations are not counted. This module computes the same sum analytically from the
widths, so the widths may be tensors: with the per-sample widths ``st @ width_list`` of a :class:`Route` it is the
differentiable MAdds the Stage-II loss needs (Sec. 3.3, Eq. 8). :func:`executed_macs` measures the conv + linear
part of a real forward with ``common.flops`` instead, as a cross-check.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from common.flops import count_macs
from dsnet.models import DSNet, Route

__all__ = ["dynamic_madds", "executed_macs", "madds", "mode_widths"]

Width = int | torch.Tensor


def mode_widths(model: DSNet, mode: str, choice: int | None = None) -> list[int]:
    """Stem and stage widths of a static mode, without touching the model's own mode."""
    if mode not in ("largest", "smallest", "uniform"):
        raise ValueError(f"mode {mode!r} has no fixed widths; use largest, smallest or uniform")
    trunk = -1 if mode == "largest" else 0
    head = {"largest": -1, "smallest": 0, "uniform": choice}[mode]
    if head is None:
        raise ValueError("mode 'uniform' needs a choice")
    stages = [stage.first_block.out_channels_list[trunk if i < model.gate_stage else head]
              for i, stage in enumerate(model.blocks)]
    return [model.conv_stem.out_channels_list[trunk], *stages]


def _out_size(size: int, conv: torch.nn.Conv2d) -> int:
    k, s, p = conv.kernel_size[0], conv.stride[0], conv.padding[0]
    return (size + 2 * p - k) // s + 1


def madds(model: DSNet, widths: Sequence[Width], img_size: int = 224, include_pools: bool = True,
          routed_from: int | None = None, original_dw_groups: bool = False) -> Width:
    """MAdds per image of the sub-network with ``widths`` = (stem, blocks.0, ..., blocks.N) (spec Sec. 9).

    ``routed_from``: index of the stage whose first block holds the gate, when the widths from there on are
    gate-routed (the first block's depthwise part then still runs at the previous stage's width).
    ``original_dw_groups`` reproduces the original dynamic-path counter for the routed depthwise convs, which keep
    the group count of the previous static forward (the slimmest width): ``w * w * k * k * H * W / w_slimmest``
    instead of ``w * k * k * H * W`` (spec Sec. 9, quirk 9).
    """
    size = _out_size(img_size, model.conv_stem)
    k = model.conv_stem.kernel_size[0]
    total = model.conv_stem.in_channels * widths[0] * k * k * size * size
    c_in = widths[0]
    for s, stage in enumerate(model.blocks):
        c_out = widths[s + 1]
        for b, block in enumerate([stage.first_block, *stage.residual_blocks]):
            conv_dw, gate = block.conv_dw, block.gate
            size = _out_size(size, conv_dw)
            k = conv_dw.kernel_size[0]
            dw = c_in * k * k * size * size
            routed_dw = routed_from is not None and (s > routed_from or (s == routed_from and b > 0))
            if routed_dw and original_dw_groups:
                dw = dw * c_in / conv_dw.in_channels_list[0]
            reduced = gate.conv_reduce.out_channels
            total = total + dw + c_in * reduced + reduced * c_in + c_in * c_out * size * size
            if include_pools:
                total = total + c_in * size * size
            c_in = c_out
    total = total + c_in * model.num_classes
    if include_pools:
        total = total + c_in * size * size
    return total


def dynamic_madds(model: DSNet, route: Route, img_size: int = 224, original_dw_groups: bool = False
                  ) -> torch.Tensor:
    """Per-sample MAdds ``[B]`` of a gate-routed forward, differentiable in ``route.st`` (Stage II, Eq. 8).

    Trunk at its slimmest, the routed stages at ``st @ widths``, plus the slimming head that ran (4 x reduced).
    """
    trunk = mode_widths(model, "smallest")[:model.gate_stage + 1]
    routed = [route.widths(stage.first_block.out_channels_list) for stage in model.blocks[model.gate_stage:]]
    head = model.blocks[model.gate_stage].first_block.gate.gate[0]
    total = madds(model, trunk + routed, img_size, routed_from=model.gate_stage,
                  original_dw_groups=original_dw_groups)
    return total + head.in_channels * head.out_channels


def executed_macs(model: DSNet, mode: str, choice: int | None = None, img_size: int = 224) -> int:
    """Conv + linear MACs that really execute in a static mode, counted by ``torch.utils.flop_counter``."""
    previous = (model.mode, model.choice)
    model.set_mode(mode, choice)
    try:
        x = torch.zeros(1, model.conv_stem.in_channels, img_size, img_size)
        return count_macs(model, x).total
    finally:
        model.set_mode(*previous)
