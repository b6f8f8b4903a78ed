"""PAD-Net models against the original's manifests (spec a, c, e): state dicts, parameter counts, MACs; the
registry, the checkpoint filter and the temperature plumbing."""

from __future__ import annotations

import functools
import json

import pytest
import torch

from common.checkpoint import CheckpointError, load_state_dict
from common.errors import UserError
from padnet.dyconv.counting import count_model_macs, deployed_params, param_breakdown, stored_params
from padnet.dyconv.layers import INITIAL_TEMPERATURE, dynamic_layers, is_pad_model, pad_layers, set_temperature
from padnet.dyconv.models import MODELS, ModelConfigError, build_model, checkpoint_filter_fn

# manifest variant -> (type, kwargs) as the original YAML would give them
VARIANTS = {
    "static_resnet50": ("resnet50", {}),
    **{f"dy_resnet{d}": (f"DyResNet{d}", {}) for d in (10, 18, 50)},
    **{f"pad_resnet{d}": (f"DyResNet{d}_PAD", {"Lambda": "both"}) for d in (10, 18, 50)},
    **{f"dy_mobilenetv2_w{w}": ("Dymobilenetv2", {"width_multiplier": w}) for w in (0.35, 0.5, 0.75, 1.0)},
    **{f"pad_mobilenetv2_w{w}": ("Dymobilenetv2_PAD", {"width_multiplier": w}) for w in (0.35, 0.5, 0.75, 1.0)},
    **{f"static_mobilenetv2_w{w}": ("mobilenetv2", {"width_multiplier": w}) for w in (0.5, 0.75, 1.0)},
}
FAST_MACS = ("pad_resnet50", "static_resnet50", "dy_mobilenetv2_w1.0", "static_mobilenetv2_w1.0")


@pytest.fixture(scope="module")
def reference_dir(shared_dir):
    return shared_dir / "reference" / "padnet"


@functools.cache
def _meta_model(variant: str):
    """The manifest's model on the meta device (shapes only), built once per session; tests must not change it."""
    type_name, kwargs = VARIANTS[variant]
    with torch.device("meta"):
        return build_model(type_name, num_classes=1000, **kwargs)


def _manifest(reference_dir, variant: str) -> dict:
    return json.loads((reference_dir / f"manifest_{variant}.json").read_text())


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_state_dict_and_params_match_manifest(reference_dir, variant):
    manifest = _manifest(reference_dir, variant)
    model = _meta_model(variant)
    assert [[k, list(v.shape)] for k, v in model.state_dict().items()] == manifest["state_dict"]
    assert stored_params(model) == manifest["num_params"]
    assert param_breakdown(model).as_manifest() == manifest["param_breakdown"]
    if "deployed_params_by_dynamic_ratio" in manifest:
        deployed = manifest["deployed_params_by_dynamic_ratio"]
        for kappa, value in deployed["values"].items():
            assert deployed_params(model, float(kappa)) == value
        dy_variant = variant.replace("pad_", "dy_")
        assert deployed["fully_dynamic_equivalent (kappa=1, no static copy)"] == stored_params(_meta_model(dy_variant))


def _check_macs(reference_dir, variant):
    flops = _manifest(reference_dir, variant)["flops"]
    macs = count_model_macs(_meta_model(variant))
    counter_key = next(k for k in flops if k.startswith("torch_flop_counter_MACs"))
    assert macs.conv_and_attention == flops[counter_key]
    assert macs.total == flops["total_MACs_incl_aggregation"]
    assert macs.dynamic_conv == flops["dynamic_conv_layers_MACs (conv with aggregated kernel)"]
    assert macs.attention == flops["attention_MACs (fc1+fc2 of all dynamic layers)"]
    assert macs.aggregation == flops["kernel_aggregation_MACs (sum_k alpha_k W_k, full K, per sample)"]


@pytest.mark.parametrize("variant", FAST_MACS)
def test_macs_match_manifest(reference_dir, variant):
    _check_macs(reference_dir, variant)


@pytest.mark.slow
@pytest.mark.parametrize("variant", [v for v in VARIANTS if v not in FAST_MACS])
def test_macs_match_manifest_all(reference_dir, variant):
    _check_macs(reference_dir, variant)


def test_spec_table_numbers():
    """The headline counts of spec a: DY-ResNet-50, PAD ResNet-50 at kappa 0.3 / 0.5, DY / PAD MobileNetV2 x1.0."""
    assert stored_params(_meta_model("dy_resnet50")) == 97_138_424
    pad50 = _meta_model("pad_resnet50")
    assert (deployed_params(pad50, 0.3), deployed_params(pad50, 0.5)) == (47_902_918, 61_970_220)
    assert stored_params(_meta_model("dy_mobilenetv2_w1.0")) == 10_653_944
    pad_mbv2 = _meta_model("pad_mobilenetv2_w1.0")
    assert (deployed_params(pad_mbv2, 0.3), deployed_params(pad_mbv2, 0.5)) == (6_057_313, 7_370_651)
    assert len(pad_layers(pad50)) == 52 and len(pad_layers(pad_mbv2)) == 51


@pytest.mark.parametrize("type_name", [t for t in MODELS if not t.startswith("od_")])  # ODConv: test_odconv.py
def test_every_model_runs_small(type_name):
    torch.manual_seed(0)
    kwargs = {"scale": 0.125} if "esNet" in type_name or type_name.startswith("resnet") else {"width_multiplier": 0.35}
    model = build_model(type_name, num_classes=7, **kwargs).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 7) and torch.isfinite(out).all()
    assert is_pad_model(model) == type_name.endswith("_PAD")
    if dynamic_layers(model):
        assert model.temperature == INITIAL_TEMPERATURE
        set_temperature(model, 4.0)
        assert model.temperature == 4.0 and {layer.temperature for _, layer in dynamic_layers(model)} == {4.0}
        model.update_temperature(2.0)  # the original's method; the property reaches the layers too
        assert {layer.temperature for _, layer in dynamic_layers(model)} == {2.0}


def test_lambda_reaches_layers_and_defaults():
    assert {m.Lambda for _, m in pad_layers(build_model("Dymobilenetv2_PAD", num_classes=3))} == {None}
    assert {m.Lambda for _, m in pad_layers(build_model("Dymobilenetv2_PAD", num_classes=3, Lambda="d"))} == {"d"}
    resnet = build_model("DyResNet10_PAD", num_classes=3, scale=0.125, Lambda="s")
    assert {m.Lambda for _, m in pad_layers(resnet)} == {"s"}


def test_dropout_layouts():
    """MobileNetV2's dropout moves the classifier to ``classifier.1`` (as the original); the PAD ResNet's keeps
    the keys (the original discards it; here it is applied)."""
    mbv2 = build_model("Dymobilenetv2", num_classes=3, dropout=0.2)
    assert "classifier.1.weight" in mbv2.state_dict()
    plain = build_model("DyResNet10_PAD", num_classes=3, scale=0.125)
    dropped = build_model("DyResNet10_PAD", num_classes=3, scale=0.125, dropout=0.5)
    assert list(plain.state_dict()) == list(dropped.state_dict())
    x = torch.randn(4, 3, 32, 32)
    dropped.load_state_dict(plain.state_dict())
    dropped.eval()
    plain.eval()
    torch.testing.assert_close(dropped(x), plain(x))


def test_build_model_errors():
    with pytest.raises(ModelConfigError, match="DyResNet50_PAD"):
        build_model("dyresnet50_pad")
    with pytest.raises(ModelConfigError, match="width_multiplier"):
        build_model("Dymobilenetv2", width=0.5)
    with pytest.raises(ModelConfigError, match="Lambda"):
        build_model("DyResNet18_PAD", Lambda="both_")
    with pytest.raises(ModelConfigError, match="scale"):
        build_model("DyResNet18", scale=0)
    assert issubclass(ModelConfigError, UserError) and issubclass(ModelConfigError, ValueError)


def test_checkpoint_filter_strips_module_and_folds_static_masks():
    torch.manual_seed(0)
    model = build_model("DyResNet10_PAD", num_classes=5, scale=0.125)
    source = build_model("DyResNet10_PAD", num_classes=5, scale=0.125)
    state = {f"module.{k}": v for k, v in source.state_dict().items()}
    state["module.conv1.weight_mask"] = torch.ones_like(source.conv1.weight)
    state["module.linear.weight_mask"] = torch.zeros_like(source.linear.weight)
    state["module.linear.bias_mask"] = torch.ones_like(source.linear.bias)
    report = load_state_dict(model, checkpoint_filter_fn(state, model), strict=True)
    assert report.clean
    torch.testing.assert_close(model.conv1.weight, source.conv1.weight)
    assert float(model.linear.weight.detach().abs().sum()) == 0  # the mask multiplies the weight, as in Conv2d
    ours, theirs = model.layer1.layers[0].conv1, source.layer1.layers[0].conv1
    torch.testing.assert_close(ours.kernels_weights, theirs.kernels_weights)
    other = build_model("DyResNet10", num_classes=5, scale=0.125)
    with pytest.raises(CheckpointError, match="does not fit"):
        load_state_dict(other, checkpoint_filter_fn(state, other), strict=True)


def test_mobilenet_ref_layout_checkpoint_filter_masks():
    model = build_model("Dymobilenetv2", num_classes=4)
    state = dict(model.state_dict())
    state["classifier.0.weight_mask"] = torch.ones_like(state["classifier.0.weight"])
    state["classifier.0.bias_mask"] = torch.ones_like(state["classifier.0.bias"])
    assert load_state_dict(model, checkpoint_filter_fn(state, model), strict=True).clean
