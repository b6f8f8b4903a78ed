"""DS-Net's static export (dsnet/export.py): a sub-network as a slim MobileNetV1 with the supernet's sliced weights."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from common.configurations import ConfigurationError
from dsnet.export import StaticDSNet, to_static
from dsnet.models import CHOICES_CFGS, DSBatchNorm2d, DSConv2d, create_model

TINY = "slimmable_mbnet_v1_bn_uniform_tiny"


@pytest.fixture(scope="module")
def model():
    """The tiny supernet with random BN statistics and affines at every width, in evaluation mode, its trunk run
    in micro-batches of 4 images."""
    torch.manual_seed(0)
    model = create_model(TINY, num_classes=10)
    with torch.no_grad():
        for bn in model.modules():
            if isinstance(bn, nn.BatchNorm2d):
                bn.running_mean.uniform_(-0.5, 0.5)
                bn.running_var.uniform_(0.5, 2.0)
                if bn.affine:
                    bn.weight.uniform_(0.5, 1.5)
                    bn.bias.uniform_(-0.5, 0.5)
    model.micro_batch_pixels = 4 * 32 * 32  # micro-batches of 4 images at 32 px, as of 4 at 224 px by default
    return model.eval()


@pytest.mark.parametrize("name", ["0", "1", "6", "13", "largest"])
def test_export_equals_the_sub_network(model, name):
    x = torch.randn(6, 3, 32, 32)  # two micro-batches of the trunk in both (the fixture's micro_batch_pixels)
    model.set_configuration("dynamic")
    exported = to_static(model, name)
    assert model.mode == "dynamic"  # the given model is left as it was
    assert isinstance(exported, StaticDSNet) and exported.micro_batch_pixels == 4 * 32 * 32
    assert not any(isinstance(m, (DSConv2d, DSBatchNorm2d)) for m in exported.modules())
    model.set_configuration(name)
    with torch.no_grad():
        expected = model(x)
        torch.testing.assert_close(exported(x), expected, atol=1e-5, rtol=1e-5)
        folded = to_static(model, name, fold_bn=True)
        assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
        torch.testing.assert_close(folded(x), expected, atol=1e-5, rtol=1e-5)
    widths = model.widths()
    assert exported.widths == widths
    assert exported.blocks[4][0].conv_pw.weight.shape == (widths[5], widths[4], 1, 1)


def test_export_round_trip_and_torch_export(model):
    exported = to_static(model, "4")
    buffer = io.BytesIO()
    torch.save(exported.state_dict(), buffer)
    buffer.seek(0)
    fresh = StaticDSNet(CHOICES_CFGS[TINY], exported.widths, num_classes=10).eval()
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), exported(x))
        program = torch.export.export(exported, (x,))
        torch.testing.assert_close(program.module()(x), exported(x))


def test_export_refuses_dynamic_unknown_and_training(model):
    with pytest.raises(ConfigurationError, match="no static form; export one of 0, 1, .*13, largest"):
        to_static(model, "dynamic")
    with pytest.raises(ConfigurationError, match="has no configuration 'smallest'"):
        to_static(model, "smallest")
    model.train()
    try:
        with pytest.raises(ConfigurationError, match="evaluation mode"):
            to_static(model, "0")
    finally:
        model.eval()
