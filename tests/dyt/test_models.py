"""DyT models: state-dict layouts of the manifests, parameter counts, the dispatch variants, gather == masked, MoE,
and the token-mask controls."""

from __future__ import annotations

import json

import pytest
import torch

from common.errors import UserError
from dyt.models import MODELS, build_model, centre_mask, gumbel_sigmoid

MANIFESTS = {"image_ffn64": (64, 0.1), "vtab_ffn16": (16, 1.0), "vtab_ffn8": (8, 1.0)}
VARIANTS = ("mlp", "attn", "attn_mlp", "layer")


def decisive_model(dispatch: str = "mlp", seed: int = 0, **kwargs):
    """A ``vit_digits`` model with non-zero adapters and dispatchers whose logits are far from 0 (about half the
    tokens kept), so that no decision flips on float noise."""
    torch.manual_seed(seed)
    model = build_model("vit_digits", num_classes=5, ffn_num=8, dispatch=dispatch, **kwargs)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "token_select.mlp_head.weight" in name:
                param.normal_(0, 3.0)
            elif "up_proj.weight" in name:
                param.normal_(0, 0.05)
    return model


@pytest.mark.parametrize("variant", MANIFESTS)
def test_vit_b_state_dict_matches_manifest(shared_dir, variant):
    manifest = json.loads((shared_dir / "reference" / "dyt" / f"manifest_dyt_vitb16_{variant}_c100.json").read_text())
    ffn, scale = MANIFESTS[variant]
    with torch.device("meta"):  # shapes only: no time spent on initialising 86M weights
        model = build_model("vit_base_patch16_224_in21k", num_classes=100, ffn_num=ffn, adapter_scale=scale)
    ours = [(k, list(v.shape)) for k, v in model.state_dict().items()]
    assert ours == [(k, list(s)) for k, s in manifest["state_dict"]]
    assert sum(p.numel() for p in model.parameters()) == manifest["num_params"]
    counts = manifest["trainable_params"]
    adapters = sum(p.numel() for n, p in model.named_parameters() if ".adaptmlp." in n)
    dispatchers = sum(p.numel() for n, p in model.named_parameters() if "token_select" in n)
    assert (adapters, dispatchers) == (counts["adapters"], counts["dispatchers"]) == ({64: 1_189_632, 16: 304_320,
                                                                                       8: 156_768}[ffn], 9_228)
    assert model.num_layers == 12 and model.pretrained_cfg["mean"] == model.pretrained_cfg["std"] == (0.5,) * 3


def test_factories_and_bad_options():
    assert set(MODELS) >= {"vit_base_patch16_224_in21k", "vit_tiny_d4_e192", "vit_digits"}
    digits = build_model("vit_digits", num_classes=5)
    assert digits.num_tokens == 65 and digits.num_layers == 6 and digits.pretrained_cfg["input_size"] == (3, 32, 32)
    assert build_model("vit_digits", img_size=48).num_tokens == 145
    for kwargs in ({"dispatch": "heads"}, {"moe_router": "global", "moe_experts": 2}, {"ffn_num": 0, "moe_experts": 2}):
        with pytest.raises(UserError):
            build_model("vit_digits", **kwargs)
    with pytest.raises(UserError, match="unknown model"):
        build_model("vit_huge")
    with pytest.raises(UserError, match="execution"):
        digits.execution = "sparse"


def test_adaptformer_and_plain_have_no_dispatcher_and_adapter_starts_at_zero():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    plain = build_model("vit_digits", num_classes=5, ffn_num=0, dispatch="none").eval()
    adapt = build_model("vit_digits", num_classes=5, ffn_num=8, dispatch="none").eval()
    assert not any("token_select" in k or "adaptmlp" in k for k in plain.state_dict())
    assert not any("token_select" in k for k in adapt.state_dict())
    adapt.load_state_dict(plain.state_dict(), strict=False)
    with torch.no_grad():
        out, aux = adapt(x)
        torch.testing.assert_close(out, plain(x)[0])  # zero-initialised up projection: the adapter adds 0
    assert aux["token_select"].shape == (2, 6, 64, 1) and bool((aux["token_select"] == 1).all())
    assert aux["token_logits"] is None


def test_gumbel_sigmoid_straight_through():
    logits = torch.tensor([[-20.0, -0.1, 0.1, 20.0]], requires_grad=True)
    hard = gumbel_sigmoid(logits, tau=5, training=False)
    assert hard.tolist() == [[0.0, 0.0, 1.0, 1.0]]
    hard.sum().backward()
    torch.testing.assert_close(logits.grad, torch.sigmoid(logits) * (1 - torch.sigmoid(logits)))
    torch.manual_seed(0)
    noisy = gumbel_sigmoid(torch.zeros(20000), tau=5, training=True)
    assert set(noisy.unique().tolist()) == {0.0, 1.0} and abs(noisy.mean().item() - 0.5) < 0.02


@pytest.mark.parametrize("dispatch", VARIANTS)
def test_train_mode_masks_and_gradients(dispatch):
    model = decisive_model(dispatch).train()
    out, aux = model(torch.randn(3, 3, 32, 32))
    assert out.shape == (3, 5) and aux["token_select"].shape == aux["token_logits"].shape == (3, 6, 64, 1)
    assert set(aux["token_select"].unique().tolist()) <= {0.0, 1.0}
    (out.square().mean() + aux["token_select"].mean()).backward()
    for name, param in model.named_parameters():
        if "token_select" in name:
            assert param.grad is not None and param.grad.abs().sum() > 0, name  # straight-through reaches them
    if dispatch == "attn_mlp":
        assert aux["attn_token_select"].shape == (3, 6, 64, 1)


@pytest.mark.parametrize("dispatch", VARIANTS)
@pytest.mark.parametrize("batch", [1, 2, 5])
def test_gather_equals_masked(dispatch, batch):
    model = decisive_model(dispatch, seed=batch).eval()
    x = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(batch))
    with torch.no_grad():
        model.execution = "masked"
        masked, aux_masked = model(x)
        model.execution = "gather"
        gathered, aux_gather = model(x)
    rate = aux_masked["token_select"].mean().item()
    assert 0.2 < rate < 0.8
    torch.testing.assert_close(aux_gather["token_select"], aux_masked["token_select"], rtol=0, atol=0)
    torch.testing.assert_close(gathered, masked, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dispatch", VARIANTS)
def test_gather_with_all_skipped_and_none_skipped_layers(dispatch):
    model = decisive_model(dispatch).eval()
    with torch.no_grad():
        for i, blk in enumerate(model.blocks):  # layer 0 keeps everything, layer 1 only CLS, others decide
            for sel in (blk.mlp_token_select, blk.attn_token_select, blk.layer_token_select):
                if sel is not None and i < 2:
                    sel.mlp_head.weight.zero_()
                    sel.mlp_head.bias.fill_(10.0 if i == 0 else -10.0)
        x = torch.randn(4, 3, 32, 32)
        model.execution = "masked"
        masked, aux = model(x)
        model.execution = "gather"
        gathered, _ = model(x)
    rates = aux["token_select"].mean(dim=(0, 2, 3))
    assert rates[0] == 1 and rates[1] == 0
    torch.testing.assert_close(gathered, masked, rtol=1e-5, atol=1e-5)


def test_complete_model_ignores_masks():
    model = decisive_model("mlp").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        complete, aux = model(x, complete_model=True)
        for blk in model.blocks:
            blk.mlp_token_select.mlp_head.bias.fill_(100.0)  # keep everything
        kept_all, _ = model(x)
    assert aux["token_select"].mean() < 0.9  # the dispatchers still run and report their masks
    torch.testing.assert_close(complete, kept_all)


def test_layer_dispatch_skips_whole_block_for_skipped_tokens():
    model = decisive_model("layer").eval()
    x = torch.randn(1, 3, 32, 32)
    blk = model.blocks[0]
    with torch.no_grad():
        tokens = torch.cat((model.cls_token, model.patch_embed(x)), dim=1) + model.pos_embed
        out, masks = blk(tokens)
        skipped = masks["layer"][0][0, :, 0] == 0
        adapter_only = tokens + blk.adaptmlp(tokens)
    assert skipped.any()
    torch.testing.assert_close(out[0, skipped], adapter_only[0, skipped])


@pytest.mark.parametrize("router", ["token", "sample"])
def test_moe_adapter_modes(router):
    torch.manual_seed(0)
    kwargs = dict(num_classes=5, ffn_num=8, moe_experts=3, moe_router=router)
    summed = build_model("vit_digits", moe_merge=False, **kwargs)
    merged = build_model("vit_digits", moe_merge=True, **kwargs)
    merged.load_state_dict(summed.state_dict())
    assert "blocks.0.adaptmlp.router.weight" in summed.state_dict()
    assert "blocks.0.adaptmlp.experts.2.up_proj.weight" in summed.state_dict()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        for name, param in summed.named_parameters():
            if "up_proj" in name or "down_proj.bias" in name or "router" in name:
                param.normal_(0, 0.5)
        merged.load_state_dict(summed.state_dict())
        adapter = summed.blocks[0].adaptmlp.eval()
        tokens = torch.randn(2, 7, 192)
        alpha = adapter.route(tokens)
        expected = sum(alpha[..., i:i + 1] * expert.eval()(tokens) for i, expert in enumerate(adapter.experts))
        torch.testing.assert_close(adapter(tokens), expected * adapter.scale, rtol=1e-5, atol=1e-5)
        merged_adapter = merged.blocks[0].adaptmlp.eval()
        assert not torch.allclose(merged_adapter(tokens), adapter(tokens), atol=1e-4)  # they differ through the ReLU
        single = merged_adapter.experts[0]
        for expert in merged_adapter.experts[1:]:  # identical experts: merging changes nothing
            expert.load_state_dict(single.state_dict())
        for expert in adapter.experts[1:]:
            expert.load_state_dict(adapter.experts[0].state_dict())
        torch.testing.assert_close(merged_adapter(tokens), adapter(tokens), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(adapter(tokens), single(tokens) * adapter.scale, rtol=1e-5, atol=1e-5)
    summed.train()
    out, aux = summed(x)
    out.sum().backward()
    assert summed.blocks[0].adaptmlp.router.weight.grad.abs().sum() > 0


def test_token_mask_controls():
    assert centre_mask(16, 0.25).view(4, 4).tolist() == [[0, 0, 0, 0], [0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0]]
    assert centre_mask(36, 0.5).sum() == 18
    model = decisive_model()
    x = torch.randn(64, 3, 32, 32)
    model.set_token_mask("centre", 0.5)
    for training in (True, False):
        masks = model.train(training)(x)[1]["token_select"][..., 0]  # [B, L, 64]
        assert torch.equal(masks, centre_mask(64, 0.5).expand_as(masks))
    model.set_token_mask("random", 0.3)
    model.eval()
    assert model(x)[1]["token_select"].mean().item() == pytest.approx(0.3, abs=0.02)
    with pytest.raises(UserError, match="needs dispatchers"):
        build_model("vit_digits", ffn_num=8, dispatch="none").set_token_mask("random", 0.5)
    with pytest.raises(UserError, match="unknown token mask"):
        model.set_token_mask("fixed", 0.5)
