"""The configuration protocol of the ADN models and their static export (``adn/export.py``): every family as
torchvision's own class with a smaller depth, equal outputs, state dicts that load into torchvision's classes,
``torch.export``, and the refusals."""

from __future__ import annotations

import io

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.resnet import Bottleneck

from adn.export import to_static
from adn.models import create_model
from adn.models.resnet import ResNetADN
from adn.models.swin_transformer import SwinTransformerADN
from adn.models.vision_transformer import VisionTransformerADN
from common.configurations import ConfigurationError

SWIN = {"embed_dim": 16, "num_heads": (1, 2, 4, 8), "window_size": 4, "num_classes": 10}


def _swin(version: int) -> SwinTransformerADN:
    return SwinTransformerADN(version=version, **SWIN)


def _vit() -> VisionTransformerADN:
    model = VisionTransformerADN(image_size=32, patch_size=8, num_layers=6, num_heads=2, hidden_dim=32, mlp_dim=64,
                                 num_classes=10)
    torch.nn.init.normal_(model.heads.head.weight, std=0.5)  # torchvision's zero-initialised head would hide the rest
    return model


def _depths(full: tuple[int, ...], base: tuple[int, ...], cfg: str) -> list[int]:
    """Blocks per stage that run in ``cfg``: the base (mandatory) count where the stage is skipped."""
    return [b if flag == "T" else n for n, b, flag in zip(full, base, cfg, strict=True)]


def _tv_resnet50(cfg: str) -> nn.Module:
    return torchvision.models.ResNet(Bottleneck, _depths((3, 4, 6, 3), (2, 2, 3, 2), cfg), num_classes=10)


def _tv_mobilenet_v2(cfg: str) -> nn.Module:
    """torchvision's setting with the skippable stages (n >= 2) cut to their (n + 1) // 2 mandatory blocks."""
    setting = [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 4, 2], [6, 96, 3, 1], [6, 160, 3, 2],
               [6, 320, 1, 1]]
    depths = _depths(tuple(n for *_, n, _ in setting[1:6]), tuple((n + 1) // 2 for *_, n, _ in setting[1:6]), cfg)
    for row, n in zip(setting[1:6], depths, strict=True):
        row[2] = n
    return torchvision.models.MobileNetV2(num_classes=10, inverted_residual_setting=setting)


def _tv_swin(version: int):
    swin = torchvision.models.swin_transformer
    layers = {} if version == 1 else {"block": swin.SwinTransformerBlockV2, "downsample_layer": swin.PatchMergingV2}
    return lambda cfg: swin.SwinTransformer([4, 4], 16, _depths((2, 2, 6, 2), (1, 1, 3, 1), cfg), [1, 2, 4, 8],
                                            [4, 4], num_classes=10, **layers)


def _tv_vit(cfg: str) -> nn.Module:
    return torchvision.models.VisionTransformer(32, 8, 6 - cfg.count("T"), 2, 32, 64, num_classes=10)


# family -> (model factory, input size, configurations checked (None: all), torchvision's class with the reduced
# depth of a configuration, or None where torchvision has no class for the architecture)
MIXED = ["FFFF", "TFFT", "FTTF", "TTTT"]
FAMILIES = {
    "resnet50": (lambda: create_model("resnet50", num_classes=10), 32, ["FFFF", "TTTT", "TFFT"], _tv_resnet50),
    "resnet_cifar_vd": (lambda: ResNetADN((2, 2, 4, 2), num_classes=10, width=16, stem="cifar", variant="d"), 16,
                        MIXED, None),
    "mobilenet_v2": (lambda: create_model("mobilenet_v2", num_classes=10), 32, ["FFFFF", "TTTTT", "TFTFT"],
                     _tv_mobilenet_v2),
    "swin_t": (lambda: _swin(1), 32, MIXED, _tv_swin(1)),
    "swin_v2_t": (lambda: _swin(2), 32, MIXED, _tv_swin(2)),
    "vit": (_vit, 32, None, _tv_vit),
}


def nontrivial_norms(model: torch.nn.Module) -> torch.nn.Module:
    """Random BatchNorm statistics and norm affine parameters (the normal and the skip-aware ones differ), then
    evaluation mode."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for key, value in model.state_dict().items():
            if value.is_floating_point() and value.dim() == 1:
                noise = torch.rand(value.shape, generator=gen)
                value.copy_(0.5 + noise if key.endswith("running_var") else value + 0.4 * (noise - 0.5))
    return model.eval()


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request):
    make, size, cfgs, torchvision_class = FAMILIES[request.param]
    torch.manual_seed(0)
    model = nontrivial_norms(make())
    return request.param, model, torch.randn(2, 3, size, size), cfgs or model.configurations(), torchvision_class


def test_export_equals_the_dynamic_model_in_every_configuration(family):
    _, model, x, cfgs, _ = family
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for cfg in cfgs:
            static = to_static(model, cfg)
            assert not any(hasattr(m, "skippable") or hasattr(m, "has_skip_norms") for m in static.modules())
            torch.testing.assert_close(static(x), model(x, cfg), rtol=0, atol=1e-5, msg=cfg)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # the model is not modified
    assert model.skip_cfg == (False,) * model.num_skippable_stages


def test_state_dict_loads_into_torchvision_class_with_the_reduced_depth(family):
    name, model, x, cfgs, torchvision_class = family
    cfg = cfgs[-1] if name != "mobilenet_v2" else "TTTTT"
    static = to_static(model, cfg)
    buffer = io.BytesIO()
    torch.save(static.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    if torchvision_class is None:  # ResNet-D and the 3x3-stem width-16 ResNet: a fresh export of that shape
        fresh = to_static(nontrivial_norms(FAMILIES[name][0]()), cfg)
    else:
        fresh = torchvision_class(cfg)
        assert type(fresh) is type(static)
    fresh.load_state_dict(state, strict=True)
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(x), model(x, cfg), rtol=0, atol=1e-5)


def test_torch_export_traces_the_export(family):
    _, model, x, cfgs, _ = family
    static = to_static(model, cfgs[-1])
    exported = torch.export.export(static, (x,))
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(x), static(x), rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", ["resnet50", "mobilenet_v2"])
def test_folded_batchnorm(name):
    make, size, cfgs, _ = FAMILIES[name]
    model = nontrivial_norms(make())
    x = torch.randn(2, 3, size, size)
    folded = to_static(model, cfgs[1], fold_bn=True)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x, cfgs[1]), rtol=1e-4, atol=1e-4)


def test_set_configuration_makes_plain_calls_run_it():
    model = nontrivial_norms(create_model("resnet_adn_cifar", num_classes=10))
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        for cfg in ("TTTT", "FTFT", "FFFF"):
            model.set_configuration(cfg)
            assert torch.equal(model(x), model(x, cfg))
    model.set_configuration("TFFF")
    with torch.no_grad():
        torch.testing.assert_close(to_static(model, "TFFF")(x), model(x), rtol=0, atol=1e-5)


@pytest.mark.parametrize("bad", ["TTT", "tttt", "XXXX", "T T T T"])
def test_unknown_configurations_are_refused(bad):
    model = create_model("resnet_adn_cifar", num_classes=10).eval()
    with pytest.raises(ConfigurationError, match="choose one of FFFF"):
        model.set_configuration(bad)
    with pytest.raises(ConfigurationError, match="choose one of FFFF"):
        to_static(model, bad)
    assert model.skip_cfg == (False,) * 4


def test_a_model_in_training_mode_is_refused():
    with pytest.raises(ConfigurationError, match="evaluation mode"):
        to_static(create_model("resnet_adn_cifar", num_classes=10), "TTTT")
