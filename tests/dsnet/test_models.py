"""DS-Net supernet behaviour beyond the reference: slicing really shrinks the work, modes, routing spaces."""

from __future__ import annotations

import random

import pytest
import torch

import dsnet.models.blocks as blocks
from common.configurations import ConfigurationError
from dsnet.madds import executed_macs, madds, mode_widths
from dsnet.models import DSBatchNorm2d, create_model
from dsnet.models.dyn_slim_net import MICRO_BATCH_PIXELS

TINY = "slimmable_mbnet_v1_bn_uniform_tiny"


@pytest.fixture
def tiny():
    """The tiny supernet with BN statistics estimated on random data for every width, in eval mode."""
    torch.manual_seed(0)
    model = create_model(TINY, num_classes=10)
    model.train()
    x = torch.randn(16, 3, 32, 32)
    with torch.no_grad():
        for mode, choice in [("largest", None)] + [("uniform", c) for c in range(14)]:
            model.set_mode(mode, choice)
            model(x)
    return model.eval()


def test_slimmer_modes_execute_fewer_macs():
    """The MACs counted on the real forward equal the analytic conv + linear count: the sliced weights ran."""
    model = create_model(TINY, num_classes=10)
    executed = []
    for mode, choice in [("smallest", None)] + [("uniform", c) for c in range(14)] + [("largest", None)]:
        macs = executed_macs(model, mode, choice, img_size=32)
        assert macs == madds(model, mode_widths(model, mode, choice), 32, include_pools=False)
        executed.append(macs)
    assert executed[0] == executed[1]
    assert executed[1:] == sorted(executed[1:]) and len(set(executed[1:])) == 15


def test_modes_and_widths():
    model = create_model(TINY)
    model.set_mode("largest")
    assert model.widths() == [12, 16, 24, 32, 76, 152]
    model.set_mode("smallest")
    assert model.widths() == [8, 8, 12, 16, 24, 48]
    model.set_mode("uniform", 5)
    assert model.widths() == [8, 8, 12, 16, 44, 88]
    random.seed(3)
    drawn = set()
    for _ in range(200):
        model.set_mode("uniform")
        drawn.add(model.choice)
    assert drawn == set(range(1, 14))  # random.randint(1, 13), as the original
    with pytest.raises(ValueError, match="unknown mode"):
        model.set_mode("random")
    with pytest.raises(ValueError, match="outside 0..13"):
        model.set_mode("uniform", 14)
    assert model.configurations() == [str(c) for c in range(14)] + ["largest", "dynamic"]
    model.set_configuration("7")
    assert (model.mode, model.choice, model.widths()[-1]) == ("uniform", 7, 104)
    model.set_configuration("largest")
    assert model.mode == "largest"
    assert model.gate_noise
    model.set_configuration("dynamic")
    assert (model.mode, model.gate_noise) == ("dynamic", False)
    for unknown in ("smallest", "14", "uniform"):
        with pytest.raises(ConfigurationError, match="has no configuration"):
            model.set_configuration(unknown)
    model.set_mode("dynamic")
    with pytest.raises(ValueError, match="per-sample widths"):
        model.widths()


def test_create_model_errors():
    with pytest.raises(ValueError, match="unknown DS-Net model"):
        create_model("mobilenetv1")
    with pytest.raises(ValueError, match="no drop-path"):
        create_model(TINY, drop_path_rate=0.1)


def test_batch_norm_rejects_an_unknown_width():
    bn = DSBatchNorm2d([4, 8])
    with pytest.raises(ValueError, match=r"widths \[4, 8\], not for 6 channels"):
        bn(torch.randn(2, 6, 3, 3))


def test_dropout_only_in_largest():
    model = create_model(TINY, num_classes=10, drop_rate=0.5).train()
    x = torch.randn(4, 3, 32, 32)
    for mode, expect_equal in [("largest", False), ("smallest", True)]:
        model.set_mode(mode)
        torch.manual_seed(0)
        a = model(x)
        torch.manual_seed(1)
        b = model(x)
        assert torch.allclose(a, b) == expect_equal, mode


def test_get_gate_is_the_slimming_head_only():
    model = create_model("slimmable_mbnet_v1_bn_uniform")
    gate = model.get_gate()
    assert [n for n, _ in gate.named_parameters()] == ["0.0.weight"]
    assert gate[0][0].weight.shape == (4, 66, 1, 1)


@pytest.mark.parametrize("space", [(0, 1, 2, 3), (3, 4, 5, 6), (0, 4, 9, 13)])
def test_any_routing_space_matches_the_static_sub_networks(tiny, space, monkeypatch):
    """Masked (with gradients) and sliced (without) dynamic outputs equal each sample's static sub-network; the
    original crashes for every space but the slimmest four."""
    tiny.set_routing_space(space)
    x = torch.randn(8, 3, 32, 32)
    noise = 4.0 * torch.nn.functional.one_hot(torch.arange(8) % 4, 4).float()  # routes 0, 1, 2, 3, 0, ...
    monkeypatch.setattr(blocks, "sample_gumbel", lambda logits: noise)
    gate = tiny.get_gate()[0][0]
    with torch.no_grad():
        tiny.set_mode("dynamic")
        sliced = tiny(x)
        index = tiny.route.index
    tiny.set_mode("dynamic")
    masked = tiny(x)
    assert torch.equal(tiny.route.index, index)
    assert len(set(index.tolist())) > 1
    torch.testing.assert_close(masked.detach(), sliced, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        for k, choice in enumerate(space):
            rows = index == k
            if rows.any():
                tiny.set_mode("uniform", choice)
                torch.testing.assert_close(tiny(x)[rows], sliced[rows], atol=1e-5, rtol=1e-5)
    masked.sum().backward()
    assert gate.weight.grad is not None and gate.weight.grad.abs().sum() > 0


def test_routing_space_errors():
    model = create_model(TINY)
    with pytest.raises(ValueError, match="needs 4 choices in 0..13"):
        model.set_routing_space((0, 1, 2))
    with pytest.raises(ValueError, match="needs 4 choices in 0..13"):
        model.set_routing_space((0, 1, 2, 14))


def test_gumbel_noise_makes_routes_stochastic(tiny):
    tiny.set_mode("dynamic")
    x = torch.randn(64, 3, 32, 32)
    with torch.no_grad():
        tiny.gate_noise = False
        tiny(x)
        first = tiny.route.index.clone()
        tiny(x)
        assert torch.equal(tiny.route.index, first)
        tiny.gate_noise = True
        torch.manual_seed(0)
        tiny(x)
        assert not torch.equal(tiny.route.index, first)


def test_micro_batched_trunk_equals_the_whole_batch(tiny):
    """In evaluation the stem and stages 0-2 run in micro-batches (here of 2 images): the same logits as at once;
    32 px images are not split by default."""
    x = torch.randn(11, 3, 32, 32)
    with torch.no_grad():
        for name in ("0", "13", "largest", "dynamic"):
            tiny.set_configuration(name)
            tiny.micro_batch_pixels = 2 * 32 * 32
            chunked = tiny(x)
            tiny.micro_batch_pixels = 0
            torch.testing.assert_close(chunked, tiny(x), atol=1e-5, rtol=1e-5)
    tiny.micro_batch_pixels = MICRO_BATCH_PIXELS
    calls = []
    tiny.blocks[0].register_forward_hook(lambda module, args, out: calls.append(out.size(0)))
    with torch.no_grad():
        tiny(x)
        tiny(torch.randn(9, 3, 224, 224))
    assert calls == [11, 4, 4, 1]


def test_kept_slices_follow_the_weights(tiny):
    """Evaluation without gradients reuses compact weight slices, refreshed when a weight changes in place or
    moves; with gradients the slices stay views, so the shared weight learns."""
    tiny.set_configuration("3")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        tiny.classifier.bias.zero_()
        before = tiny(x)
        tiny.classifier.weight.mul_(2.0)  # in place: bumps the version counter
        torch.testing.assert_close(tiny(x), 2.0 * before, atol=1e-5, rtol=1e-5)
        pw = tiny.blocks[4].first_block.conv_pw
        kept = pw._slices[(pw.out_channels_list[3], pw.in_channels_list[3])][1]
        assert kept.is_contiguous() and kept.data_ptr() != pw.weight.data_ptr()
    out = tiny(x)  # gradients enabled: views of the shared weights
    out.sum().backward()
    assert tiny.blocks[4].first_block.conv_pw.weight.grad.abs().sum() > 0
    tiny.train()
    assert not pw._slices
