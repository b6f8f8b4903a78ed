"""DyT's inference configurations (``configurations`` / ``set_configuration``) and the dispatcher calibration of
untrained models (``set_dispatch_rate``)."""

from __future__ import annotations

import pytest
import torch

from common.configurations import Configurable, ConfigurationError
from common.errors import UserError
from dyt.models import DISPATCH_RATES, build_model, kept_tokens, set_dispatch_rate

NUM_PATCHES = 36  # vit_digits_tiny: 24 px, patch 4


def calibrated(dispatch: str = "mlp", rate: float = 0.5, **kwargs):
    """A small model whose untrained dispatchers keep about ``rate`` of the tokens of its images."""
    torch.manual_seed(0)
    model = build_model("vit_digits_tiny", num_classes=5, ffn_num=8, dispatch=dispatch, **kwargs)
    x = torch.randn(6, 3, 24, 24)
    set_dispatch_rate(model, x, rate)
    return model.eval(), x


def test_names_and_unknown_names():
    model, _ = calibrated()
    assert isinstance(model, Configurable)
    assert model.configurations() == ["dispatch", "rate=0.3", "rate=0.5", "rate=0.7", "rate=0.9", "all tokens"]
    assert model.configuration == "dispatch"
    adaptformer = build_model("vit_digits_tiny", num_classes=5, ffn_num=8, dispatch="none")
    assert adaptformer.configurations() == ["all tokens"] and adaptformer.configuration == "all tokens"
    for bad in ("rate=0.4", "masked", "All tokens"):
        with pytest.raises(ConfigurationError, match="choose one of dispatch, rate=0.3"):
            model.set_configuration(bad)
    with pytest.raises(UserError, match="choose one of all tokens"):
        adaptformer.set_configuration("dispatch")


def test_kept_tokens():
    assert [kept_tokens(196, r) for r in DISPATCH_RATES] == [59, 98, 138, 177]
    assert (kept_tokens(10, 0.3), kept_tokens(10, 0.7), kept_tokens(36, 1.0), kept_tokens(36, 0.0)) == (3, 7, 36, 0)


def test_dispatch_keeps_positive_logits_gathered():
    model, x = calibrated()
    model.execution = "masked"
    model.set_configuration("dispatch")
    assert model.execution == "gather"
    with torch.no_grad():
        logits, aux = model(x)
        model.execution = "masked"
        masked, _ = model(x)
    assert torch.equal(aux["token_select"], (aux["token_logits"] > 0).float())
    torch.testing.assert_close(logits, masked, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dispatch", ["mlp", "attn_mlp", "layer"])
@pytest.mark.parametrize("name", ["rate=0.3", "rate=0.9"])
def test_fixed_rate_keeps_the_top_logits_of_every_sample(dispatch, name):
    model, x = calibrated(dispatch)
    model.set_configuration(name)
    with torch.no_grad():
        _, aux = model(x)
    k = kept_tokens(NUM_PATCHES, float(name.removeprefix("rate=")))
    for select, logits in [(aux["token_select"], aux["token_logits"])] + (
            [(aux["attn_token_select"], aux["attn_token_logits"])] if dispatch == "attn_mlp" else []):
        select, logits = select[..., 0], logits[..., 0]  # [B, L, N-1]
        assert bool((select.sum(-1) == k).all())  # the same count in every sample and layer
        lowest_kept = logits.masked_fill(select == 0, float("inf")).amin(-1)
        highest_skipped = logits.masked_fill(select == 1, float("-inf")).amax(-1)
        assert bool((lowest_kept >= highest_skipped).all())


def test_all_tokens_is_the_complete_model_without_dispatchers():
    model, x = calibrated()
    calls = []
    for select in model.token_selects():
        select.register_forward_hook(lambda *args: calls.append(1))
    with torch.no_grad():
        dispatched, aux = model(x)
        complete, _ = model(x, complete_model=True)
        model.set_configuration("all tokens")
        calls.clear()
        all_tokens, aux_all = model(x)
    assert 0.2 < aux["token_select"].mean() < 0.8
    torch.testing.assert_close(all_tokens, complete, rtol=0, atol=0)
    assert not torch.allclose(all_tokens, dispatched, atol=1e-4)
    assert not calls and bool((aux_all["token_select"] == 1).all()) and aux_all["token_logits"] is None


def test_training_ignores_the_configuration():
    model, x = calibrated()
    outputs = []
    for name in ("dispatch", "rate=0.3", "all tokens"):
        model.set_configuration(name)
        model.train()
        torch.manual_seed(1)  # same Gumbel noise and adapter dropout
        outputs.append(model(x))
    for logits, aux in outputs[1:]:
        torch.testing.assert_close(logits, outputs[0][0], rtol=0, atol=0)
        assert torch.equal(aux["token_select"], outputs[0][1]["token_select"])
    assert aux["token_select"].sum(-2).unique().numel() > 1  # Gumbel masks, not a fixed count


@pytest.mark.parametrize("dispatch", ["mlp", "attn", "layer"])
@pytest.mark.parametrize("rate", [0.3, 0.7])
def test_set_dispatch_rate_reaches_the_rate_on_its_images(dispatch, rate):
    torch.manual_seed(0)
    model = build_model("vit_digits_tiny", num_classes=5, ffn_num=8, dispatch=dispatch)
    model.set_configuration("rate=0.5")
    model.execution = "masked"
    x = torch.randn(8, 3, 24, 24)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    set_dispatch_rate(model, x, rate)
    assert model.training and model.configuration == "rate=0.5" and model.execution == "masked"  # restored
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all("token_select.mlp_head" in k for k in changed)
    model.eval().set_configuration("dispatch")
    with torch.no_grad():
        layer_rates = model(x)[1]["token_select"].mean(dim=(0, 2, 3))
        other = model(torch.randn(8, 3, 24, 24))[1]["token_select"]
    torch.testing.assert_close(layer_rates, torch.full_like(layer_rates, rate), atol=1 / 36, rtol=0)
    assert 0 < other.mean() < 1  # on other images the choice still depends on the input


def test_set_dispatch_rate_refusals():
    x = torch.randn(2, 3, 24, 24)
    with pytest.raises(UserError, match="dispatch='none'"):
        set_dispatch_rate(build_model("vit_digits_tiny", dispatch="none"), x, 0.5)
    with pytest.raises(UserError, match=r"\[0, 1\]"):
        set_dispatch_rate(build_model("vit_digits_tiny"), x, 1.5)
