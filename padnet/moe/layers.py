"""Mixture-of-Experts linear layers for BERT FFNs: the MoE baseline and PAD-MoE (PAD-Net, ACL 2023, Sec. 3-4).

Both replace one ``nn.Linear`` of a transformer FFN by ``n_experts`` linear experts and a noisy top-k router per
token (Shazeer et al. 2017, Eqs. 3-5), with the load-balancing loss ``0.01 * (CV^2(importance) + CV^2(load))``
(Shazeer Eqs. 6-10; the smooth load estimator from the normal CDF in training when ``k < n_experts``).

:class:`PadMoE` is the paper's partially dynamic expert (Sec. 3.1, Fig. 1; ``SingleExpert_Pad`` in the original)::

    W_hat_e = lambda_d * M ⊙ W_e + lambda_s * (1 - M) ⊙ W_static,   lambda_d = 2 sigmoid(phi), lambda_s = 2 - lambda_d

with one mode mask ``M`` (out x in) and one static weight ``W_static`` shared by all experts. ``pad_forward=
"released"`` instead runs the forward of the released ``PadMoE`` (``W_e + W_static``; mask and phi unused).

A layer's ``forward`` returns only the output tensor, so that it drops into Hugging Face's ``BertIntermediate`` /
``BertOutput`` in place of ``dense``; the auxiliary loss of the last call is kept in ``aux_loss``
(:func:`padnet.moe.modeling.moe_aux_loss` sums it over a model).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions.normal import Normal

MOE_LEVELS = ("context", "sentence")
LAMBDAS = ("both", "s", "d", "p", "none", "phi")
PAD_FORWARDS = ("paper", "released")


def cv_squared(x: torch.Tensor) -> torch.Tensor:
    """Squared coefficient of variation ``var / (mean^2 + 1e-10)`` (unbiased var); 0 for a single value."""
    x = x.float()
    if x.shape[0] == 1:
        return x.new_zeros(())
    return x.var() / (x.mean() ** 2 + 1e-10)


class SingleExpert(nn.Module):
    """One expert: a linear layer named ``dense`` (keys ``experts.{i}.dense.{weight,bias}``)."""

    def __init__(self, input_size: int, output_size: int):
        super().__init__()
        self.dense = nn.Linear(input_size, output_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense(x)


class MoE(nn.Module):
    """Token-routed Mixture of Experts over linear experts, noisy top-k gating (the original ``MoE``).

    ``moe_level="context"`` routes every token; ``"sentence"`` routes each sequence on its mean token (all its
    tokens then go to the same experts). Parameters as in the original: ``w_gate``, ``w_noise`` (in x E, zero
    init), ``experts``, and the frozen normal's ``mean``/``std``.
    """

    loss_coef = 1e-2

    def __init__(self, input_size: int, output_size: int, n_experts: int = 8, k: int = 2,
                 moe_level: str = "context", noisy_gating: bool = True):
        super().__init__()
        if not 1 <= k <= n_experts:
            raise ValueError(f"top-k must be in [1, n_experts={n_experts}], got k={k}")
        if moe_level not in MOE_LEVELS:
            raise ValueError(f"moe_level must be one of {MOE_LEVELS}, got {moe_level!r}")
        self.input_size, self.output_size = input_size, output_size
        self.n_experts, self.k, self.moe_level, self.noisy_gating = n_experts, k, moe_level, noisy_gating
        self.w_gate = nn.Parameter(torch.zeros(input_size, n_experts))
        self.w_noise = nn.Parameter(torch.zeros(input_size, n_experts))
        self.experts = nn.ModuleList(SingleExpert(input_size, output_size) for _ in range(n_experts))
        self.mean = nn.Parameter(torch.tensor([0.0]), requires_grad=False)
        self.std = nn.Parameter(torch.tensor([1.0]), requires_grad=False)
        self.aux_loss: torch.Tensor | None = None

    # --- router (Shazeer et al. 2017, Sec. 2.1 and Appendix A) ---------------------------------------------------
    def _prob_in_top_k(self, clean_logits: torch.Tensor, noisy_logits: torch.Tensor, noise_stddev: torch.Tensor,
                       top_logits: torch.Tensor) -> torch.Tensor:
        """P(expert stays in the top k when its own noise is re-sampled): Shazeer's smooth load (Appendix A)."""
        threshold_if_in = top_logits[:, self.k:self.k + 1]        # the (k+1)-th value: what an expert must beat
        threshold_if_out = top_logits[:, self.k - 1:self.k]       # the k-th value: what an outsider must beat
        normal = Normal(self.mean, self.std)
        prob_if_in = normal.cdf((clean_logits - threshold_if_in) / noise_stddev)
        prob_if_out = normal.cdf((clean_logits - threshold_if_out) / noise_stddev)
        return torch.where(noisy_logits > threshold_if_in, prob_if_in, prob_if_out)

    def noisy_top_k_gating(self, x: torch.Tensor, train: bool, noise_epsilon: float = 1e-2
                           ) -> tuple[torch.Tensor, torch.Tensor]:
        """Gates (N x E, softmax over the top k logits, 0 elsewhere) and the load per expert (Shazeer Eqs. 3-5)."""
        clean_logits = x @ self.w_gate
        noisy = self.noisy_gating and train
        if noisy:
            noise_stddev = F.softplus(x @ self.w_noise) + noise_epsilon
            logits = clean_logits + torch.randn_like(clean_logits) * noise_stddev
        else:
            logits = clean_logits
        top_logits, top_indices = logits.topk(min(self.k + 1, self.n_experts), dim=1)
        top_k_gates = torch.softmax(top_logits[:, :self.k], dim=1)
        gates = torch.zeros_like(logits).scatter(1, top_indices[:, :self.k], top_k_gates)
        if noisy and self.k < self.n_experts:
            load = self._prob_in_top_k(clean_logits, logits, noise_stddev, top_logits).sum(0)
        else:
            load = (gates > 0).sum(0)
        return gates, load

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token gates (N x E) for tokens ``x`` (..., d), and the load-balancing loss of this call."""
        if self.moe_level == "sentence":
            sentences = x.reshape(-1, x.shape[-2], self.input_size)
            gates, load = self.noisy_top_k_gating(sentences.mean(-2), self.training)
            token_gates = gates.repeat_interleave(sentences.shape[1], dim=0)
        else:
            gates, load = self.noisy_top_k_gating(x.reshape(-1, self.input_size), self.training)
            token_gates = gates
        aux_loss = self.loss_coef * (cv_squared(gates.sum(0)) + cv_squared(load))
        return token_gates, aux_loss

    # --- experts ---------------------------------------------------------------------------------------------
    def expert_forward(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Expert ``i`` on its tokens ``x`` (n_i x in)."""
        return self.experts[i](x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``sum_{e in top-k} g_e(x) * Expert_e(x)`` per token; sets ``self.aux_loss``.

        Sparse dispatch: each expert gathers only its tokens (``index_select``) and its gated outputs are added
        back with ``index_add`` (the original's ``SparseDispatcher``).
        """
        shape = x.shape[:-1]
        tokens = x.reshape(-1, self.input_size)
        gates, self.aux_loss = self.route(x)
        out = tokens.new_zeros(tokens.shape[0], self.output_size)
        for i in range(self.n_experts):
            index = gates[:, i].nonzero(as_tuple=True)[0]
            if index.numel() == 0:
                continue
            expert_out = self.expert_forward(i, tokens.index_select(0, index))
            out = out.index_add(0, index, expert_out * gates.index_select(0, index)[:, i:i + 1])
        return out.reshape(*shape, self.output_size)

    @torch.no_grad()
    def upcycle_(self, dense: nn.Linear) -> None:
        """Initialise every expert as a copy of the pretrained dense layer (sparse upcycling; ``load_MoE``)."""
        for expert in self.experts:
            expert.dense.weight.copy_(dense.weight)
            expert.dense.bias.copy_(dense.bias)

    def extra_repr(self) -> str:
        return f"in={self.input_size}, out={self.output_size}, n_experts={self.n_experts}, k={self.k}, " \
               f"moe_level={self.moe_level}"


class PadMoE(MoE):
    """PAD-MoE: partially dynamic experts sharing one mode mask and one static weight (Sec. 3.1, Fig. 1).

    Adds ``phi`` (1, init 0), ``static_fc`` (the static weight ``W_static``; its bias is kept for the original's
    state-dict layout, neither forward uses it: an expert's bias is its own ``b_e``) and the buffer ``mask``
    (out x in, all ones = fully dynamic). ``Lambda``:

    * ``both``: ``2σ(φ) M⊙W_e + (2-2σ(φ)) (1-M)⊙W_static`` (the paper's λ_d, λ_s);
    * ``s`` / ``d``: scale only the static / only the dynamic part;
    * ``none``: ``M⊙W_e + (1-M)⊙W_static`` (no scale factors);
    * ``p``: ``M⊙W_e`` (the pruning baseline: static entries are zero);
    * ``phi``: ``2σ(φ) W_e``, mask ignored (what the original's ``SingleExpert_Pad`` does for any other string,
      its default ``'none'`` included).

    ``pad_forward="released"`` runs the released ``PadMoE``: ``W_e + W_static`` (mask, φ and Lambda unused).
    """

    def __init__(self, input_size: int, output_size: int, n_experts: int = 8, k: int = 2,
                 moe_level: str = "context", noisy_gating: bool = True, Lambda: str = "both",  # noqa: N803
                 pad_forward: str = "paper"):
        super().__init__(input_size, output_size, n_experts, k, moe_level, noisy_gating)
        if Lambda not in LAMBDAS:
            raise ValueError(f"Lambda must be one of {LAMBDAS}, got {Lambda!r}")
        if pad_forward not in PAD_FORWARDS:
            raise ValueError(f"pad_forward must be one of {PAD_FORWARDS}, got {pad_forward!r}")
        self.Lambda, self.pad_forward = Lambda, pad_forward
        self.phi = nn.Parameter(torch.zeros(1))
        self.static_fc = nn.Linear(input_size, output_size)
        self.register_buffer("mask", torch.ones(output_size, input_size))
        self._weight_cache: tuple[tuple, list[torch.Tensor]] | None = None
        self._forward_weights: list[torch.Tensor] | None = None

    def scale_factors(self) -> tuple[torch.Tensor | float, torch.Tensor | float]:
        """``(lambda_d, lambda_s)`` for the Lambda mode (Sec. 3.1: lambda_s + lambda_d = 2, both 1 at phi = 0)."""
        lambda_d = 2 * torch.sigmoid(self.phi)
        if self.Lambda == "both":
            return lambda_d, 2 - lambda_d
        if self.Lambda == "s":
            return 1.0, 2 - lambda_d
        if self.Lambda == "d":
            return lambda_d, 1.0
        if self.Lambda == "none":
            return 1.0, 1.0
        if self.Lambda == "p":
            return 1.0, 0.0
        return lambda_d, None  # "phi": the mask is ignored

    def _weight_key(self) -> tuple:
        """What the computational weights depend on: every input tensor's version counter (bumped by any in-place
        change: an optimizer step, ``load_state_dict``, IMP setting the mask) and identity, and the mode."""
        tensors = [expert.dense.weight for expert in self.experts] + [self.static_fc.weight, self.phi, self.mask]
        return (self.Lambda, self.pad_forward, *((id(t), t._version) for t in tensors))

    def _build_expert_weights(self) -> list[torch.Tensor]:
        weights = [expert.dense.weight for expert in self.experts]
        if self.pad_forward == "released":
            return [weight + self.static_fc.weight for weight in weights]
        lambda_d, lambda_s = self.scale_factors()
        if lambda_s is None:
            return [lambda_d * weight for weight in weights]
        dynamic = lambda_d * self.mask                                        # shared by all experts
        static = lambda_s * (1 - self.mask) * self.static_fc.weight          # shared by all experts
        return [dynamic * weight + static for weight in weights]

    def expert_weights(self) -> list[torch.Tensor]:
        """The computational weights ``W_hat_e`` of all experts (each out x in), built once per forward.

        The parts shared by the experts (``lambda_d M`` and ``lambda_s (1 - M) ⊙ W_static``) are computed once.
        When no gradient is needed (evaluation, ``torch.no_grad``), the weights are kept and reused until one of
        their inputs changes, so evaluation builds them once in all instead of at every batch.
        """
        needs_grad = torch.is_grad_enabled() and (
            self.mask.requires_grad or any(p.requires_grad for p in self.parameters()))
        if needs_grad:
            self._weight_cache = None
            return self._build_expert_weights()
        key = self._weight_key()
        if self._weight_cache is None or self._weight_cache[0] != key:
            self._weight_cache = (key, [w.detach() for w in self._build_expert_weights()])
        return self._weight_cache[1]

    def expert_weight(self, i: int) -> torch.Tensor:
        """The computational weight ``W_hat_i`` of expert ``i`` (out x in)."""
        return self.expert_weights()[i]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._forward_weights = self.expert_weights()
        try:
            return super().forward(x)
        finally:
            self._forward_weights = None

    def expert_forward(self, i: int, x: torch.Tensor) -> torch.Tensor:
        weights = self.expert_weights() if self._forward_weights is None else self._forward_weights
        return F.linear(x, weights[i], self.experts[i].dense.bias)

    @torch.no_grad()
    def upcycle_(self, dense: nn.Linear) -> None:
        """Experts and the static weight all start as the pretrained dense layer (spec b.4 recommendation)."""
        super().upcycle_(dense)
        self.static_fc.weight.copy_(dense.weight)
        self.static_fc.bias.copy_(dense.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, Lambda={self.Lambda}, pad_forward={self.pad_forward}"
