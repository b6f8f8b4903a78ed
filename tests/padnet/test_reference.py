"""Equivalence with the original PAD-Net code (``../shared/reference/padnet/ref_*.pt``, spec g): the original's
weights load strictly into our models and give its logits at every temperature, Lambda mode and mask (atol
1e-5), and its SNIP scores and global IMP masks."""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

from padnet.dyconv import imp_masks
from padnet.dyconv.layers import pad_layers, set_temperature
from padnet.dyconv.models import build_model
from padnet.imp import classification_loss, iterative_mode_partition, mode_mask_from_scores, snip_scores

REFS = {
    "ref_pad_resnet10_s025": ("DyResNet10_PAD", {"num_classes": 10, "scale": 0.25, "Lambda": "both"}),
    "ref_dy_resnet10_s025": ("DyResNet10", {"num_classes": 10, "scale": 0.25}),
    "ref_pad_mobilenetv2_w0.35": ("Dymobilenetv2_PAD", {"num_classes": 1000, "width_multiplier": 0.35}),
    "ref_dy_mobilenetv2_w0.35": ("Dymobilenetv2", {"num_classes": 1000, "width_multiplier": 0.35}),
}
PAD_REFS = [name for name in REFS if "_pad_" in name]
ATOL = 1e-5


@functools.cache
def _load(path: str) -> dict:
    return torch.load(path, weights_only=True)


@pytest.fixture(scope="module")
def reference_dir(shared_dir):
    return shared_dir / "reference" / "padnet"


def _model(reference_dir, name):
    ref = _load(str(reference_dir / f"{name}.pt"))
    type_name, kwargs = REFS[name]
    model = build_model(type_name, **kwargs)
    model.load_state_dict(ref["state_dict"], strict=True)
    return model.eval(), ref


def _original_label_smoothing(num_classes: int, smoothing: float = 0.1) -> nn.Module:
    """The original ``LabelSmoothingLoss`` (``s / (C - 1)`` off the label) as torch's ``label_smoothing``."""
    return nn.CrossEntropyLoss(label_smoothing=smoothing * num_classes / (num_classes - 1))


@pytest.mark.parametrize("name", list(REFS))
def test_outputs_at_each_temperature(reference_dir, name):
    model, ref = _model(reference_dir, name)
    assert model.temperature == 31  # the original's initial self.temperature
    with torch.no_grad():
        for key, temperature in (("output", 1.0), ("output_T31", 31.0), ("output_T30", 30.0)):
            set_temperature(model, temperature)
            torch.testing.assert_close(model(ref["input"]), ref[key], atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", PAD_REFS)
def test_pad_lambda_modes_and_masks(reference_dir, name):
    model, ref = _model(reference_dir, name)
    layers = [layer for _, layer in pad_layers(model)]
    assert {layer.Lambda for layer in layers} == {ref["Lambda_as_built"]}
    set_temperature(model, 1.0)
    with torch.no_grad():
        for Lambda, key in ((None, "output_lambda_none_T1"), ("both", "output_lambda_both_T1")):
            for layer in layers:
                layer.Lambda = Lambda
            torch.testing.assert_close(model(ref["input"]), ref[key], atol=ATOL, rtol=0)
        for layer in layers:
            layer.Lambda = ref["Lambda_as_built"]
        for value, key in ((1.0, "output_mask_all_dynamic_T1"), (0.0, "output_mask_all_static_T1")):
            for layer in layers:
                layer.kernels_weights_mask.fill_(value)
            torch.testing.assert_close(model(ref["input"]), ref[key], atol=ATOL, rtol=0)


def _snip(model, ref, num_classes):
    masks = imp_masks(model)
    batch = (ref["input"], ref["snip"]["labels"])
    return masks, functools.partial(snip_scores, batches=[batch],
                                    loss_fn=classification_loss(_original_label_smoothing(num_classes)))


@pytest.mark.parametrize("name", PAD_REFS)
def test_snip_scores_and_global_masks(reference_dir, name):
    model, ref = _model(reference_dir, name)
    snip, num_classes = ref["snip"], REFS[name][1]["num_classes"]
    masks, score_fn = _snip(model, ref, num_classes)
    scores = score_fn(model, masks)  # eval mode, temperature 31 as built
    names = list(masks)
    assert names == [key.removesuffix(".kernels_weights_mask") for key in snip["normalized_scores"]]
    for layer in names:
        expected = snip["normalized_scores"][f"{layer}.kernels_weights_mask"]
        torch.testing.assert_close(scores[layer], expected, atol=1e-9, rtol=1e-4)
    assert all(m.mask.grad is None and not m.mask.requires_grad for m in masks.values())
    assert all(p.grad is None for p in model.parameters())
    flat = torch.cat([scores[n].flatten() for n in names])
    for kappa, expected in snip["global_masks_after_one_shot"].items():
        expected_flat = torch.cat([expected[f"{n}.kernels_weights_mask"].flatten() for n in names])
        assert torch.equal(mode_mask_from_scores(flat, float(kappa), tie_break=False), expected_flat)
        ours = mode_mask_from_scores(flat, float(kappa))
        # tie-breaking only adds tied (here zero-score) positions, up to the exact count
        assert int(ours.sum()) == flat.numel() - int((1 - float(kappa)) * flat.numel())
        assert bool((ours >= expected_flat).all())


@pytest.mark.parametrize("kappa", ["0.3", "0.5"])
def test_one_shot_imp_reproduces_reference_masks(reference_dir, kappa):
    name = "ref_pad_resnet10_s025"
    model, ref = _model(reference_dir, name)
    masks, score_fn = _snip(model, ref, 10)
    iterative_mode_partition(model, masks, score_fn, sparsity=float(kappa), tie_break=False)
    expected = ref["snip"]["global_masks_after_one_shot"][kappa]
    for layer, m in masks.items():
        assert torch.equal(m.mask, expected[f"{layer}.kernels_weights_mask"]), layer
