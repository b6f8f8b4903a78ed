"""DyT's video evaluation and FLOPs (the original ``engine_finetune.evaluate_video`` and ``block_flops_dict.py``).

Training a clip model needs nothing new: :func:`dyt.engine.train_one_epoch` runs the dynamic and the complete pass
of :class:`dyt.models.video_vision_transformer.VideoVisionTransformer` on ``[B, 3, T, H, W]`` clips with the same
loss (the rate term is the mean over every frame's masks, as in the original).

* :func:`evaluate_video`: multi-view testing. A batch holds ``[B, V, 3, T, H, W]`` (V views per video: K400 1
  spatial x 3 temporal, SSv2 3 spatial x 1 temporal); the V clips run as one batch and their **logits are
  averaged** per video; top-1 / top-5 and the loss are per video. Masks are hard (eval mode).
* FLOPs, the original accounting (:mod:`dyt.flops`): the original logs them **per frame**, ``base + sum_l
  table[kept_l + 1]`` with ``base`` = patch embedding + final norm + head, averaged over every evaluated frame,
  then "Rate = flops / 17.6" (17.6 GFLOPs: ViT-B/16 on one 224 image). A clip costs its T frames' blocks plus
  the attentive pooling and one head (:func:`clip_flops`); a video costs V clips. The per-clip figures reproduce
  the reference manifest of the ViT-B/16 K400 model (144.39 GFLOPs with every token, 99.96 at rate 0.5).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from common.distributed import all_reduce_sum
from dyt.engine import autocast, progress_bar, topk_correct
from dyt.flops import GIGA, LN_PER_ELEMENT, complete_flops, layer_rates, sample_flops, uniform_rate_flops

VIT_B_GFLOPS = 17.6  # the original's "Rate = flops / 17.6": ViT-B/16 on one 224x224 image


def head_flops(model: nn.Module) -> float:
    """GFLOPs of the classifier (part of the per-frame ``base`` of the original accounting)."""
    cfg = model.dyt_config
    return cfg["embed_dim"] * max(cfg["num_classes"], 0) / GIGA


def attentive_pool_flops(model: nn.Module, num_frames: int) -> float:
    """GFLOPs of the attentive pooling over ``num_frames`` frames of N tokens (fvcore's rules: q on the query,
    k and v on all T*N tokens, three LayerNorms, ``q k^T`` and ``a v``, the output projection)."""
    c, tokens = model.embed_dim, num_frames * model.num_tokens
    projections = c * c + 2 * tokens * c * c + c * c
    norms = LN_PER_ELEMENT * (1 + 2 * tokens) * c
    attention = 2 * tokens * c
    return (projections + norms + attention) / GIGA


def clip_flops(model: nn.Module, frame_gflops: torch.Tensor, num_frames: int) -> torch.Tensor:
    """Per-clip GFLOPs from per-frame GFLOPs ``[B*T]`` (clip-major): the T frames without their head, plus the
    attentive pooling and one head."""
    per_clip = frame_gflops.double().reshape(-1, num_frames).sum(dim=1)
    return per_clip - num_frames * head_flops(model) + attentive_pool_flops(model, num_frames) + head_flops(model)


def complete_clip_flops(model: nn.Module, num_frames: int) -> float:
    """GFLOPs of one clip with every token through every MLP (the complete model; AdaptFormer's cost)."""
    frame = torch.tensor([complete_flops(model)] * num_frames, dtype=torch.float64)
    return clip_flops(model, frame, num_frames).item()


def uniform_rate_clip_flops(model: nn.Module, rate: float, num_frames: int) -> float:
    """The manifests' uniform-rate estimate of one clip: every frame at :func:`dyt.flops.uniform_rate_flops`."""
    frame = torch.tensor([uniform_rate_flops(model, rate)] * num_frames, dtype=torch.float64)
    return clip_flops(model, frame, num_frames).item()


@torch.no_grad()
def evaluate_video(model: nn.Module, loader: Iterable, device: torch.device, desc: str = "Test") -> dict[str, Any]:
    """Multi-view evaluation of a video model; every sum is reduced over processes.

    ``loader`` yields ``(views [B, V, 3, T, H, W], targets [B])``. Returns ``acc1`` / ``acc5`` / ``metric``
    (percent, per video, on the view-averaged logits), ``loss`` (CE of the averaged logits), ``samples``
    (videos), ``views``, ``frames`` (frames evaluated), ``activation_rate`` and ``layer_rates`` (mean mask over
    frames, tokens and layers / per layer), ``flops`` (GFLOPs per frame, the original's figure), ``rate``
    (``flops / 17.6``), ``clip_flops`` and ``video_flops`` (GFLOPs per clip and per video, V clips).
    """
    model.eval()
    ce = nn.CrossEntropyLoss(reduction="sum")
    correct1 = correct5 = loss_sum = 0.0
    frame_flops_sum = clip_flops_sum = rate_sum = 0.0
    videos = clips = frames = 0
    layer_sum: torch.Tensor | None = None
    views = 0
    for clips_batch, targets in progress_bar(loader, desc):
        if clips_batch.dim() != 6:
            raise ValueError(f"evaluate_video needs [B, V, 3, T, H, W] views, got {tuple(clips_batch.shape)}")
        b, views, _, t = clips_batch.shape[:4]
        clips_batch, targets = clips_batch.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        with autocast(device):
            logits, aux = model(clips_batch.flatten(0, 1))
        logits = logits.float().view(b, views, -1).mean(dim=1)
        loss_sum += ce(logits, targets).item()
        top1, top5 = topk_correct(logits, targets)
        correct1, correct5 = correct1 + top1, correct5 + top5
        select = aux["token_select"]  # [B*V*T, L, N-1, 1]
        per_layer = layer_rates(select).double().cpu() * select.shape[0]
        layer_sum = per_layer if layer_sum is None else layer_sum + per_layer
        rate_sum += select.float().flatten(1).mean(dim=1).sum().item()
        per_frame = sample_flops(model, aux).double()
        frame_flops_sum += per_frame.sum().item()
        clip_flops_sum += clip_flops(model, per_frame, t).sum().item()
        videos, clips, frames = videos + b, clips + b * views, frames + select.shape[0]
    num_layers = 0 if layer_sum is None else len(layer_sum)
    head = torch.tensor([videos, clips, frames, correct1, correct5, loss_sum, frame_flops_sum, clip_flops_sum,
                         rate_sum], dtype=torch.float64)
    total = all_reduce_sum(torch.cat([head, layer_sum if layer_sum is not None else torch.zeros(0)]))
    n_videos, n_clips, n_frames = (max(total[i].item(), 1.0) for i in range(3))
    stats: dict[str, Any] = {
        "acc1": 100.0 * total[3].item() / n_videos,
        "acc5": 100.0 * total[4].item() / n_videos,
        "loss": total[5].item() / n_videos,
        "samples": int(total[0].item()),
        "views": views,
        "frames": int(total[2].item()),
        "flops": total[6].item() / n_frames,
        "clip_flops": total[7].item() / n_clips,
        "video_flops": total[7].item() / n_videos,
        "activation_rate": total[8].item() / n_frames,
        "layer_rates": (total[9:9 + num_layers] / n_frames).tolist(),
    }
    stats["metric"] = stats["acc1"]
    stats["rate"] = stats["flops"] / VIT_B_GFLOPS
    return stats
