"""common.flops: executed MACs from FlopCounterMode, per module, and averaged over a loader."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from common.flops import average_macs_per_sample, count_macs, format_macs


@pytest.mark.parametrize("arch, gmacs", [("resnet50", 4.09), ("mobilenet_v2", 0.30)])
def test_torchvision_reference_counts(arch, gmacs):
    """The MACs torchvision publishes for its ImageNet models (224x224)."""
    model = getattr(torchvision.models, arch)().eval()
    count = count_macs(model, torch.randn(1, 3, 224, 224))
    assert round(count.gmacs, 2) == gmacs
    assert count.per_module[""] == count.total


class no_fastpath:
    """Run nn.MultiheadAttention unfused (its q/k/v projections and attention as separate ops)."""

    def __enter__(self):
        self.before = torch.backends.mha.get_fastpath_enabled()
        torch.backends.mha.set_fastpath_enabled(False)

    def __exit__(self, *exc):
        torch.backends.mha.set_fastpath_enabled(self.before)


def test_vit_attention_is_counted_on_the_cpu_fast_path():
    """nn.MultiheadAttention's inference fast path (a fused op) costs what its unfused form costs."""
    attention = nn.MultiheadAttention(64, 4, batch_first=True).eval()
    x = torch.randn(2, 10, 64)
    fused = count_macs(attention, x, x, x, need_weights=False).total
    with no_fastpath():
        unfused = count_macs(attention, x, x, x, need_weights=False).total
    projections = 4 * 2 * 10 * 64 * 64
    products = 2 * (2 * 10 * 10 * 64)
    assert fused == unfused == projections + products


def test_cpu_sdpa_equals_its_explicit_matmuls():
    q, k, v = torch.randn(2, 4, 16, 8), torch.randn(2, 4, 12, 8), torch.randn(2, 4, 12, 8)
    fused = count_macs(F.scaled_dot_product_attention, q, k, v).total

    def explicit(q, k, v):
        return torch.softmax(q @ k.transpose(-2, -1) / 8**0.5, dim=-1) @ v

    assert fused == count_macs(explicit, q, k, v).total == 2 * 2 * 4 * 16 * 12 * 8


class SkippableBranch(nn.Module):
    """A residual block whose second layer can be skipped at run time (or, wrongly, only masked)."""

    def __init__(self):
        super().__init__()
        self.first, self.second = nn.Linear(32, 32), nn.Linear(32, 32)

    def forward(self, x, mode="run"):
        x = x + self.first(x)
        if mode == "skip":
            return x
        out = self.second(x)
        return x + (out * 0 if mode == "mask" else out)


def test_a_skipped_branch_is_not_counted_and_a_masked_one_is():
    block, x = SkippableBranch(), torch.randn(4, 32)
    full = count_macs(block, x).total
    assert full == 2 * 4 * 32 * 32
    assert count_macs(block, x, mode="skip").total == full - 4 * 32 * 32
    assert count_macs(block, x, mode="mask").total == full
    per_module = count_macs(block, x, mode="skip").per_module
    assert per_module["first"] == 4 * 32 * 32 and "second" not in per_module


class EarlyExit(nn.Module):
    """Samples whose first feature is positive leave after the first layer (input-dependent cost)."""

    def __init__(self):
        super().__init__()
        self.first, self.second = nn.Linear(8, 8), nn.Linear(8, 8)

    def forward(self, x):
        h = self.first(x)
        stay = x[:, 0] <= 0
        if stay.any():
            h = h.clone()
            h[stay] = self.second(h[stay])
        return h


def test_average_macs_per_sample_follows_the_inputs():
    x = torch.randn(64, 8)
    batches = [(x[i:i + 16], torch.zeros(16)) for i in range(0, 64, 16)]
    stay = (x[:, 0] <= 0).sum().item()
    expected = (64 * 64 + stay * 64) / 64
    assert average_macs_per_sample(EarlyExit(), batches) == pytest.approx(expected)
    assert average_macs_per_sample(EarlyExit(), batches, max_batches=1) == pytest.approx(
        (16 * 64 + (x[:16, 0] <= 0).sum().item() * 64) / 16)


def test_format_macs_names_the_scale():
    assert format_macs(4.089e9) == "4.09 G"
    assert format_macs(300.77e6) == "300.77 M"
    assert "MACs" in str(count_macs(nn.Linear(2, 2), torch.randn(1, 2)))
