"""The small modules DyT adds to a ViT block: the bottleneck adapter, the MoE adapter and the token dispatcher.

* :class:`Adapter`: AdaptFormer's parallel bottleneck (Sec. 3.2, Eq. 2): ``s * up(dropout(relu(down(x))))``,
  ``up`` zero-initialised so a fresh adapter outputs 0.
* :class:`MoEAdapter`: Sec. 3.4, N adapter experts mixed by a router (never released by the authors; the parts the
  paper leaves open are options here, see ``dyt/README.md``).
* :class:`TokenSelect`: the token dispatcher (Sec. 3.1, Eq. 1): one logit per patch token, a Gumbel-sigmoid with a
  straight-through hard mask in training and ``logit > 0`` at inference; the CLS token is always activated. Its
  ``token_mask`` can be switched to two controls that are not in the original (a random mask at rate r, or the
  fixed mask of the patches nearest the image centre), which the proxy compares DyT's learned mask with. Its
  ``keep_rate`` (our addition, ``dyt/README.md``) makes the learned dispatcher keep, at inference, the
  :func:`kept_tokens` highest-logit patch tokens of every sample instead of those with ``logit > 0``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def gumbel_sigmoid(logits: torch.Tensor, tau: float = 5.0, hard: bool = True, threshold: float = 0.5,
                   training: bool = True) -> torch.Tensor:
    """Gumbel-sigmoid with a straight-through estimator (Sec. 3.1, Eq. 1).

    Training: ``y_soft = sigmoid((g + G1 - G2) / tau)`` with G1, G2 ~ Gumbel(0, 1) (each ``-log Exp(1)``).
    Inference: ``y_soft = sigmoid(g)``, no noise. With ``hard`` the forward value is ``1[y_soft > threshold]`` and
    the gradient is that of ``y_soft`` (without autograd, e.g. under ``torch.no_grad``, the hard value alone: the
    same numbers without the straight-through arithmetic).
    """
    if training:
        g1 = -torch.empty_like(logits).exponential_().log()
        g2 = -torch.empty_like(logits).exponential_().log()
        y_soft = ((logits + g1 - g2) / tau).sigmoid()
    else:
        y_soft = logits.sigmoid()
    if not hard:
        return y_soft
    y_hard = torch.zeros_like(logits).masked_fill(y_soft > threshold, 1.0)
    if not y_soft.requires_grad:
        return y_hard
    return y_hard - y_soft.detach() + y_soft


TOKEN_MASKS = ("learned", "random", "centre")


def kept_tokens(num_patches: int, rate: float) -> int:
    """How many of ``num_patches`` patch tokens a fixed activation rate keeps: ``ceil(rate * num_patches)``
    (a product within 1e-6 of an integer counts as that integer)."""
    return math.ceil(rate * num_patches - 1e-6)


def top_tokens(logits: torch.Tensor, rate: float) -> torch.Tensor:
    """Indices [B, k] of the :func:`kept_tokens` highest dispatcher logits [B, N-1, 1] of every sample."""
    return logits[..., 0].topk(kept_tokens(logits.shape[1], rate), dim=1, sorted=False).indices


def centre_mask(num_patches: int, rate: float) -> torch.Tensor:
    """[num_patches] 0/1: the ``round(rate * num_patches)`` patches nearest the centre of the square patch grid
    (Euclidean distance; ties in row-major order)."""
    grid = math.isqrt(num_patches)
    if grid * grid != num_patches:
        raise ValueError(f"a centre mask needs a square patch grid, got {num_patches} patch tokens")
    offset = (torch.arange(grid, dtype=torch.float64) - (grid - 1) / 2).square()
    distance = (offset[:, None] + offset[None, :]).flatten()
    mask = torch.zeros(num_patches)
    mask[distance.argsort(stable=True)[:round(rate * num_patches)]] = 1.0
    return mask


class TokenSelect(nn.Module):
    """Token dispatcher (Sec. 3.1): ``Linear(C, 1)`` on the patch tokens, CLS re-inserted with mask 1.

    ``forward(x)`` returns ``(token_select [B, N, 1], logits [B, N-1, 1])``. tau stays fixed (the original never
    calls its ``set_tau``). ``token_mask`` (:data:`TOKEN_MASKS`) is ``"learned"`` (the dispatcher) or one of two
    controls at rate ``rate``, in training and in eval alike: ``"random"`` (every patch token kept with probability
    ``rate``, drawn afresh each call from torch's generator) or ``"centre"`` (:func:`centre_mask`). A control's
    mask does not depend on the logits, so the dispatcher then gets no gradient. With ``keep_rate`` set, the
    learned dispatcher keeps at inference (eval mode) the :func:`top_tokens` of each sample; training always
    samples the Gumbel-sigmoid mask.
    """

    def __init__(self, dim: int, tau: float = 5.0, threshold: float = 0.5):
        super().__init__()
        self.mlp_head = nn.Linear(dim, 1)
        self.tau, self.threshold = tau, threshold
        self.token_mask, self.rate = "learned", 0.5
        self.keep_rate: float | None = None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.mlp_head(x[:, 1:, :])
        if self.token_mask == "learned" and self.keep_rate is not None and not self.training:
            select = torch.zeros_like(logits[..., 0]).scatter_(1, top_tokens(logits, self.keep_rate), 1.0)[..., None]
        elif self.token_mask == "learned":
            select = gumbel_sigmoid(logits, self.tau, True, self.threshold, self.training)
        elif self.token_mask == "random":
            select = (torch.rand(logits.shape, device=x.device) < self.rate).to(logits.dtype)
        else:
            select = centre_mask(logits.shape[1], self.rate).to(logits)[None, :, None].expand_as(logits)
        return torch.cat([select.new_ones(x.shape[0], 1, 1), select], dim=1), logits


def _scale(adapter_scalar: float | str) -> float | nn.Parameter:
    """The adapter scale s: a number (the original passes the string "0.1"), or "learnable_scalar"."""
    if adapter_scalar == "learnable_scalar":
        return nn.Parameter(torch.ones(1))
    return float(adapter_scalar)


class Adapter(nn.Module):
    """Bottleneck adapter, parallel to the MLP (Sec. 3.2): ``s * up(dropout_0.1(relu(down(x))))``, no residual.

    Init as the original's ``_init_weights``: kaiming-uniform(a=sqrt 5) down projection, everything else 0.
    """

    def __init__(self, d_model: int, bottleneck: int, dropout: float = 0.1, adapter_scalar: float | str = 0.1):
        super().__init__()
        self.down_proj = nn.Linear(d_model, bottleneck)
        self.non_linear_func = nn.ReLU()
        self.up_proj = nn.Linear(bottleneck, d_model)
        self.dropout = dropout
        self.scale = _scale(adapter_scalar)

    def _init_weights(self) -> None:
        with torch.no_grad():
            nn.init.kaiming_uniform_(self.down_proj.weight, a=math.sqrt(5))
            nn.init.zeros_(self.up_proj.weight)
            nn.init.zeros_(self.down_proj.bias)
            nn.init.zeros_(self.up_proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        down = F.dropout(self.non_linear_func(self.down_proj(x)), p=self.dropout, training=self.training)
        return self.up_proj(down) * self.scale


class MoEAdapter(nn.Module):
    """MoE adapter (Sec. 3.4): N adapter experts and a router ``W_r`` giving weights alpha = softmax(W_r x).

    ``router``: ``"token"`` routes every token on its own features, ``"sample"`` routes a sample on the mean of its
    tokens. ``merge=False``: the weighted sum of expert outputs, ``sum_i alpha_i Expert_i(x)``; ``merge=True``: one
    adapter with merged weights ``W = sum_i alpha_i W_i`` (for ``"sample"`` the weights are really merged per
    sample, so the FLOPs stay those of one adapter). The two differ through the ReLU. Each expert is initialised
    like :class:`Adapter` (zero up projection), so the module outputs 0 at initialisation.
    """

    def __init__(self, d_model: int, bottleneck: int, num_experts: int, router: str = "sample", merge: bool = False,
                 dropout: float = 0.1, adapter_scalar: float | str = 0.1):
        super().__init__()
        if router not in ("token", "sample"):
            raise ValueError(f"router must be 'token' or 'sample', got {router!r}")
        # the experts hold the parameters; their own forward is not used (the mixture is computed stacked)
        self.experts = nn.ModuleList(Adapter(d_model, bottleneck, dropout, 1.0) for _ in range(num_experts))
        self.router = nn.Linear(d_model, num_experts)
        self.routing, self.merge, self.dropout = router, merge, dropout
        self.scale = _scale(adapter_scalar)

    def route(self, x: torch.Tensor) -> torch.Tensor:
        """Mixing weights alpha: [B, N, E] per token, [B, 1, E] per sample."""
        source = x if self.routing == "token" else x.mean(dim=1, keepdim=True)
        return self.router(source).softmax(dim=-1)

    def _stacked(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        down_w = torch.stack([e.down_proj.weight for e in self.experts])  # [E, r, C]
        down_b = torch.stack([e.down_proj.bias for e in self.experts])  # [E, r]
        up_w = torch.stack([e.up_proj.weight for e in self.experts])  # [E, C, r]
        up_b = torch.stack([e.up_proj.bias for e in self.experts])  # [E, C]
        return down_w, down_b, up_w, up_b

    def _act(self, h: torch.Tensor) -> torch.Tensor:
        return F.dropout(F.relu(h), p=self.dropout, training=self.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alpha = self.route(x)
        down_w, down_b, up_w, up_b = self._stacked()
        experts, rank, dim = down_w.shape
        if self.merge and self.routing == "sample":
            a = alpha[:, 0]  # [B, E]: one merged adapter per sample
            down = torch.baddbmm((a @ down_b)[:, None], x, torch.einsum("be,erc->bcr", a, down_w))
            up = torch.baddbmm((a @ up_b)[:, None], self._act(down), torch.einsum("be,ecr->brc", a, up_w))
            return up * self.scale
        down = F.linear(x, down_w.reshape(experts * rank, dim), down_b.reshape(-1))
        down = down.view(*x.shape[:-1], experts, rank)  # [B, N, E, r]
        if self.merge:  # per-token merged weights, applied through linearity: sum_i a_i (W_i h + b_i)
            hidden = self._act((alpha[..., None] * down).sum(dim=-2))
            up = torch.einsum("bnr,ecr->bnec", hidden, up_w) + up_b
        else:
            up = torch.einsum("bner,ecr->bnec", self._act(down), up_w) + up_b
        return (alpha[..., None] * up).sum(dim=-2) * self.scale
