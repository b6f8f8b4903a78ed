"""The pretrained backbone: finding it, loading it, and choosing what trains (spec Sec. b.4, c.1).

The original loads ``jx_vit_base_patch16_224_in21k-e5005f0a.pth`` (timm's v0.1-vitjx release; raw state dict with
timm keys), deletes ``pre_logits.fc.*`` and the 21,843-class ``head.*``, loads the rest with ``strict=False`` and
trains exactly the missing keys (adapters, dispatchers, head), the head re-initialised with std 0.01.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from timm.layers import resample_abs_pos_embed, trunc_normal_
from torch import nn

from common.checkpoint import CheckpointError, LoadReport, load_checkpoint_file, load_state_dict, select_state_dict
from common.errors import UserError

IN21K_FILE = "jx_vit_base_patch16_224_in21k-e5005f0a.pth"
IN21K_URL = f"https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-vitjx/{IN21K_FILE}"
# the original's ``configs.CHECKPOINTS`` key -> (environment variable, default path)
PRETRAINED_KEYS = {"VIT_BASE_IN21K": ("DYT_VIT_BASE_IN21K", Path("~/.cache/dyt") / IN21K_FILE)}
DROPPED_PREFIXES = ("pre_logits.", "head.")


class WeightsError(UserError):
    """Pretrained weights that cannot be found."""


def resolve_finetune(value: str) -> Path:
    """``--finetune``: a path, or the original's key name ``VIT_BASE_IN21K`` (looked up in ``$DYT_VIT_BASE_IN21K``,
    else ``~/.cache/dyt/jx_vit_base_patch16_224_in21k-e5005f0a.pth``)."""
    if value in PRETRAINED_KEYS:
        env, default = PRETRAINED_KEYS[value]
        path = Path(os.environ.get(env) or default).expanduser()
        if not path.is_file():
            raise WeightsError(f"--finetune {value}: {path} does not exist; download {IN21K_URL} and set {env} to "
                               f"its path (or place it at {default}), or pass --finetune PATH")
        return path
    path = Path(value).expanduser()
    if not path.is_file():
        raise WeightsError(f"--finetune {value} does not exist; pass the path of the IN21K ViT weights "
                           f"({IN21K_FILE}) or the key VIT_BASE_IN21K")
    return path


def _depth(state: dict[str, torch.Tensor]) -> int:
    return len({m.group(1) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))})


def checkpoint_filter_fn(state: dict[str, torch.Tensor], model: nn.Module, source: str = "checkpoint"
                         ) -> dict[str, torch.Tensor]:
    """Drop ``pre_logits.*`` and ``head.*``, check that the file is a ViT of the model's size, and resample
    ``pos_embed`` to the model's grid when the image size differs (timm's bicubic resampling)."""
    cfg = model.dyt_config
    patch = state.get("patch_embed.proj.weight")
    qkv = state.get("blocks.0.attn.qkv.weight")
    if patch is None or qkv is None or "pos_embed" not in state:
        raise CheckpointError(f"{source} is not a ViT state dict (no patch_embed.proj.weight / blocks.0.attn.qkv / "
                              "pos_embed); pass the IN21K ViT-B/16 weights to --finetune")
    found = (patch.shape[0], patch.shape[-1], _depth(state))
    wanted = (cfg["embed_dim"], cfg["patch_size"], cfg["depth"])
    if found != wanted:
        raise CheckpointError(f"{source} is a ViT with width {found[0]}, patch {found[1]}, depth {found[2]}, but the "
                              f"model has width {wanted[0]}, patch {wanted[1]}, depth {wanted[2]}; pass weights of "
                              "the same ViT size (ViT-B/16 for vit_base_patch16_224_in21k)")
    out = {k: v for k, v in state.items() if not k.startswith(DROPPED_PREFIXES)}
    if out["pos_embed"].shape != model.pos_embed.shape:
        grid = cfg["img_size"] // cfg["patch_size"]
        out["pos_embed"] = resample_abs_pos_embed(out["pos_embed"], new_size=[grid, grid], num_prefix_tokens=1)
    return out


def load_pretrained_vit(model: nn.Module, path: str | Path) -> LoadReport:
    """Load a jx/timm IN21K ViT file into a DyT model (``strict=False`` semantics); returns the report.

    Keys of another shape than the model's (other than the resampled ``pos_embed``) are a :class:`CheckpointError`.
    """
    state = checkpoint_filter_fn(select_state_dict(load_checkpoint_file(path)), model, str(path))
    report = load_state_dict(model, state, strict=False, source=str(path))
    if report.mismatched:
        raise CheckpointError(f"{path} does not fit the model: {report}")
    return report


def set_trainable(model: nn.Module, report: LoadReport, fulltune: bool = False) -> int:
    """Train only what the checkpoint lacked (adapters, dispatchers, head), or everything with ``fulltune``.

    The head is always trainable; when it came from no checkpoint it is re-initialised as the original does
    (trunc-normal std 0.01, bias 0). Returns the number of trainable parameters.
    """
    missing = set(report.missing)
    for name, param in model.named_parameters():
        param.requires_grad = fulltune or name in missing
    for param in model.head.parameters():
        param.requires_grad = True
    if "head.weight" in missing:
        trunc_normal_(model.head.weight, std=0.01)
        nn.init.zeros_(model.head.bias)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def logged_param_count(model: nn.Module) -> int:
    """What ``main_image.py`` logs as "number of params": trainable tensors whose name lacks "head" (so neither
    the classifier nor the dispatchers' ``mlp_head``): 1,189,632 for ViT-B with bottleneck 64."""
    return sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and "head" not in n)
