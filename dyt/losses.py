"""DyT's training loss (Sec. 3.2 and the NeurIPS self-distillation; the original's ``AdaLoss`` + ``train_one_epoch``).

``L = CE(z_s, y) + token_ratio * (mean(M) - r)^2 + CE(z_t, y) + KL(softmax(z_t).detach() || softmax(z_s))``

* ``mean(M)`` is one global mean over batch x layers x patch tokens (CLS excluded), not per layer or per sample;
* ``z_t`` are the logits of the complete model (the same network, nothing skipped): its CE is not detached, only
  the KL target is; the KL is ``kl_div(log_softmax(z_s), log_softmax(z_t), 'batchmean', log_target=True)``, weight 1,
  no temperature.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn


def activation_rate(token_select: torch.Tensor | Mapping[str, torch.Tensor | None]) -> torch.Tensor:
    """The global activation rate ``mean(M)``; given a forward's ``aux`` dict, over every ``*token_select`` mask
    in it (both dispatchers of ``dispatch="attn_mlp"``)."""
    if isinstance(token_select, Mapping):
        masks = [v.flatten() for k, v in token_select.items() if k.endswith("token_select") and v is not None]
        return torch.cat(masks).mean()
    return token_select.mean()


class DyTLoss(nn.Module):
    """CE + rate loss (+ complete-model CE and KL distillation when ``distill`` and complete logits are given).

    ``forward(logits, token_select, targets, complete_logits=None)`` returns ``(loss, parts)`` with ``parts`` the
    original's logged values as floats: ``base_loss``, ``token_loss`` (already times ``token_ratio``) and, with the
    complete model, ``teacher_loss`` and ``distillation_loss``. ``token_select`` is the [B, L, N-1, 1] mask, a
    forward's ``aux`` dict (every dispatcher's masks count), or None (no rate term, e.g. AdaptFormer).
    """

    def __init__(self, token_target_ratio: float = 0.5, token_ratio: float = 2.0, distill: bool = True):
        super().__init__()
        self.token_target_ratio, self.token_ratio, self.distill = token_target_ratio, token_ratio, distill
        self.base_criterion = nn.CrossEntropyLoss()

    @property
    def needs_complete(self) -> bool:
        """Whether the training step should run the complete-model pass as well."""
        return self.distill

    def forward(self, logits: torch.Tensor, token_select: torch.Tensor | Mapping[str, torch.Tensor | None] | None,
                targets: torch.Tensor, complete_logits: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, dict[str, float]]:
        base_loss = self.base_criterion(logits, targets)
        if token_select is None:
            token_loss = logits.new_zeros(())
        else:
            token_loss = self.token_ratio * (activation_rate(token_select) - self.token_target_ratio) ** 2
        loss = base_loss + token_loss
        parts = {"base_loss": base_loss.item(), "token_loss": token_loss.item()}
        if self.distill and complete_logits is not None:
            teacher_loss = self.base_criterion(complete_logits, targets)
            distillation_loss = F.kl_div(F.log_softmax(logits, dim=-1), F.log_softmax(complete_logits.detach(), dim=-1),
                                         reduction="batchmean", log_target=True)
            loss = loss + teacher_loss + distillation_loss
            parts.update(teacher_loss=teacher_loss.item(), distillation_loss=distillation_loss.item())
        return loss, parts
