"""MoE / PAD-MoE layers: equivalence with the original's ``layers.py`` and the router's properties."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from padnet.moe.layers import MoE, PadMoE, cv_squared


@pytest.fixture(scope="module")
def ref(shared_dir) -> dict:
    """``ref_moe_layers.pt``: MoE(16, 32), PadMoE(16, 32) (E=4, k=2, context, eval) and SingleExpert_Pad outputs."""
    return torch.load(shared_dir / "reference" / "padnet" / "ref_moe_layers.pt", weights_only=True)


def _close(a: torch.Tensor, b: torch.Tensor, atol: float = 1e-5) -> bool:
    return torch.allclose(a, b, atol=atol, rtol=0)


def test_moe_baseline_matches_reference(ref):
    r = ref["MoE_baseline"]
    layer = MoE(16, 32, n_experts=4, k=2).eval()
    layer.load_state_dict(r["state_dict"], strict=True)
    with torch.no_grad():
        out = layer(r["input"])
    assert out.shape == r["output"].shape
    assert _close(out, r["output"])
    assert _close(layer.aux_loss, r["aux_loss"])


def test_released_pad_moe_matches_reference(ref):
    r = ref["PadMoE_released"]
    layer = PadMoE(16, 32, n_experts=4, k=2, pad_forward="released").eval()
    layer.load_state_dict(r["state_dict"], strict=True)
    with torch.no_grad():
        out = layer(r["input"])
    assert _close(out, r["output"])
    assert _close(layer.aux_loss, r["aux_loss"])


@pytest.mark.parametrize("original, ours", [("both", "both"), ("s", "s"), ("d", "d"), ("p", "p"), ("none", "phi")])
def test_pad_expert_matches_single_expert_pad(ref, original, ours):
    """The paper's expert (``SingleExpert_Pad``) for every Lambda; the original's fall-through for the string
    'none' (2 sigmoid(phi) W_e, mask ignored) is our Lambda 'phi'."""
    r = ref["SingleExpert_Pad"]
    layer = PadMoE(16, 32, n_experts=1, k=1, Lambda=ours)
    with torch.no_grad():
        layer.experts[0].dense.weight.copy_(r["state_dict"]["dense.weight"])
        layer.experts[0].dense.bias.copy_(r["state_dict"]["dense.bias"])
        layer.static_fc.weight.copy_(r["W_static"])
        layer.mask.copy_(r["mask"])
        layer.phi.copy_(r["phi_raw"])
        out = layer.expert_forward(0, r["input"])
    assert _close(out, r["outputs_by_Lambda"][original])


def _dense_reference(layer: MoE, x: torch.Tensor) -> torch.Tensor:
    """Every expert on every token, weighted by the gates: what the sparse dispatch must equal."""
    tokens = x.reshape(-1, layer.input_size)
    gates, _ = layer.noisy_top_k_gating(tokens, train=False)
    outs = torch.stack([layer.expert_forward(i, tokens) for i in range(layer.n_experts)], dim=1)
    return (gates.unsqueeze(-1) * outs).sum(1).reshape(*x.shape[:-1], layer.output_size)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_top_k_routing_and_sparse_dispatch(k):
    torch.manual_seed(0)
    layer = MoE(8, 6, n_experts=4, k=k).eval()
    torch.nn.init.normal_(layer.w_gate)
    x = torch.randn(3, 5, 8)
    gates, _ = layer.noisy_top_k_gating(x.reshape(-1, 8), train=False)
    assert ((gates > 0).sum(1) == k).all()
    assert torch.allclose(gates.sum(1), torch.ones(15))
    top = (x.reshape(-1, 8) @ layer.w_gate).topk(k, dim=1).indices
    assert torch.equal(gates.gather(1, top) > 0, torch.ones(15, k, dtype=torch.bool))
    with torch.no_grad():
        assert torch.allclose(layer(x), _dense_reference(layer, x), atol=1e-6)


def test_sentence_level_routes_whole_sequences():
    torch.manual_seed(0)
    layer = MoE(8, 6, n_experts=4, k=1, moe_level="sentence").eval()
    torch.nn.init.normal_(layer.w_gate)
    x = torch.randn(3, 5, 8)
    gates, _ = layer.route(x)
    per_sentence = gates.reshape(3, 5, 4)
    assert torch.equal(per_sentence, per_sentence[:, :1].expand(-1, 5, -1))
    expected = torch.softmax(x.mean(1) @ layer.w_gate, 1).argmax(1)
    assert torch.equal(per_sentence[:, 0].argmax(1), expected)


def test_aux_loss_values():
    """cv^2 is var/mean^2 with the unbiased var; zero-init router in eval sends every token to experts 0 and 1."""
    assert torch.allclose(cv_squared(torch.tensor([1.0, 1.0, 0.0, 0.0])), torch.tensor(4 / 3))
    assert cv_squared(torch.tensor([5.0])) == 0
    layer = MoE(8, 6, n_experts=4, k=2).eval()
    layer(torch.randn(2, 3, 8))
    assert torch.allclose(layer.aux_loss, torch.tensor(0.01 * (4 / 3 + 4 / 3)))
    full = MoE(8, 6, n_experts=4, k=4).eval()
    full(torch.randn(2, 3, 8))
    assert torch.allclose(full.aux_loss, torch.tensor(0.0), atol=1e-8)


def test_training_load_is_smooth_and_trains_the_noise():
    """In training with k < E the load is Shazeer's probability estimate (not a count), differentiable in w_noise."""
    torch.manual_seed(0)
    layer = MoE(8, 6, n_experts=4, k=2).train()
    torch.nn.init.normal_(layer.w_gate, std=0.1)
    torch.nn.init.normal_(layer.w_noise, std=0.1)
    gates, load = layer.noisy_top_k_gating(torch.randn(20, 8), train=True)
    assert load.dtype.is_floating_point and not torch.equal(load, load.round())
    assert 0 < float(load.detach().sum()) < 20 * 4
    layer(torch.randn(4, 5, 8))
    layer.aux_loss.backward()
    assert layer.w_noise.grad.abs().sum() > 0 and layer.w_gate.grad.abs().sum() > 0


@pytest.mark.parametrize("Lambda", ["both", "s", "d", "none"])
def test_pad_expert_at_full_and_empty_mask(Lambda):  # noqa: N803
    """M = 1: the lambda_d-scaled MoE expert; M = 0: the lambda_s-scaled shared static weight (+ the expert bias)."""
    torch.manual_seed(0)
    layer = PadMoE(8, 6, n_experts=3, k=2, Lambda=Lambda)
    torch.nn.init.normal_(layer.phi)
    x = torch.randn(4, 8)
    lambda_d = {"both": 2 * torch.sigmoid(layer.phi), "d": 2 * torch.sigmoid(layer.phi)}.get(Lambda, 1.0)
    lambda_s = {"both": 2 - 2 * torch.sigmoid(layer.phi), "s": 2 - 2 * torch.sigmoid(layer.phi)}.get(Lambda, 1.0)
    with torch.no_grad():
        for i, expert in enumerate(layer.experts):
            layer.mask.fill_(1)
            assert torch.allclose(layer.expert_forward(i, x), F.linear(x, lambda_d * expert.dense.weight,
                                                                        expert.dense.bias), atol=1e-6)
            layer.mask.fill_(0)
            assert torch.allclose(layer.expert_forward(i, x), F.linear(x, lambda_s * layer.static_fc.weight,
                                                                        expert.dense.bias), atol=1e-6)


def test_pad_mask_and_static_weight_are_shared_and_differentiable():
    torch.manual_seed(0)
    layer = PadMoE(8, 6, n_experts=4, k=2)
    torch.nn.init.normal_(layer.w_gate)
    layer.mask.bernoulli_(torch.full_like(layer.mask, 0.5))
    names = {k for k, _ in layer.named_parameters()} | {k for k, _ in layer.named_buffers()}
    assert names == {"w_gate", "w_noise", "mean", "std", "phi", "static_fc.weight", "static_fc.bias", "mask"} | {
        f"experts.{i}.dense.{p}" for i in range(4) for p in ("weight", "bias")}
    layer.mask.requires_grad_(True)
    layer(torch.randn(2, 5, 8)).sum().backward()
    assert layer.mask.grad.abs().sum() > 0 and layer.static_fc.weight.grad.abs().sum() > 0
    assert layer.static_fc.bias.grad is None


def test_pad_expert_weights_built_once_per_forward_and_once_in_evaluation(monkeypatch):
    """Training builds the E computational weights once per forward; evaluation builds them once and reuses them
    until a parameter, the mask or phi changes (optimizer step, IMP, load_state_dict)."""
    torch.manual_seed(0)
    layer = PadMoE(8, 6, n_experts=4, k=2)
    torch.nn.init.normal_(layer.w_gate)
    layer.mask.bernoulli_(torch.full_like(layer.mask, 0.5))
    builds = []
    build = layer._build_expert_weights
    monkeypatch.setattr(layer, "_build_expert_weights", lambda: builds.append(1) or build())
    x = torch.randn(2, 5, 8)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    for _ in range(2):  # training: one build per forward (not one per expert), gradients flow
        layer.train()(x).sum().backward()
        optimizer.step()
    assert len(builds) == 2 and layer.static_fc.weight.grad is not None
    layer.eval()
    with torch.no_grad():
        first = layer(x)
        assert torch.equal(layer(x), first) and len(builds) == 3  # cached across evaluation batches
        layer.phi.add_(0.5)
        changed = layer(x)
        layer.mask.zero_()
        static = layer(x)
    assert len(builds) == 5 and not torch.allclose(changed, first) and not torch.allclose(static, changed)
    fresh = PadMoE(8, 6, n_experts=4, k=2).eval()
    fresh.load_state_dict(layer.state_dict())
    with torch.no_grad():
        assert torch.allclose(fresh(x), static, atol=1e-6)
    layer.train()(x).sum().backward()  # back to training: fresh weights with a graph
    assert len(builds) == 6


def test_upcycle_copies_the_dense_layer():
    dense = torch.nn.Linear(8, 6)
    layer = PadMoE(8, 6, n_experts=3, k=2)
    layer.upcycle_(dense)
    for w in [e.dense.weight for e in layer.experts] + [layer.static_fc.weight]:
        assert torch.equal(w, dense.weight)
    x = torch.randn(2, 4, 8)
    with torch.no_grad():
        assert torch.allclose(layer.eval()(x), dense(x), atol=1e-6)


def test_bad_layer_arguments():
    with pytest.raises(ValueError, match="top-k"):
        MoE(8, 6, n_experts=2, k=3)
    with pytest.raises(ValueError, match="Lambda"):
        PadMoE(8, 6, Lambda="x")
    with pytest.raises(ValueError, match="moe_level"):
        MoE(8, 6, moe_level="task")
