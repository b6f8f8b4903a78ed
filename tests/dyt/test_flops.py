"""FLOPs: the original accounting reproduces the manifests; executed MACs follow the real masks."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from common.flops import count_macs
from dyt.flops import (
    base_flops,
    block_flops_table,
    complete_flops,
    executed_macs_per_sample,
    layer_rates,
    sample_flops,
    select_flops,
    uniform_rate_flops,
)
from dyt.models import build_model

FLOPS_KEY = "attn_matmul_counted(fused_attn=False)"
TABLE_KEY = "block_flops_dict_GFLOPs[t] (t = #tokens incl. cls through MLP; t=1..197)"
COMPLETE_KEY = "complete_model_forward_GFLOPs (all tokens through MLP = AdaptFormer-equivalent)"


def _vit_b(**kwargs):
    with torch.device("meta"):
        return build_model("vit_base_patch16_224_in21k", num_classes=100, **kwargs)


@pytest.mark.parametrize("variant,ffn", [("image_ffn64", 64), ("vtab_ffn16", 16), ("vtab_ffn8", 8)])
def test_original_accounting_matches_manifest(shared_dir, variant, ffn):
    manifest = json.loads((shared_dir / "reference" / "dyt" / f"manifest_dyt_vitb16_{variant}_c100.json").read_text())
    flops = manifest["flops"][FLOPS_KEY]
    model = _vit_b(ffn_num=ffn)
    assert block_flops_table(model)[1:] == pytest.approx(flops[TABLE_KEY], abs=1e-9)
    assert base_flops(model) == pytest.approx(flops["base_flops_no_blocks_GFLOPs(get_base_flops)"], abs=1e-12)
    assert complete_flops(model) == pytest.approx(flops[COMPLETE_KEY], abs=1e-9)
    for key, entry in flops["uniform_activation_rate_estimates"].items():
        assert uniform_rate_flops(model, float(key.removeprefix("r="))) == pytest.approx(entry["GFLOPs"], abs=1e-9)
    plain = manifest["flops"]["plain_timm_vit_base_patch16_224_GFLOPs(fused_attn=False)"]
    assert complete_flops(_vit_b(ffn_num=0, dispatch="none")) == pytest.approx(plain, abs=1e-9)


def test_headline_numbers():
    dyt64, dyt8 = _vit_b(ffn_num=64), _vit_b(ffn_num=8)
    assert round(complete_flops(_vit_b(ffn_num=0, dispatch="none")), 2) == 17.58
    assert round(complete_flops(_vit_b(ffn_num=64, dispatch="none")), 2) == round(complete_flops(dyt64), 2) == 17.81
    assert [round(uniform_rate_flops(dyt64, r), 2) for r in (0.9, 0.7, 0.5, 0.3)] == [16.68, 14.47, 12.26, 10.05]
    assert round(uniform_rate_flops(dyt8, 0.5), 2) == 12.06 and round(complete_flops(dyt8), 2) == 17.61


def test_variant_tables():
    mlp, attn, layer = (_vit_b(ffn_num=64, dispatch=d) for d in ("mlp", "attn", "layer"))
    complete = complete_flops(mlp)
    for model in (mlp, attn, layer):
        table = block_flops_table(model)
        assert all(a < b for a, b in zip(table[1:], table[2:], strict=False))
        assert base_flops(model) + 12 * table[197] == pytest.approx(complete)
    assert block_flops_table(layer)[98] < block_flops_table(mlp)[98]  # skipping attention too saves more
    with pytest.raises(ValueError, match="sample_flops"):
        block_flops_table(_vit_b(dispatch="attn_mlp"))


def _layernorm_and_dispatch_terms(model, batch: int) -> float:
    """What common.flops counts differently from fvcore: no LayerNorm, dispatchers at their real (N-1)·C."""
    n, c, layers = model.num_tokens, model.embed_dim, model.num_layers
    norms = 5 * c * n  # final norm; the blocks' norms depend on the masks and are added by the caller
    return batch * (c * (n - 1) * layers - norms)


def test_executed_macs_follow_the_real_masks():
    torch.manual_seed(0)
    model = build_model("vit_digits", num_classes=5, ffn_num=8).eval()
    with torch.no_grad():
        for blk in model.blocks:
            blk.mlp_token_select.mlp_head.weight.normal_(0, 3.0)
    images = torch.randn(6, 3, 32, 32)
    with torch.no_grad():
        _, aux = model(images)
    kept = aux["token_select"].flatten(2).sum(-1) + 1  # [B, L] tokens through LN2 + MLP
    analytic = select_flops(aux["token_select"], block_flops_table(model), base_flops(model)).sum().item() * 1e9
    c, n = model.embed_dim, model.num_tokens
    ln_blocks = (5 * c * n * model.num_layers * 6) + 5 * c * kept.sum().item()
    expected = analytic + _layernorm_and_dispatch_terms(model, 6) - ln_blocks
    loader = DataLoader(TensorDataset(images, torch.zeros(6, dtype=torch.long)), batch_size=4)
    executed = executed_macs_per_sample(model, loader)
    assert executed * 6 == pytest.approx(expected, rel=1e-9)
    model.execution = "masked"  # masking executes every token: the full cost
    masked = count_macs(model, images).total
    model.execution = "gather"
    assert masked > executed * 6 * 1.2 and model.execution == "gather" and not model.training


def test_layer_rates_and_attn_mlp_flops():
    select = torch.zeros(2, 3, 4, 1)
    select[:, 0] = 1
    select[0, 1, :2] = 1
    assert layer_rates(select).tolist() == [1.0, 0.25, 0.0]
    model = build_model("vit_digits", num_classes=5, ffn_num=8, dispatch="attn_mlp").eval()
    with torch.no_grad():
        _, aux = model(torch.randn(2, 3, 32, 32))
    flops = sample_flops(model, aux)
    assert flops.shape == (2,) and bool((flops <= complete_flops(model) + 1e-12).all())
    aux["attn_token_select"] = torch.ones_like(aux["attn_token_select"])
    aux["token_select"] = torch.ones_like(aux["token_select"])
    assert sample_flops(model, aux).tolist() == pytest.approx([complete_flops(model)] * 2)
