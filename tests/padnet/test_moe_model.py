"""MoE / PAD-MoE BERT: parameter counts (spec c), key layout, upcycling, aux-loss collection and IMP on the masks."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from padnet.imp import ModeMask, NoSignalError
from padnet.moe.imp import mode_partition, moe_snip_scores, moe_task_loss, pad_moe_masks
from padnet.moe.layers import MoE, PadMoE
from padnet.moe.modeling import ffn_linears, moe_aux_loss, moe_layers, moefy

BERT_BASE = 109_483_778


def _num_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _tiny_bert(seed: int = 0) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=16, num_labels=2)
    return BertForSequenceClassification(config).eval()


def _batch(seed: int = 1, size: int = 4, labels: bool = True) -> dict:
    g = torch.Generator().manual_seed(seed)
    batch = {"input_ids": torch.randint(0, 50, (size, 7), generator=g),
             "attention_mask": torch.ones(size, 7, dtype=torch.long)}
    if labels:
        batch["labels"] = torch.randint(0, 2, (size,), generator=g)
    return batch


def _diverged(model: torch.nn.Module, steps: int = 2) -> torch.nn.Module:
    """A few fully dynamic AdamW steps, so that the upcycled experts move away from the static weight (what the
    training script does before IMP)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    was_training = model.training
    model.train()
    for step in range(steps):
        moe_task_loss(model, _batch(10 + step)).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return model.train(was_training)


@pytest.mark.parametrize("use_moe, pos_moe, expected", [
    ("none", "both", BERT_BASE),
    ("MoE", "both", 506_905_394),
    ("MoE", "out", 308_319_002),
    ("PadMoE", "both", 563_574_602),
    ("PadMoE", "out", 336_639_782),
])
def test_bert_base_parameter_counts(use_moe, pos_moe, expected):
    """Spec c: MoE both 506.9M, out 308.3M; PadMoE both 563.6M (+56.6M mask entries), out 336.6M (E=8)."""
    with torch.device("meta"):
        model = BertForSequenceClassification(BertConfig(num_labels=2))
    moefy(model, use_moe, n_experts=8, k=2, pos_moe=pos_moe)
    assert _num_params(model) == expected
    masks = sum(b.numel() for name, b in model.named_buffers() if name.endswith(".mask"))
    assert masks == {("PadMoE", "both"): 56_623_104, ("PadMoE", "out"): 28_311_552}.get((use_moe, pos_moe), 0)


def test_state_dict_keys_follow_the_original():
    model = moefy(_tiny_bert(), "PadMoE", n_experts=3, k=2, pos_moe="both")
    keys = set(model.state_dict())
    for part in ("intermediate", "output"):
        prefix = f"bert.encoder.layer.1.{part}.dense."
        assert {prefix + s for s in ("w_gate", "w_noise", "mean", "std", "phi", "static_fc.weight", "static_fc.bias",
                                     "mask", "experts.2.dense.weight", "experts.2.dense.bias")} <= keys
        assert prefix + "weight" not in keys
    assert "bert.encoder.layer.0.attention.output.dense.weight" in keys
    assert model.config.use_moe == "PadMoE" and model.config.n_experts == 3


def test_ffn_linears_select_by_pos_moe():
    model = _tiny_bert()
    assert [n for n, _, _ in ffn_linears(model, "int")] == [f"bert.encoder.layer.{i}.intermediate.dense"
                                                            for i in range(2)]
    assert [n for n, _, _ in ffn_linears(model, "out")] == [f"bert.encoder.layer.{i}.output.dense" for i in range(2)]
    assert len(ffn_linears(model, "both")) == 4


@pytest.mark.parametrize("use_moe, pos_moe, Lambda", [
    ("MoE", "both", "both"), ("MoE", "int", "both"), ("PadMoE", "both", "both"), ("PadMoE", "out", "none"),
    ("PadMoE", "both", "s"), ("PadMoE", "both", "d"),
])
def test_upcycled_moe_bert_reproduces_the_dense_bert(use_moe, pos_moe, Lambda):  # noqa: N803
    """Experts (and W_static) start as the pretrained FFN and the gates sum to 1, so in eval the MoE BERT computes
    the dense BERT's logits; a random router and a random mask do not change that."""
    dense = _tiny_bert()
    batch = _batch(labels=False)
    with torch.no_grad():
        expected, expected_logits = dense.bert(**batch).last_hidden_state, dense(**batch).logits
    model = moefy(dense, use_moe, n_experts=4, k=2, pos_moe=pos_moe, Lambda=Lambda).eval()
    for layer in moe_layers(model).values():
        torch.nn.init.normal_(layer.w_gate)
        if isinstance(layer, PadMoE):
            layer.mask.bernoulli_(torch.full_like(layer.mask, 0.5))
    with torch.no_grad():
        assert torch.allclose(model.bert(**batch).last_hidden_state, expected, atol=1e-5)
        assert torch.allclose(model(**batch).logits, expected_logits, atol=1e-6)


def test_released_forward_is_not_upcycling_invariant():
    """The released PadMoE adds W_static to every expert: with upcycled weights that doubles the FFN."""
    dense = _tiny_bert()
    batch = _batch(labels=False)
    with torch.no_grad():
        expected = dense.bert(**batch).last_hidden_state
        model = moefy(dense, "PadMoE", n_experts=2, k=2, pad_forward="released")
        assert not torch.allclose(model.bert(**batch).last_hidden_state, expected, atol=1e-2)


@pytest.mark.parametrize("pos_moe, layers", [("int", 2), ("out", 2), ("both", 4)])
def test_aux_loss_collected_for_every_pos_moe(pos_moe, layers):
    """The original dropped the aux loss unless pos_moe='both'; here every MoE layer contributes."""
    model = moefy(_tiny_bert(), "MoE", n_experts=4, k=2, pos_moe=pos_moe)
    assert moe_aux_loss(model) is None
    model(**_batch())
    per_layer = [m.aux_loss for m in moe_layers(model).values()]
    assert len(per_layer) == layers
    assert torch.allclose(moe_aux_loss(model), torch.stack(per_layer).sum())
    assert moe_aux_loss(model) > 0  # zero-init router in eval: all tokens on experts 0 and 1
    assert torch.allclose(moe_task_loss(model, _batch()), model(**_batch()).loss + moe_aux_loss(model))


def test_moefy_none_and_bad_arguments():
    model = _tiny_bert()
    assert moefy(model, "none") is model and not moe_layers(model)
    with pytest.raises(ValueError, match="use_moe"):
        moefy(model, "SMoE")
    with pytest.raises(ValueError, match="pos_moe"):
        moefy(model, "MoE", pos_moe="all")
    moefy(model, "MoE", n_experts=2)
    with pytest.raises(ValueError, match="already"):
        moefy(model, "MoE")
    with pytest.raises(ValueError, match="no BERT-style FFN"):
        moefy(torch.nn.Sequential(torch.nn.Linear(2, 2)), "MoE")


def test_moe_snip_scores_are_the_mask_gradient_normalised_by_sum_over_max():
    model = moefy(_tiny_bert(), "PadMoE", n_experts=3, k=2)
    for layer in moe_layers(model).values():
        torch.nn.init.normal_(layer.phi)
        torch.nn.init.normal_(layer.w_gate)
    masks = pad_moe_masks(model)
    assert all(isinstance(m, ModeMask) and len(m.dynamic) == 3 for m in masks.values())
    batches = [_batch(1), _batch(2)]
    scores = moe_snip_scores(model, masks, batches)
    assert not any(m.mask.requires_grad for m in masks.values())
    assert all(p.grad is None for p in model.parameters())  # gradients w.r.t. the masks only
    for m in masks.values():  # independent: accumulate .grad with backward, as the original did
        m.mask.requires_grad_(True)
    for b in batches:
        moe_task_loss(model, b).backward()
    raw = {n: m.mask.grad.abs() for n, m in masks.items()}
    flat = torch.cat([r.flatten() for r in raw.values()])
    norm = (flat / flat.max()).sum()
    for name, m in masks.items():
        m.mask.requires_grad_(False)
        assert torch.allclose(scores[name], raw[name] / norm, rtol=1e-4, atol=1e-12)


@pytest.mark.parametrize("pruner, sparsity, epochs, scope, schedule", [
    ("snip", 0.5, 1, "global", "exponential"),
    ("snip", 0.3, 2, "global", "linear"),
    ("snip", 0.3, 1, "local", "exponential"),
    ("rand", 0.1, 1, "global", "exponential"),
])
def test_imp_on_moe_masks_hits_kappa_exactly(pruner, sparsity, epochs, scope, schedule):
    model = _diverged(moefy(_tiny_bert(), "PadMoE", n_experts=3, k=2)).train()
    ratios = mode_partition(model, [_batch(1), _batch(2)], pruner, sparsity, epochs, schedule, scope)
    assert model.training  # the mode is restored
    masks = [m.mask for m in pad_moe_masks(model).values()]
    total = sum(m.numel() for m in masks)
    if scope == "global":
        assert sum(int(m.sum()) for m in masks) == total - int((1 - sparsity) * total)
    else:
        assert all(int(m.sum()) == m.numel() - int((1 - sparsity) * m.numel()) for m in masks)
    assert set(ratios) == set(pad_moe_masks(model))
    assert all(not m.requires_grad for m in masks)
    assert all(p.grad is None for p in model.parameters())


def test_imp_snip_keeps_the_positions_that_matter():
    """A mask entry whose switch changes the loss most stays dynamic: with W_static far from W_e in one layer only,
    that layer keeps more dynamic entries than the others."""
    model = moefy(_tiny_bert(), "PadMoE", n_experts=2, k=2)
    target = moe_layers(model)["bert.encoder.layer.0.output.dense"]
    with torch.no_grad():
        target.static_fc.weight.mul_(-20)
    ratios = mode_partition(model, [_batch(1), _batch(2), _batch(3)], "snip", 0.5)
    assert ratios["bert.encoder.layer.0.output.dense"] == max(ratios.values())
    assert ratios["bert.encoder.layer.0.output.dense"] > 0.5


def test_upcycled_pad_moe_has_no_signal_until_the_experts_diverge():
    """Upcycled experts equal the static weight, so dL/dM = g (lambda_d W_e - lambda_s W_static) is exactly 0:
    IMP refuses to partition by position. After a few fully dynamic steps the scores are non-zero, depend on the
    data, and the partition mixes dynamic and static entries within the layers."""
    model = moefy(_tiny_bert(), "PadMoE", n_experts=3, k=2)
    masks = pad_moe_masks(model)
    assert all(bool((s == 0).all()) for s in moe_snip_scores(model, masks, [_batch(1)]).values())
    with pytest.raises(NoSignalError, match="no signal"):
        mode_partition(model, [_batch(1)], "snip", 0.5)
    with pytest.raises(NoSignalError):
        mode_partition(model, [_batch(1)], "snip", 0.5, scope="local")
    assert all(bool(m.mask.all()) for m in masks.values())  # left fully dynamic

    _diverged(model)
    first = moe_snip_scores(model, masks, [_batch(1), _batch(2)])
    second = moe_snip_scores(model, masks, [_batch(3), _batch(4)])
    assert all(float(s.max()) > 0 for s in first.values())
    assert any(not torch.allclose(first[n], second[n]) for n in first)
    ratios = mode_partition(model, [_batch(1), _batch(2)], "snip", 0.5)
    assert sum(0 < r < 1 for r in ratios.values()) >= len(ratios) - 1  # not a split by layer position


def test_moe_layers_finds_both_kinds():
    model = moefy(_tiny_bert(), "MoE", n_experts=2)
    assert all(type(m) is MoE for m in moe_layers(model).values())
    assert pad_moe_masks(model) == {}
