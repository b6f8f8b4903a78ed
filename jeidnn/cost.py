"""Inference cost per exit: the original repository's Mul-Add counter, and executed MACs (spec Sec. e).

Two counts, for two purposes:

* :func:`original_mul_add_per_exit` reproduces ``models/op_counter.py`` of networkslab/dynn number for number. Its
  normalised values ``c_l`` are the cost term of JEI-DNN's gate targets (Sec. b) and its millions are the x-axis of
  the paper's figures, so training and plots must use it. Its convention is **not** MACs: a Linear layer costs
  ``W.numel + b.numel`` once per image (not per token), LayerNorm 2.5 and GELU 4 per element, a convolution its
  standard count, and attention matrix products, the Performer einsums, softmax, exp, Unfold and dropout nothing.
  The gates cost ``9C + 6`` (:class:`LearnableUncGate`) or 0 (:class:`IdentityGate`).
* :func:`executed_macs_per_exit` is what :mod:`common.flops` counts (real multiply-adds of matrix products and
  einsums, per token) for a forward that truly stops at exit ``l``: the repository's comparable unit.

Both walk the model in the order of the original's ``forward_for_inference`` on a ``zeros(1, 3, H, W)`` image.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from timm.layers import DropPath
from torch import Tensor, nn

from common.flops import count_macs
from jeidnn.models.gates import IdentityGate, LearnableUncGate

GATES = (LearnableUncGate, IdentityGate)
_FREE = (nn.Dropout, DropPath, nn.Identity, nn.Unfold)


def _linear(m: nn.Linear, x: Tensor) -> float:
    return x.shape[0] * (m.weight.numel() + (m.bias.numel() if m.bias is not None else 0))


def _layer_norm(m: nn.LayerNorm, x: Tensor) -> float:
    return 2.5 * x[0].numel()  # 5 flops per element of the first sample, halved (ELECTRA's counter)


def _gelu(m: nn.GELU, x: Tensor) -> float:
    return 4 * x.numel()


def _conv2d(m: nn.Conv2d, x: Tensor) -> float:
    out_h = (x.shape[2] + 2 * m.padding[0] - m.kernel_size[0]) // m.stride[0] + 1
    out_w = (x.shape[3] + 2 * m.padding[1] - m.kernel_size[1]) // m.stride[1] + 1
    return m.in_channels * m.out_channels * m.kernel_size[0] * m.kernel_size[1] * out_h * out_w / m.groups


_LEAF_COST: dict[type, Callable[[nn.Module, Tensor], float]] = {
    nn.Linear: _linear, nn.LayerNorm: _layer_norm, nn.GELU: _gelu, nn.Conv2d: _conv2d, nn.ReLU: lambda m, x: x.numel(),
}


@dataclass
class OriginalMulAdd:
    """The original counter's cumulative Mul-Adds right after every gate plus the final head (``at_exits``), and
    right after every Linear layer (``at_every_linear``, the repo's ``cls_ops``)."""

    at_exits: list[float] = field(default_factory=list)
    at_every_linear: list[float] = field(default_factory=list)
    total: float = 0.0


class _OriginalCounter:
    """Forward pre-hooks that add each measured module's cost, by the rules of ``op_counter.measure_layer``."""

    def __init__(self, model: nn.Module, num_classes: int):
        self.result = OriginalMulAdd()
        self.num_classes = num_classes
        self.handles = []
        inside_gates = {id(sub) for m in model.modules() if isinstance(m, GATES) for sub in m.modules() if sub is not m}
        for module in model.modules():
            is_leaf = next(module.children(), None) is None
            if isinstance(module, GATES) or (is_leaf and id(module) not in inside_gates):
                self.handles.append(module.register_forward_pre_hook(self._hook))

    def _hook(self, module: nn.Module, args: tuple) -> None:
        if isinstance(module, GATES):
            self.result.total += module.mul_add(self.num_classes)
            return
        if isinstance(module, _FREE):
            return
        cost = next((fn for kind, fn in _LEAF_COST.items() if isinstance(module, kind)), None)
        if cost is None:
            raise TypeError(f"the original op counter has no rule for {type(module).__name__}")
        self.result.total += cost(module, args[0])
        if isinstance(module, nn.Linear):
            self.result.at_every_linear.append(self.result.total)

    def mark_exit(self) -> None:
        self.result.at_exits.append(self.result.total)

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def _image(model: nn.Module, img_size: int | None) -> Tensor:
    size = img_size if img_size is not None else model.img_size
    param = next(model.parameters())
    return torch.zeros(1, 3, size, size, device=param.device, dtype=param.dtype)


def count_original_mul_add(model: nn.Module, img_size: int | None = None,
                           intermediate_heads: bool = True) -> OriginalMulAdd:
    """Run the original's ``forward_for_inference`` walk under its op counter (Sec. e).

    After each block ``norm`` is applied to the whole token sequence and counted; then IC ``l`` runs on the CLS
    token and gate ``l`` on its logits, and the count at that point is the cost of exit ``l``. The last block's
    output is normalised a second time before the final ``head``, as in the original, and the count after the head
    is the cost of the final exit. ``intermediate_heads=False`` measures the backbone with the gates only (the
    original's first ``measure_arch_mul_add`` pass, where gates see no IC logits).
    """
    counter = _OriginalCounter(model, model.num_classes)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            x = model.embed(_image(model, img_size))
            for index, block in enumerate(model.blocks):
                x = block(x)
                z = model.norm(x)[:, 0]
                if index < model.num_exits:
                    if intermediate_heads:
                        logits = model.intermediate_heads[index](z)
                    else:
                        logits = z.new_zeros(z.shape[0], model.num_classes)
                    model.gates[index](logits)
                    counter.mark_exit()
            model.head(model.norm(x)[:, 0])
            counter.mark_exit()
    finally:
        counter.remove()
        model.train(was_training)
    return counter.result


def original_mul_add_per_exit(model: nn.Module, img_size: int | None = None,
                              intermediate_heads: bool = True) -> list[float]:
    """The repo's Mul-Add at every exit (``G`` gates, then the final head), as ``mult_add_at_exits`` (Sec. e).

    Cumulative: exit ``l`` includes every block up to ``l``, every earlier IC and gate, and gate ``l`` itself.
    T2T-ViT-7, C=10, 224 px: 5,533,706 ... 13,517,734.
    """
    return count_original_mul_add(model, img_size, intermediate_heads).at_exits


def _forward_to_exit(model: nn.Module, x: Tensor, exit_index: int) -> Tensor:
    x = model.embed(x)
    for block in model.blocks[: exit_index + 1]:
        x = block(x)
    head = model.intermediate_heads[exit_index] if exit_index < model.num_exits else model.head
    return head(model.normed_cls(x))


def executed_macs_per_exit(model: nn.Module, img_size: int | None = None) -> list[int]:
    """Executed MACs (:func:`common.flops.count_macs`) of a forward that stops at each exit, final head last.

    Exit ``l`` runs the T2T module, blocks ``0..l`` and IC ``l``: earlier ICs and the gates are not included, as in
    the manifests' ``standard_macs_per_exit_torch_flop_counter`` (T2T-ViT-7, C=10: 407.7 M ... 1146.6 M).
    """
    was_training = model.training
    model.eval()
    try:
        image = _image(model, img_size)
        return [count_macs(lambda x, i=index: _forward_to_exit(model, x, i), image).total
                for index in range(model.num_exits + 1)]
    finally:
        model.train(was_training)


def normalized_costs(costs: Sequence[float]) -> list[float]:
    """``c_l = cost_l / cost_final`` (Sec. b), the cost term of the oracle exit; the final exit is 1."""
    if not costs or costs[-1] <= 0:
        raise ValueError("normalized_costs needs per-exit costs ending with a positive full-model cost")
    return [float(c) / float(costs[-1]) for c in costs]
