"""MAC counting on ``torch.utils.flop_counter.FlopCounterMode``.

The unit is the **MAC** (one multiply-add), which is what the five papers call "FLOPs", "MAdds" or "Mul-Adds":
``MACs = FlopCounterMode FLOPs / 2``. The counter sees the tensor operations that actually execute (convolutions,
matrix products, attention), so a block that is skipped, a slimmed layer that runs a sliced weight, or a token
that is gathered out all cost less, while a computation that is only masked costs the full amount.
Element-wise operations (norms, activations, pooling) are not counted, as in fvcore's default set.

Two additions to PyTorch's table, for fused attention kernels it has no formula for:

* ``aten._scaled_dot_product_flash_attention_for_cpu``, what ``scaled_dot_product_attention`` runs on the CPU:
  its two matrix products ``Q K^T`` and ``A V``;
* ``aten._native_multi_head_attention``, the inference fast path of ``nn.MultiheadAttention`` (torchvision's
  ViT and Swin in eval mode): the q/k/v input projection, the two attention products and the output projection.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

MAC_UNIT = "MACs (multiply-adds; what the papers call FLOPs / MAdds)"


def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _native_mha_flops(query_shape, key_shape, value_shape, embed_dim, num_heads, *args, out_shape=None,
                      **kwargs) -> int:
    batch, q_len, _ = query_shape
    k_len, v_len = key_shape[1], value_shape[1]
    projections = 2 * batch * embed_dim * embed_dim * (q_len + k_len + v_len + q_len)  # q, k, v in; out
    attention = 2 * batch * q_len * k_len * embed_dim + 2 * batch * q_len * v_len * embed_dim
    return projections + attention


_EXTRA_FORMULAS: dict[Any, Callable] = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops,
    torch.ops.aten._native_multi_head_attention: _native_mha_flops,
}


@dataclass
class MacCount:
    """Executed MACs of one forward: the total and the share of every module (by qualified name)."""

    total: int
    per_module: dict[str, int] = field(default_factory=dict)

    @property
    def gmacs(self) -> float:
        return self.total / 1e9

    @property
    def mmacs(self) -> float:
        return self.total / 1e6

    def __str__(self) -> str:
        return f"{format_macs(self.total)} {MAC_UNIT}"


def format_macs(macs: float) -> str:
    """``4.09 G``, ``300.77 M``, ``12.3 K``: the count with an SI prefix (the unit is MACs)."""
    for scale, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(macs) >= scale:
            return f"{macs / scale:.2f} {prefix}"
    return f"{macs:.0f} "


def count_macs(model: nn.Module | Callable, *inputs: Any, **kwargs: Any) -> MacCount:
    """Run ``model(*inputs, **kwargs)`` once under the counter (no grad) and return the executed MACs.

    ``per_module`` maps every module's qualified name (``""`` is the model, ``"layer1.0.conv1"`` a leaf) to
    the MACs executed inside it, nested modules included.
    """
    counter = FlopCounterMode(display=False, custom_mapping=_EXTRA_FORMULAS)
    with torch.no_grad(), counter:
        model(*inputs, **kwargs)
    per_module: dict[str, int] = {}
    root = type(model).__name__ if isinstance(model, nn.Module) else "Global"
    for name, ops in counter.get_flop_counts().items():
        if name == "Global":
            continue
        key = "" if name == root else name.removeprefix(f"{root}.")
        per_module[key] = sum(ops.values()) // 2
    return MacCount(total=counter.get_total_flops() // 2, per_module=per_module)


def average_macs_per_sample(
    model: nn.Module | Callable,
    batches: Iterable[Any],
    forward: Callable[[Any], Any] | None = None,
    max_batches: int | None = None,
) -> float:
    """Executed MACs per sample, averaged over a loader: for input-dependent models (gates, routers, exits).

    Each batch is counted as it really runs; ``forward(batch)`` runs the model on one batch (by default
    ``model(batch[0])`` for ``(inputs, targets)`` pairs) and the batch size is read from the first input.
    """
    if forward is None:
        def forward(batch):
            return model(batch[0] if isinstance(batch, (tuple, list)) else batch)
    total, samples = 0, 0
    for i, batch in enumerate(batches):
        if max_batches is not None and i >= max_batches:
            break
        first = batch[0] if isinstance(batch, (tuple, list)) else batch
        samples += len(first)
        total += count_macs(forward, batch).total
    if samples == 0:
        raise ValueError("average_macs_per_sample got no samples")
    return total / samples
