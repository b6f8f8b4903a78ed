"""JEI-DNN's exit rule, objectives and real early exit (spec Sec. b), against the original's outputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from jeidnn.dynn import (
    classifier_loss,
    early_exit_forward,
    exit_decisions,
    exit_probabilities,
    gate_loss,
    gate_targets,
    oracle_exit,
    pos_weights_from_validation,
    warmup_loss,
)


@pytest.fixture(scope="module")
def ref_output(ref):
    return ref["output"]


def test_exit_decisions_match_the_original(ref_output):
    gates = torch.sigmoid(torch.cat(ref_output["gate_logits"], dim=1))
    decisions = exit_decisions(gates)
    torch.testing.assert_close(decisions.pi, ref_output["jeidnn_eval_p_exit_at_gate"], atol=1e-6, rtol=0)
    assert decisions.exit_level.tolist() == ref_output["jeidnn_eval_exit_level"].tolist()
    assert decisions.counts().tolist() == [int(n) for n in ref_output["jeidnn_eval_num_exits_per_gate"]]
    gated = decisions.gated_logits(ref_output["intermediate_logits"], ref_output["final_logits"])
    torch.testing.assert_close(gated, ref_output["jeidnn_eval_gated_logits"], atol=1e-6, rtol=0)


def test_losses_match_the_original(ref_output):
    ics, final, targets = ref_output["intermediate_logits"], ref_output["final_logits"], ref_output["targets"]
    gates = torch.sigmoid(torch.cat(ref_output["gate_logits"], dim=1))
    pi = exit_probabilities(gates)
    assert classifier_loss(ics, targets, pi).item() == pytest.approx(ref_output["classifier_loss_weighted_mode"].item(),
                                                                     abs=1e-5)
    costs = ref_output["normalized_cost_per_exit"][:-1]
    oracle = oracle_exit(ics, final, targets, costs, ref_output["ce_ic_tradeoff"])
    counts = torch.bincount(oracle, minlength=len(ics) + 1)[:len(ics)].tolist()
    assert counts == [ref_output["gate_oracle_exit_counts"][g] for g in range(len(ics))]
    loss = gate_loss(torch.cat(ref_output["gate_logits"], dim=1), gate_targets(oracle, len(ics)))
    assert loss.dtype == torch.float64
    assert loss.item() == pytest.approx(ref_output["gate_loss_ce_objective"].item(), abs=1e-6)


def test_exit_rule_by_hand():
    # gate 0 exits at g >= 0.5; gate 1 at g_1 >= 0.5 (1 - g_0) given no exit at 0; else the final head (level 2)
    gates = torch.tensor([[0.6, 0.0], [0.4, 0.35], [0.4, 0.25], [0.0, 0.0], [0.9, 0.9]])
    decisions = exit_decisions(gates)
    assert decisions.exit_level.tolist() == [0, 1, 2, 2, 0]
    torch.testing.assert_close(decisions.pi, torch.tensor([[0.6, 0.0], [0.4, 0.35], [0.4, 0.25], [0.0, 0.0],
                                                           [0.9, 0.1]]))
    assert decisions.counts().tolist() == [2, 1, 2]


def test_gate_targets_and_weights():
    oracle = torch.tensor([0, 2, 3, 1])  # 3 gates; 3 = the final head
    assert gate_targets(oracle, 3).tolist() == [[1, 1, 1], [0, 0, 1], [0, 0, 0], [0, 1, 1]]
    # n = (1, 1, 1) of N = 4 -> (4 - 1) / 1 = 3; a gate never optimal gets the cap 5
    assert pos_weights_from_validation(oracle, 3) == [3.0, 3.0, 3.0]
    assert pos_weights_from_validation(torch.tensor([3, 3, 0]), 3) == [2.0, 5.0, 5.0]
    logits = torch.zeros(4, 3, requires_grad=True)
    targets = gate_targets(oracle, 3)
    unweighted = gate_loss(logits, targets)
    weighted = gate_loss(logits, targets, [3.0, 3.0, 3.0])
    n_pos, n = targets.sum().item(), targets.numel()
    assert weighted.item() == pytest.approx(unweighted.item() * (3 * n_pos + (n - n_pos)) / n)
    weighted.backward()
    assert logits.grad.abs().sum() > 0


def test_oracle_trades_accuracy_for_cost():
    # IC 0 is slightly worse than the final head; a large lambda prefers it, a small one the final head
    ic = [torch.tensor([[2.0, 0.0]])]
    final = torch.tensor([[4.0, 0.0]])
    target = torch.tensor([0])
    assert oracle_exit(ic, final, target, [0.4], 0.01).item() == 1
    assert oracle_exit(ic, final, target, [0.4], 1.0).item() == 0
    assert oracle_exit(ic, final, target, [0.4], 0.01, objective="zeroOne").item() == 0  # both right: cheaper wins


def test_classifier_and_warmup_losses():
    torch.manual_seed(0)
    ics = [torch.randn(5, 3) for _ in range(2)]
    final, targets = torch.randn(5, 3), torch.randint(0, 3, (5,))
    ce = [nn.functional.cross_entropy(x, targets, reduction="none") for x in ics]
    pi = torch.rand(5, 2)
    assert classifier_loss(ics, targets, pi).item() == pytest.approx(torch.stack(ce, 1).mean().item())
    expected = (pi * torch.stack(ce, 1)).mean().item()
    assert classifier_loss(ics, targets, pi, mode="pi_weighted").item() == pytest.approx(expected)
    warm = nn.functional.cross_entropy(final, targets) + 3 * ce[0].mean() + 2 * ce[1].mean()
    assert warmup_loss(final, ics, targets).item() == pytest.approx(warm.item())
    with pytest.raises(ValueError, match="unknown IC loss"):
        classifier_loss(ics, targets, pi, mode="boosted")


class _Gate(nn.Module):
    def __init__(self, classes: int):
        super().__init__()
        self.linear = nn.Linear(classes, 1)

    def forward(self, logits):
        return self.linear(logits)


class _TinyExitModel(nn.Module):
    """The interface early_exit_forward needs, with 4 MLP blocks over 3 tokens."""

    def __init__(self, dim: int = 8, classes: int = 5, depth: int = 4):
        super().__init__()
        self.num_classes, self.num_exits = classes, depth - 1
        self.proj = nn.Linear(6, 3 * dim)
        self.blocks = nn.ModuleList([nn.Sequential(nn.Linear(dim, dim), nn.Tanh()) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.intermediate_heads = nn.ModuleList([nn.Linear(dim, classes) for _ in range(depth - 1)])
        self.gates = nn.ModuleList([_Gate(classes) for _ in range(depth - 1)])
        self.head = nn.Linear(dim, classes)

    def embed(self, x):
        return self.proj(x).view(x.size(0), 3, -1)

    def full(self, x):
        tokens, ics = self.embed(x), []
        for level, block in enumerate(self.blocks):
            tokens = block(tokens)
            if level < self.num_exits:
                ics.append(self.intermediate_heads[level](self.norm(tokens)[:, 0]))
        return self.head(self.norm(tokens)[:, 0]), ics


def test_early_exit_forward_equals_the_masked_rule():
    torch.manual_seed(0)
    model = _TinyExitModel().eval()
    for gate in model.gates:
        nn.init.normal_(gate.linear.weight, 0, 2)
        nn.init.constant_(gate.linear.bias, -1.0)
    x = torch.randn(64, 6)
    logits, levels = early_exit_forward(model, x)
    with torch.no_grad():
        final, ics = model.full(x)
        gates = torch.sigmoid(torch.cat([g(ic) for g, ic in zip(model.gates, ics, strict=True)], dim=1))
        decisions = exit_decisions(gates)
    assert torch.equal(levels, decisions.exit_level)
    assert len(set(levels.tolist())) > 2  # several exits taken
    torch.testing.assert_close(logits, decisions.gated_logits(ics, final))


def test_early_exit_forward_skips_later_blocks_for_exited_samples():
    model = _TinyExitModel().eval()
    for gate in model.gates:  # every sample exits at gate 0
        nn.init.zeros_(gate.linear.weight)
        nn.init.constant_(gate.linear.bias, 5.0)
    seen = []
    for block in model.blocks:
        block.register_forward_hook(lambda m, inp, out: seen.append(out.size(0)))
    _, levels = early_exit_forward(model, torch.randn(8, 6))
    assert levels.tolist() == [0] * 8 and seen == [8]


def test_early_exit_forward_keeps_the_batch_whole_until_someone_leaves():
    model = _TinyExitModel().eval()
    for gate, bias in zip(model.gates, (-5.0, 5.0, 5.0), strict=True):  # nobody leaves at 0, everybody at 1
        nn.init.zeros_(gate.linear.weight)
        nn.init.constant_(gate.linear.bias, bias)
    seen = []
    for block in model.blocks:
        block.register_forward_hook(lambda m, inp, out: seen.append(out.size(0)))
    x = torch.randn(8, 6)
    logits, levels = early_exit_forward(model, x)
    assert levels.tolist() == [1] * 8 and seen == [8, 8]
    with torch.no_grad():
        _, ics = model.full(x)
    torch.testing.assert_close(logits, ics[1])


def test_t2t_soft_split_equals_unfold_then_transpose():
    """The channels-last soft split of the T2T module is nn.Unfold's patches in the same order, bit for bit."""
    from jeidnn.models.t2t_vit import T2TModule, _unfold_size

    torch.manual_seed(0)
    t2t = T2TModule(img_size=32, embed_dim=16, token_dim=8).eval()
    x = torch.randn(2, 3, 37, 29)
    with torch.no_grad():
        height, width = _unfold_size(37, 7, 4, 2), _unfold_size(29, 7, 4, 2)
        ref = t2t.attention1(t2t.soft_split0(x).transpose(1, 2))
        ref = ref.transpose(1, 2).reshape(2, -1, height, width)
        height, width = _unfold_size(height, 3, 2, 1), _unfold_size(width, 3, 2, 1)
        ref = t2t.attention2(t2t.soft_split1(ref).transpose(1, 2))
        ref = t2t.project(t2t.soft_split2(ref.transpose(1, 2).reshape(2, -1, height, width)).transpose(1, 2))
        assert torch.equal(t2t(x), ref)
