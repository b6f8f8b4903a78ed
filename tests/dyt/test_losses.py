"""DyTLoss: the global rate term, the complete-model terms and their gradients (spec Sec. b.3)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dyt.losses import DyTLoss, activation_rate


def test_rate_is_one_global_mean_and_weighted():
    logits, targets = torch.zeros(2, 3), torch.tensor([0, 1])
    select = torch.zeros(2, 4, 10, 1)
    select[0] = 1  # sample 0 keeps everything, sample 1 nothing: per-sample rates 1 and 0, global 0.5
    loss, parts = DyTLoss(token_target_ratio=0.5, token_ratio=2.0)(logits, select, targets)
    assert parts["token_loss"] == 0.0 and set(parts) == {"base_loss", "token_loss"}
    select[1, 0] = 1
    _, parts = DyTLoss(token_target_ratio=0.3, token_ratio=2.0)(logits, select, targets)
    assert parts["token_loss"] == pytest.approx(2.0 * (5 / 8 - 0.3) ** 2)
    assert loss.item() == pytest.approx(F.cross_entropy(logits, targets).item())


def test_complete_model_terms_and_gradients():
    torch.manual_seed(0)
    student = torch.randn(4, 5, requires_grad=True)
    teacher = torch.randn(4, 5, requires_grad=True)
    targets = torch.tensor([0, 1, 2, 3])
    loss, parts = DyTLoss()(student, torch.full((4, 2, 3, 1), 0.5), targets, complete_logits=teacher)
    p_t = teacher.softmax(-1)
    kl = (p_t * (p_t.log() - student.log_softmax(-1))).sum(-1).mean()
    assert parts["distillation_loss"] == pytest.approx(kl.item(), abs=1e-6)
    assert parts["teacher_loss"] == pytest.approx(F.cross_entropy(teacher, targets).item(), abs=1e-6)
    assert loss.item() == pytest.approx(sum(parts.values()), abs=1e-5)
    loss.backward()
    # the teacher gets gradient only from its own CE: the KL target is detached
    expected = torch.autograd.grad(F.cross_entropy(teacher, targets), teacher)[0]
    torch.testing.assert_close(teacher.grad, expected)


def test_distill_off_and_no_mask():
    logits, targets = torch.randn(2, 3), torch.tensor([0, 2])
    criterion = DyTLoss(distill=False)
    assert not criterion.needs_complete
    _, parts = criterion(logits, None, targets, complete_logits=torch.randn(2, 3))
    assert set(parts) == {"base_loss", "token_loss"} and parts["token_loss"] == 0.0


def test_aux_dict_counts_every_dispatcher():
    aux = {"token_select": torch.ones(2, 3, 4, 1), "attn_token_select": torch.zeros(2, 3, 4, 1),
           "token_logits": torch.full((2, 3, 4, 1), 9.0), "attn_token_logits": None}
    assert activation_rate(aux).item() == 0.5
