"""DyT's static exports (``dyt.export.to_static``): the same outputs as the dynamic model in every configuration,
the state-dict round trip, ``torch.export`` (unbacked token counts for ``"dispatch"``) and the refusals."""

from __future__ import annotations

import io

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer as TimmViT

from common.configurations import ConfigurationError
from dyt.export import to_static
from dyt.models import MODELS, TokenSelect, set_dispatch_rate

EXTREMES = ("dispatch", "rate=0.3", "rate=0.9", "all tokens")


def build(**kwargs):
    """``vit_digits_tiny`` (24 px, 36 patch tokens, width 48) with 2 blocks, to keep ``torch.export`` short."""
    return MODELS["vit_digits_tiny"](num_classes=5, ffn_num=8, depth=2, **kwargs)


def trained_like(dispatch: str = "mlp", seed: int = 0, **kwargs):
    """A small eval model with non-zero adapters and dispatchers calibrated to keep about half of the tokens."""
    torch.manual_seed(seed)
    model = build(dispatch=dispatch, **kwargs)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "up_proj.weight" in name:
                param.normal_(0, 0.05)
    x = torch.randn(5, 3, 24, 24)
    set_dispatch_rate(model, x, 0.5)
    return model.eval(), x


def dynamic_output(model, name: str, x: torch.Tensor) -> torch.Tensor:
    model.set_configuration(name)
    with torch.no_grad():
        return model(x)[0]


@pytest.mark.parametrize("dispatch", ["mlp", "attn", "attn_mlp", "layer"])
def test_outputs_equal_the_dynamic_model(dispatch):
    model, x = trained_like(dispatch)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for name in model.configurations():
        static = to_static(model, name)
        assert isinstance(static, TimmViT) and not static.training
        assert not any(isinstance(m, TokenSelect) for m in static.modules())
        expected = dynamic_output(model, name, x)
        with torch.no_grad():
            torch.testing.assert_close(static(x), expected, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(static(x[:1]), expected[:1], rtol=1e-5, atol=1e-5)  # batch 1
        dispatchers = {k for k in state if "token_select" in k}
        assert set(static.state_dict()) == set(state) - (dispatchers if name == "all tokens" else set())
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())  # the model is not modified


def test_dispatch_with_layers_that_keep_everything_or_only_cls():
    model, x = trained_like("attn_mlp")
    with torch.no_grad():
        for i, block in enumerate(model.blocks[:2]):  # block 0 keeps every token, block 1 only CLS
            for select in (block.mlp_token_select, block.attn_token_select):
                select.mlp_head.weight.zero_()
                select.mlp_head.bias.fill_(1.0 if i == 0 else -1.0)
    expected = dynamic_output(model, "dispatch", x)
    with torch.no_grad():
        torch.testing.assert_close(to_static(model, "dispatch")(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("moe", [dict(moe_router="sample", moe_merge=True), dict(moe_router="token", moe_merge=False)])
def test_moe_adapter(moe):
    model, x = trained_like(moe_experts=3, **moe)
    for name in ("dispatch", "rate=0.5", "all tokens"):
        with torch.no_grad():
            torch.testing.assert_close(to_static(model, name)(x), dynamic_output(model, name, x), rtol=1e-5,
                                       atol=1e-5)


@pytest.mark.parametrize("name", EXTREMES)
def test_state_dict_round_trip(name):
    model, x = trained_like("mlp", adapter_scale="learnable_scalar")
    with torch.no_grad():
        model.blocks[0].adaptmlp.scale.fill_(0.3)
    static = to_static(model, name)
    buffer = io.BytesIO()
    torch.save(static.state_dict(), buffer)
    fresh = to_static(build(dispatch="mlp", adapter_scale="learnable_scalar").eval(), name)
    with torch.no_grad():
        assert not torch.allclose(fresh(x), static(x))
        buffer.seek(0)
        fresh.load_state_dict(torch.load(buffer, weights_only=True))
        torch.testing.assert_close(fresh(x), static(x), rtol=0, atol=0)


@pytest.mark.parametrize(("dispatch", "name"), [("mlp", "dispatch"), ("attn", "dispatch"), ("layer", "rate=0.5"),
                                                ("mlp", "all tokens")])
def test_torch_export(dispatch, name):
    model, x = trained_like(dispatch)
    program = torch.export.export(to_static(model, name), (x,))
    other = torch.randn(5, 3, 24, 24)  # other images: other token counts for "dispatch"
    model.set_configuration(name)
    for images in (x, other):
        with torch.no_grad():
            torch.testing.assert_close(program.module()(images), model(images)[0], rtol=1e-5, atol=1e-5)


def test_refusals():
    model, _ = trained_like()
    with pytest.raises(ConfigurationError, match="no configuration 'rate=0.4'"):
        to_static(model, "rate=0.4")
    with pytest.raises(ConfigurationError, match="evaluation mode"):
        to_static(model.train(), "dispatch")
    model.eval().set_token_mask("random", 0.5)
    with pytest.raises(ConfigurationError, match="random token mask"):
        to_static(model, "rate=0.5")
    assert isinstance(to_static(model, "all tokens"), TimmViT)  # the control masks play no part there
