"""JEI-DNN gates: the learnable uncertainty gate and the zero-cost identity gate (spec Sec. b).

A gate sits after intermediate classifier l and turns its logits into one pre-sigmoid exit logit
``a_l = w_l . [p_max, H(p), margin, H(p^2 / sum p^2)] + c_l``; the exit score is ``g_l = sigmoid(a_l)``.
The four uncertainty features are computed without gradient (the original goes through numpy / scipy), in
float32, in that order, so only the gate's own ``linear`` learns from the gate loss.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

GATE_TYPES = ("unc", "identity")
NUM_UNCERTAINTY_FEATURES = 4


def _entropy(p: Tensor) -> Tensor:
    """Natural-log entropy of each row, renormalised first and with ``0 log 0 = 0`` (``scipy.stats.entropy``)."""
    p = p / p.sum(dim=1, keepdim=True)
    return torch.special.entr(p).sum(dim=1)


@torch.no_grad()
def uncertainty_features(logits: Tensor) -> Tensor:
    """The gate inputs of Sec. b: ``[p_max, entropy, top-2 margin, pow-entropy]`` of ``softmax(logits)``, ``[B, 4]``.

    * ``p_max``: the largest class probability;
    * ``entropy``: ``H(p)``, natural log;
    * ``margin``: ``p_(1) - p_(2)``, the gap between the two largest probabilities;
    * ``pow-entropy``: ``H(p^2 / sum p^2)``, the entropy of the sharpened distribution.

    Detached and float32 whatever the dtype of ``logits`` (the original computes them in numpy float32).
    """
    probs = torch.softmax(logits.detach().float(), dim=1)
    top2 = torch.topk(probs, 2, dim=1).values
    p_max, margin = top2[:, 0], top2[:, 0] - top2[:, 1]
    pow_probs = probs * probs
    pow_probs = pow_probs / pow_probs.sum(dim=1, keepdim=True)
    return torch.stack([p_max, _entropy(probs), margin, _entropy(pow_probs)], dim=1)


class LearnableUncGate(nn.Module):
    """``LearnableUncGate``: ``nn.Linear(4, 1)`` on the detached uncertainty features of an IC (Sec. b).

    Returns the pre-sigmoid gate logit ``a_l``, shape ``[B, 1]``.
    """

    gate_type = "unc"

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(NUM_UNCERTAINTY_FEATURES, 1)

    def forward(self, logits: Tensor) -> Tensor:
        features = uncertainty_features(logits).to(self.linear.weight.device)
        return self.linear(features.to(self.linear.weight.dtype))

    @staticmethod
    def mul_add(num_classes: int) -> int:
        """The original op counter's cost of one gate (Sec. e): ``9C + 6``.

        ``C`` (max) + ``C + 1`` (margin) + ``2C`` (entropy) + ``5C`` (pow-entropy) + ``5`` (the 4->1 linear).
        """
        return 9 * num_classes + 6


class IdentityGate(nn.Module):
    """``IdentityGate``: returns the IC logits unchanged and costs nothing; it only marks where an exit is (Sec. b)."""

    gate_type = "identity"

    def forward(self, logits: Tensor) -> Tensor:
        return logits

    @staticmethod
    def mul_add(num_classes: int) -> int:
        return 0


def build_gate(gate: str) -> nn.Module:
    """A gate by its ``--gate`` name: ``unc`` (:class:`LearnableUncGate`) or ``identity`` (:class:`IdentityGate`)."""
    if gate == "unc":
        return LearnableUncGate()
    if gate == "identity":
        return IdentityGate()
    raise ValueError(f"unknown gate {gate!r}; choose one of: {', '.join(GATE_TYPES)}")
