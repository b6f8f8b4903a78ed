"""ODConv and ODConv-PAD (padnet/dyconv/odconv.py, the OD models): the original's state-dict layout and parameter
counts, forward equivalences (a plain conv when the attentions are fixed, a per-sample loop, ODConv-PAD at M = 1
is ODConv, M = 0 a static conv, the deployment form equals the training form), the temperature, IMP through
padnet.imp, the counts, padnet/dyconv/main.py end to end on digits, and bad input."""

from __future__ import annotations

import io
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from benchmarks import padnet_table
from common.configurations import ConfigurationError
from common.errors import UserError, run_cli
from common.flops import count_macs
from padnet.dyconv import main as dyconv_main
from padnet.dyconv.layers import imp_masks, is_pad_model, pad_layers, set_temperature
from padnet.dyconv.models import ModelConfigError, build_model
from padnet.dyconv.odconv import (
    DeployedODConv2d_PAD,
    ODConv2d,
    ODConv2d_PAD,
    StaticODConv2d,
    deploy,
    od_aggregation_macs,
    od_deployed_params,
    od_layers,
    od_param_breakdown,
)
from padnet.export import to_static
from padnet.imp import classification_loss, iterative_mode_partition, rand_scores, snip_scores

CONFIGS = Path(__file__).resolve().parents[2] / "padnet" / "dyconv" / "configs"

# ------------------------------------------------------------------------------------------------ layouts
# the state-dict keys and shapes of the original's ODConv2d(16, 32, 3) and ODConv2d_PAD(16, 32, 3) (K = 4, attention
# width max(int(16 / 16), 16) = 16), read off model/layer/odconv.py: own parameters, own buffers, then children
OD_KEYS = [("kernels_weights", (4, 32, 16, 3, 3)), ("attention.fc.weight", (16, 16, 1, 1)),
           ("attention.bn.weight", (16,)), ("attention.bn.bias", (16,)), ("attention.bn.running_mean", (16,)),
           ("attention.bn.running_var", (16,)), ("attention.bn.num_batches_tracked", ()),
           ("attention.channel_fc.weight", (16, 16, 1, 1)), ("attention.channel_fc.bias", (16,)),
           ("attention.filter_fc.weight", (32, 16, 1, 1)), ("attention.filter_fc.bias", (32,)),
           ("attention.spatial_fc.weight", (9, 16, 1, 1)), ("attention.spatial_fc.bias", (9,)),
           ("attention.kernel_fc.weight", (4, 16, 1, 1)), ("attention.kernel_fc.bias", (4,))]
PAD_KEYS = [("phi_d", (1,)), ("kernels_weights", (4, 32, 16, 3, 3)), ("weight", (1, 32, 16, 3, 3)),
            ("kernels_weights_mask", (1, 32, 16, 3, 3)), ("attention.channel_phi", (1,)),
            ("attention.filter_phi", (1,)), ("attention.spatial_phi", (1,)),
            ("attention.channel_fc_weight", (16, 16, 1, 1)), ("attention.channel_fc_bias", (16,)),
            ("attention.channel_att", (1, 16, 1, 1)), ("attention.filter_fc_weight", (32, 16, 1, 1)),
            ("attention.filter_fc_bias", (32,)), ("attention.filter_att", (1, 32, 1, 1)),
            ("attention.spatial_fc_weight", (9, 16, 1, 1)), ("attention.spatial_fc_bias", (9,)),
            ("attention.spatial_att", (1, 9, 1, 1)), ("attention.channel_fc_mask", (16, 16, 1, 1)),
            ("attention.filter_fc_mask", (32, 1, 1, 1)), ("attention.spatial_fc_mask", (9, 1, 1, 1)),
            ("attention.fc.weight", (16, 16, 1, 1)), ("attention.bn.weight", (16,)), ("attention.bn.bias", (16,)),
            ("attention.bn.running_mean", (16,)), ("attention.bn.running_var", (16,)),
            ("attention.bn.num_batches_tracked", ()), ("attention.kernel_fc.weight", (4, 16, 1, 1)),
            ("attention.kernel_fc.bias", (4,))]

# (stored parameters, state-dict entries) of the original's models at 1000 classes, from its model code
ORIGINAL_COUNTS = {
    ("od_resnet18", ()): (44_901_640, 346), ("od_resnet50", ()): (90_670_888, 928),
    ("od_resnet18_pad", ()): (55_894_552, 538), ("od_resnet50_pad", ()): (111_391_160, 1440),
    ("od_mobilenetv2_050", ()): (2_425_537, 824), ("od_mobilenetv2_075", ()): (3_507_113, 824),
    ("od_mobilenetv2_100", ()): (4_940_185, 824), ("od_mobilenetv2_100", (("kernel_num", 4),)): (11_512_149, 926),
    ("od_mobilenetv2_050_pad", ()): (3_108_230, 1334), ("od_mobilenetv2_075_pad", ()): (4_855_494, 1334),
    ("od_mobilenetv2_100_pad", ()): (7_155_102, 1334),
    ("od_mobilenetv2_100_pad", (("kernel_num", 4),)): (13_727_066, 1436),
}


def _layout(module: torch.nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    return [(k, tuple(v.shape)) for k, v in module.state_dict().items()]


def test_layer_state_dicts_follow_the_original():
    assert _layout(ODConv2d(16, 32, 3, padding=1)) == OD_KEYS
    assert _layout(ODConv2d_PAD(16, 32, 3, padding=1)) == PAD_KEYS
    # a depthwise conv has no filter attention, a 1x1 conv no spatial attention, K = 1 no kernel attention
    depthwise = {k for k, _ in _layout(ODConv2d(8, 8, 3, groups=8))}
    assert "attention.filter_fc.weight" not in depthwise and "attention.spatial_fc.weight" in depthwise
    pointwise = {k for k, _ in _layout(ODConv2d_PAD(8, 24, 1, kernel_num=1))}
    absent = ("attention.spatial_fc", "attention.spatial_att", "attention.kernel_fc")
    assert not any(k.startswith(absent) for k in pointwise)
    assert "attention.filter_fc_mask" in pointwise and "attention.spatial_phi" in pointwise  # every logit exists


@pytest.mark.parametrize(("type_name", "kwargs"), list(ORIGINAL_COUNTS))
def test_model_counts_match_the_original(type_name, kwargs):
    with torch.device("meta"):
        model = build_model(type_name, num_classes=1000, **dict(kwargs))
    params, entries = ORIGINAL_COUNTS[(type_name, kwargs)]
    assert sum(p.numel() for p in model.parameters()) == params and len(model.state_dict()) == entries
    keys = model.state_dict()
    if "resnet" in type_name:
        assert "layer2.layers.0.downsample.layers.0.weight" in keys and "fc.weight" in keys  # static shortcut, Linear
        assert "layer1.layers.0.conv1.attention.kernel_fc.weight" in keys
    else:
        assert "features.layers.0.0.weight" in keys and "classifier.1.weight" in keys
        assert "features.layers.2.conv.layers.1.layers.0.kernels_weights" in keys  # depthwise ODConv of block 2
    assert is_pad_model(model) == type_name.endswith("_pad")


# ---------------------------------------------------------------------------------------------- forwards
def _randomise(module: torch.nn.Module, seed: int = 0) -> None:
    """Random weights and BN statistics, so that no equivalence holds by an all-zero accident."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if "mask" in name or not tensor.dtype.is_floating_point:
                continue
            noise = torch.randn(tensor.shape, generator=generator)
            tensor.copy_(noise.abs() + 0.5 if name.endswith("running_var") else 0.3 * noise)


def test_fixed_attentions_and_one_kernel_reduce_to_a_conv():
    """K = 1, the heads' weights zeroed: c, f, s are the constants sigmoid(b / T) and the layer is
    f ⊙ conv(c ⊙ x, s ⊙ W), a plain convolution."""
    layer = ODConv2d(6, 10, 3, stride=2, padding=1, kernel_num=1).eval()
    _randomise(layer)
    attention = layer.attention
    with torch.no_grad():
        for head in (attention.channel_fc, attention.filter_fc, attention.spatial_fc):
            head.weight.zero_()
    x = torch.randn(3, 6, 9, 9)
    c, f, s = (torch.sigmoid(h.bias / 5.0) for h in (attention.channel_fc, attention.filter_fc, attention.spatial_fc))
    expected = F.conv2d(x * c.view(1, -1, 1, 1), layer.kernels_weights[0] * s.view(3, 3), stride=2, padding=1)
    torch.testing.assert_close(layer(x, 5.0), expected * f.view(1, -1, 1, 1), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("in_planes", "out_planes", "k", "groups", "kernels", "stride"),
                         [(6, 10, 3, 1, 4, 1), (8, 8, 3, 8, 4, 2), (6, 12, 1, 1, 4, 1), (6, 12, 1, 1, 4, 2),
                          (6, 10, 3, 2, 1, 1)])
def test_odconv_equals_a_per_sample_loop(in_planes, out_planes, k, groups, kernels, stride):
    """The per-sample conv (grouped, or a batched matrix product for 1x1) and the aggregation (one matrix
    product) against the formula, sample by sample."""
    layer = ODConv2d(in_planes, out_planes, k, stride, padding=k // 2, groups=groups, kernel_num=kernels).eval()
    _randomise(layer, seed=1)
    x = torch.randn(3, in_planes, 7, 7)
    channel, filt, spatial, kernel = layer.attention(x, 2.0)
    rows = []
    for b in range(3):
        weight = layer.kernels_weights if kernel is None else (kernel[b].view(-1, 1, 1, 1, 1) * layer.kernels_weights)
        weight = weight.sum(0) * (1.0 if spatial is None else spatial[b])
        out = F.conv2d(x[b:b + 1] * channel[b:b + 1], weight, stride=stride, padding=k // 2, groups=groups)
        rows.append(out if filt is None else out * filt[b:b + 1])
    torch.testing.assert_close(layer(x, 2.0), torch.cat(rows), atol=1e-5, rtol=1e-4)


def _shared_pad(k: int = 3, groups: int = 1, kernels: int = 4, Lambda="both") -> tuple[ODConv2d, ODConv2d_PAD]:
    """An ODConv2d and an ODConv2d_PAD with the same kernels and attention heads."""
    plain = ODConv2d(8, 8 if groups > 1 else 12, k, padding=k // 2, groups=groups, kernel_num=kernels).eval()
    _randomise(plain, seed=2)
    pad = ODConv2d_PAD(8, plain.out_planes, k, padding=k // 2, groups=groups, kernel_num=kernels,
                       Lambda=Lambda).eval()
    _randomise(pad, seed=3)
    with torch.no_grad():
        pad.kernels_weights.copy_(plain.kernels_weights)
        pad.attention.fc.load_state_dict(plain.attention.fc.state_dict())
        pad.attention.bn.load_state_dict(plain.attention.bn.state_dict())
        if plain.attention.kernel_fc is not None:
            pad.attention.kernel_fc.load_state_dict(plain.attention.kernel_fc.state_dict())
        for head in pad.attention.heads:
            source = getattr(plain.attention, f"{head}_fc")
            getattr(pad.attention, f"{head}_fc_weight").copy_(source.weight)
            getattr(pad.attention, f"{head}_fc_bias").copy_(source.bias)
    return plain, pad


@pytest.mark.parametrize(("k", "groups", "kernels"), [(3, 1, 4), (3, 8, 4), (1, 1, 4), (1, 1, 1)])
def test_pad_with_every_position_dynamic_is_odconv(k, groups, kernels):
    """M = 1, static attentions 0 and every logit 0 (a new layer's values): ODConv-PAD computes ODConv."""
    plain, pad = _shared_pad(k, groups, kernels)
    with torch.no_grad():
        for name, p in pad.named_parameters():
            if name.endswith(("phi", "phi_d", "_att")):
                p.zero_()
    x = torch.randn(4, 8, 6, 6)
    torch.testing.assert_close(pad(x, 3.0), plain(x, 3.0), atol=1e-5, rtol=1e-5)


def test_pad_kernel_is_the_masked_combination():
    """W_hat = lambda_d M ⊙ s ⊙ sum_k a_k W_k + lambda_s (1 - M) ⊙ weight with lambda_d = 2 sigmoid(phi_d); an
    all-static mask gives the static conv lambda_s * weight between the attentions."""
    _, pad = _shared_pad()
    with torch.no_grad():
        pad.phi_d.fill_(0.7)
        pad.kernels_weights_mask.copy_((torch.rand(pad.kernels_weights_mask.shape) < 0.5).float())
    x = torch.randn(2, 8, 6, 6)
    channel, filt, spatial, kernel = pad.attention(x, 4.0)
    lambda_d = 2 * torch.sigmoid(torch.tensor(0.7))
    dynamic = torch.einsum("bk,koihw->boihw", kernel, pad.kernels_weights) * spatial[:, None, None]
    mask = pad.kernels_weights_mask
    expected = lambda_d * mask * dynamic + (2 - lambda_d) * (1 - mask) * pad.weight
    torch.testing.assert_close(pad.computational_kernel(kernel, spatial), expected, atol=1e-6, rtol=1e-5)
    with torch.no_grad():
        pad.kernels_weights_mask.zero_()
    static = F.conv2d(x * channel, (2 - lambda_d) * pad.weight[0], padding=1) * filt
    torch.testing.assert_close(pad(x, 4.0), static, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("k", "groups", "kernels", "Lambda"),
                         [(3, 1, 4, "both"), (3, 8, 4, None), (1, 1, 4, "s"), (1, 1, 1, "d"), (3, 1, 1, "both")])
def test_deployment_form_equals_training_form(k, groups, kernels, Lambda):
    _, pad = _shared_pad(k, groups, kernels, Lambda)
    with torch.no_grad():
        pad.kernels_weights_mask.copy_((torch.rand(pad.kernels_weights_mask.shape) < 0.3).float())
        for name, p in pad.named_parameters():
            if name.endswith(("phi", "phi_d")):
                p.normal_()
    deployed = DeployedODConv2d_PAD(pad)
    x = torch.randn(3, 8, 6, 6)
    torch.testing.assert_close(deployed(x, 2.5), pad(x, 2.5), atol=1e-5, rtol=1e-5)
    dynamic = int(pad.kernels_weights_mask.sum())
    assert deployed.dynamic_factors.shape == (kernels, dynamic)
    assert deployed.static_values.numel() == pad.num_positions - dynamic


@pytest.mark.parametrize(("k", "groups", "kernels", "kappa"),
                         [(3, 1, 4, 0.3), (3, 8, 4, 1.0), (1, 1, 4, 0.0), (1, 1, 1, 0.5), (3, 1, 1, 0.3)])
def test_static_form_equals_every_form(k, groups, kernels, kappa):
    """The constants-only form (temperature, scale factors and partition folded in) of ODConv, ODConv-PAD and the
    deployed layer computes their outputs, at the layer's temperature and at another."""
    plain, pad = _shared_pad(k, groups, kernels, "both")
    with torch.no_grad():
        pad.kernels_weights_mask.copy_((torch.rand(pad.kernels_weights_mask.shape) < kappa).float())
        for name, p in pad.named_parameters():
            if name.endswith(("phi", "phi_d")):
                p.normal_()
    x = torch.randn(3, 8, 6, 6)
    with torch.no_grad():
        for layer in (plain, pad, DeployedODConv2d_PAD(pad)):
            static = layer.static_form()
            assert isinstance(static, StaticODConv2d) and not any(isinstance(m, ODConv2d) for m in static.modules())
            torch.testing.assert_close(static(x), layer(x), atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(layer.static_form(2.0)(x), layer(x, 2.0), atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------------------------- models
def _tiny(type_name: str, **kwargs):
    extra = {"scale": 0.0625, "in_planes": 4} if "resnet" in type_name else {"width_mult": 0.35, "kernel_num": 4}
    torch.manual_seed(0)
    return build_model(type_name, num_classes=10, **extra, **kwargs)


def _partition(model, kappa: float = 0.3, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    iterative_mode_partition(model, imp_masks(model), lambda m, masks: rand_scores(m, masks, generator),
                             sparsity=kappa)


@pytest.mark.parametrize("type_name", ["od_resnet10_pad", "od_mobilenetv2_pad"])
def test_deployed_model_equals_training_model_and_counts(type_name):
    model = _tiny(type_name)
    _randomise(model, seed=4)
    _partition(model)
    model.eval()
    set_temperature(model, 3.0)
    compact = deploy(model)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(compact(x), model(x), atol=1e-5, rtol=1e-4)
    assert not pad_layers(compact) and len(pad_layers(model)) == len(od_layers(compact))
    assert {layer.temperature for _, layer in od_layers(compact)} == {3.0}
    # deployed params: counted from the masks == stored in the deployed model; about the analytic kappa value
    assert od_deployed_params(model) == sum(p.numel() for p in compact.parameters())
    positions = sum(layer.num_positions for _, layer in od_layers(model))
    assert abs(od_deployed_params(model) - od_deployed_params(model, 0.3)) <= 4  # kappa N is not an integer
    parts = od_param_breakdown(model)
    assert parts["dynamic_kernels"] == 4 * positions and parts["static_kernels"] == positions
    # MACs: the aggregation falls from K N to K D; the convolutions and attentions are the same
    dense, sparse = count_macs(model, x[:1]).total, count_macs(compact, x[:1]).total
    assert dense - od_aggregation_macs(model) == sparse - od_aggregation_macs(compact)
    assert od_aggregation_macs(model) == 4 * positions
    assert od_aggregation_macs(compact) == 4 * (positions - int((1 - 0.3) * positions))


def test_configurations():
    """ODConv-PAD: "deployed" (cheapest first) and "training"; the deployed form computes the training form's values,
    is refused in training mode and follows a parameter change; ODConv: "dynamic" only."""
    model = _tiny("od_mobilenetv2_pad")
    assert model.configurations() == ["deployed", "training"] and model.configuration == "training"
    _randomise(model, seed=5)
    _partition(model, 0.4)
    model.eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        training = model(x)
        model.set_configuration("deployed")
        assert {layer.form for _, layer in od_layers(model)} == {"deployed"}
        torch.testing.assert_close(model(x), training, atol=1e-5, rtol=1e-4)
        layer = pad_layers(model)[0][1]
        layer.phi_d.add_(1.0)  # the cached deployed form is rebuilt
        deployed = model(x)
        model.set_configuration("training")
        torch.testing.assert_close(deployed, model(x), atol=1e-5, rtol=1e-4)
    model.set_configuration("deployed")
    model.train()
    with pytest.raises(ConfigurationError, match="for inference"):
        model(x)
    with pytest.raises(ConfigurationError, match="has no configuration 'dynamic'"):
        model.set_configuration("dynamic")
    plain = _tiny("od_resnet10")
    assert plain.configurations() == ["dynamic"]
    plain.set_configuration("dynamic")
    assert deploy(model).configurations() == ["deployed"]


def _bn_statistics(model):
    """Non-trivial BatchNorm statistics (the attention BNs included) before .eval()."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 2.0)
    return model


@pytest.mark.parametrize("type_name", ["od_resnet10_pad", "od_mobilenetv2_pad", "od_resnet10"])
def test_to_static_export(type_name):
    """to_static at every configuration equals the model; its state dict loads into a fresh export of another model
    with the same partition; torch.export accepts it (ResNet); an unknown configuration is refused."""
    model = _bn_statistics(_tiny(type_name))
    pad = is_pad_model(model)
    if pad:
        _partition(model, 0.3)
    set_temperature(model, 5.0)
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        for name in model.configurations():
            model.set_configuration(name)
            exported = to_static(model, name)
            assert not any(isinstance(m, ODConv2d) for m in exported.modules())
            torch.testing.assert_close(exported(x), expected, atol=1e-5, rtol=1e-4)
        other = _bn_statistics(_tiny(type_name)).eval()
        set_temperature(other, 5.0)
        for (_, mine), (_, theirs) in zip(pad_layers(model), pad_layers(other), strict=True):
            theirs.kernels_weights_mask.copy_(mine.kernels_weights_mask)
        fresh = to_static(other, name)
        buffer = io.BytesIO()
        torch.save(exported.state_dict(), buffer)
        buffer.seek(0)
        fresh.load_state_dict(torch.load(buffer))
        torch.testing.assert_close(fresh(x), expected, atol=1e-5, rtol=1e-4)
    if type_name == "od_resnet10_pad":  # torch.export of the 52-layer MobileNetV2 takes a minute here
        program = torch.export.export(exported, (x,))
        with torch.no_grad():
            torch.testing.assert_close(program.module()(x), expected, atol=1e-5, rtol=1e-4)
    with pytest.raises(ConfigurationError, match="has no configuration"):
        to_static(model, "static")


def test_temperature_reaches_every_layer():
    model = _tiny("od_resnet10")
    assert model.temperature == 31.0 and {layer.temperature for _, layer in od_layers(model)} == {31.0}
    set_temperature(model, 4.0)
    assert {layer.temperature for _, layer in od_layers(model)} == {4.0}
    model.update_temperature(2.0)  # the original's method
    assert model.temperature == 2.0 and {layer.temperature for _, layer in od_layers(model)} == {2.0}
    x = torch.randn(2, 3, 16, 16)
    model.eval()
    with torch.no_grad():
        assert not torch.allclose(model(x), (set_temperature(model, 30.0), model(x))[1])


def test_snip_imp_on_odconv_pad():
    """SNIP scores |dL/dM| of every ODConv-PAD kernel position, then a global partition at kappa 0.4."""
    model = _tiny("od_resnet10_pad")
    masks = imp_masks(model)
    assert list(masks) == [name for name, _ in od_layers(model)]
    batch = (torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,)))
    loss = classification_loss(torch.nn.CrossEntropyLoss())
    scores = snip_scores(model, masks, [batch], loss)
    assert all(s.shape == masks[name].mask.shape and s.sum() > 0 for name, s in scores.items())
    ratios = iterative_mode_partition(model, masks, lambda m, ms: snip_scores(m, ms, [batch], loss), sparsity=0.4)
    dynamic = sum(m.mask.sum().item() for m in masks.values())
    total = sum(m.mask.numel() for m in masks.values())
    assert dynamic == total - math.floor(0.6 * total) and len(set(ratios.values())) > 1  # global: uneven per layer


# ------------------------------------------------------------------------------------------- end to end
def test_main_trains_odconv_pad_on_digits(tmp_path, capsys):
    """One epoch of the ODConv-PAD ResNet-10 through main.py (IMP at kappa 0.3 first), then the checkpoint
    evaluated by benchmarks/padnet_table.py (main.py -e and its counts); an ODConv MobileNetV2 config builds and
    partitions nothing."""
    config = str(CONFIGS / "digits_od_pad_resnet10_s0.0625.yml")
    common = ["--dataset", "digits", "--input-size", "16", "-j", "0", "-b", "128", "--device", "cpu", "--no-mlflow"]
    result = dyconv_main.main(dyconv_main.parse_args([
        *common, "--config_file", config, "--epochs", "1", "--temp_epoch", "1", "--lr-decay", "cos",
        "--pruner", "snip", "--sparsity", "0.3", "--prune_dataset_ratio", "1", "-c", str(tmp_path / "pad")]))
    assert result["dynamic_ratios"]["overall"] == pytest.approx(0.3, abs=1e-3)
    assert 10.0 < result["epochs"][0]["val"]["acc1"] <= 100.0
    state = torch.load(tmp_path / "pad" / "checkpoint.pth.tar", weights_only=False)["state_dict"]
    assert "layer1.layers.0.conv1.attention.channel_att" in state
    # benchmarks/padnet_table.py --weight: main.py -e, then the checkpoint's own counts
    table_args = padnet_table.get_args_parser().parse_args([
        "--weight", str(tmp_path / "pad" / "checkpoint.pth.tar"), "--config-file", config, "--dataset", "digits",
        "--input-size", "16", "-j", "0", "-b", "128"])
    evaluated = padnet_table.evaluate_checkpoint(table_args)
    assert evaluated["acc1"] == pytest.approx(result["epochs"][0]["val"]["acc1"])
    assert evaluated["dynamic_ratio"] == pytest.approx(0.3, abs=1e-3)
    assert evaluated["deployed_params"] < evaluated["stored_params"] and evaluated["aggregation_macs"] > 0
    assert not is_pad_model(build_model(**_config(CONFIGS / "digits_od_mobilenetv2_w0.35.yml")))


def _config(path: Path) -> dict:
    config = dyconv_main.load_model_config(str(path))
    return {"type_name": config["type"], **config["kwargs"]}


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*od_*.yml")), ids=lambda p: p.stem)
def test_shipped_od_configs_build(path):
    with torch.device("meta"):
        model = build_model(**_config(path))
    assert od_layers(model) and is_pad_model(model) == ("_pad" in path.stem)


# ------------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize(("kwargs", "message"), [
    ({"Lambda": "sometimes"}, "unknown Lambda"),
    ({"kernel_num": 0}, "kernel_num must be a positive number"),
    ({"width_multiplier": 0.5}, "has no kwarg width_multiplier"),
])
def test_bad_model_kwargs(kwargs, message):
    with pytest.raises(ModelConfigError, match=message):
        build_model("od_mobilenetv2_pad", **kwargs)


def test_bad_layer_arguments():
    with pytest.raises(ValueError, match="one square kernel size"):
        ODConv2d(4, 4, (3, 3))
    with pytest.raises(ValueError, match="must divide by groups"):
        ODConv2d_PAD(6, 4, 3, groups=4)


def test_bad_config_is_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.yml"
    bad.write_text("model: {type: od_resnet10_pad, kwargs: {num_classes: 10, Lambda: sometimes}}\n")
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: dyconv_main.main(dyconv_main.parse_args([
            "--dataset", "digits", "--input-size", "16", "--config_file", str(bad), "--device", "cpu", "--no-mlflow",
            "-c", str(tmp_path / "out")])), prog="main.py")
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and "unknown Lambda" in err and "\n" not in err
    assert isinstance(ModelConfigError("x"), UserError)
