"""The self-distillation objective of ADN (spec Sec. b, "Training objective"; paper Sec. 3.2).

Each training step trains two sub-networks on the same batch:

* the super-net (every sub-path) with the task loss, ``alpha * CE(z_super, y)``;
* the base-net (every skippable sub-path removed) to mimic the super-net, ``(1 - alpha) * (L_KD + L_feat)``,
  with :func:`topk_kd_loss` on the logits and, optionally (``--fpn``), :func:`feature_kd_loss` on the
  globally pooled stage outputs. The base-net never sees the labels.

The teacher (super-net) side is always detached, so the distillation gradient flows only through the base-net
path: the shared mandatory weights and the skip-aware norms.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

DEFAULT_TOPK = 500


def topk_kd_loss(
    base_logits: torch.Tensor,
    super_logits: torch.Tensor,
    k: int = DEFAULT_TOPK,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Top-K logit distillation from the super-net to the base-net (spec Sec. b, step 2).

    ``I`` = indices of the ``k`` largest super-net logits of every sample (sorted in descending order); both
    distributions are re-normalised over ``I`` only::

        p = softmax(z_super[I] / T)          (detached)
        q = log_softmax(z_base[I] / T)
        L = T^2 * sum_b sum_{i in I} p_i (log p_i - q_i) / B        (KLDivLoss, reduction="batchmean")

    ``k`` is clipped to the number of classes, so ``k >= C`` is plain (full-softmax) KD. The original
    hard-codes ``k = 500`` for ImageNet-1k.
    """
    if base_logits.shape != super_logits.shape or base_logits.dim() != 2:
        raise ValueError(f"expected two (batch, classes) logit tensors of the same shape, got "
                         f"{tuple(base_logits.shape)} and {tuple(super_logits.shape)}")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    k = min(k, super_logits.shape[1])
    teacher_top, index = super_logits.detach().topk(k, dim=1, largest=True, sorted=True)
    student_top = base_logits.gather(1, index)
    p = F.softmax(teacher_top / temperature, dim=1)
    log_q = F.log_softmax(student_top / temperature, dim=1)
    return F.kl_div(log_q, p, reduction="batchmean") * temperature * temperature


def pool_features(feature: torch.Tensor) -> torch.Tensor:
    """Global average pooling of a (B, C, H, W) map to (B, C); a (B, C) tensor is returned as it is."""
    if feature.dim() == 4:
        return feature.mean(dim=(2, 3))
    if feature.dim() == 2:
        return feature
    raise ValueError(f"expected a (B, C, H, W) feature map or pooled (B, C) features, got {tuple(feature.shape)}")


def feature_kd_loss(
    super_feats: Sequence[torch.Tensor],
    base_feats: Sequence[torch.Tensor],
    temperature: float = 1.0,
) -> torch.Tensor:
    """Feature-level distillation of ``--fpn`` (spec Sec. b, step 2, "Optional"; spec Sec. f, gotcha 5).

    For every stage output used (the original: ``layer1``-``layer3`` of a ResNet), both maps are globally
    average-pooled to (B, C) and turned into distributions over the **channels**::

        L_feat = sum_l T^2 * KL(softmax(g_l^super / T) || softmax(g_l^base / T)),   batchmean

    The super-net features are the detached teacher. Feature maps (B, C, H, W) are pooled here; already pooled
    (B, C) tensors are used as they are.
    """
    if len(super_feats) != len(base_feats):
        raise ValueError(f"got {len(super_feats)} super-net and {len(base_feats)} base-net feature maps")
    if not super_feats:
        raise ValueError("feature_kd_loss needs at least one pair of feature maps")
    total = base_feats[0].new_zeros(())
    for teacher, student in zip(super_feats, base_feats, strict=True):
        p = F.softmax(pool_features(teacher.detach()) / temperature, dim=1)
        log_q = F.log_softmax(pool_features(student) / temperature, dim=1)
        total = total + F.kl_div(log_q, p, reduction="batchmean") * temperature * temperature
    return total
