"""Loading the checkpoints of T2T-ViT and networkslab/dynn into :class:`~jeidnn.models.T2TViT` (spec Sec. c).

Three formats, all read with :func:`common.checkpoint.load_checkpoint_file` (``weights_only=True``):

* **ImageNet** ``71.7_T2T_ViT_7.pth.tar`` / ``81.5_T2T_ViT_14.pth.tar`` (yitu-opensource/T2T-ViT): a timm train
  checkpoint. As the original ``load_for_transfer_learning`` does, ``state_dict_ema`` is used when present
  (``use_ema``), else ``state_dict``; ``module.`` is stripped; ``head.*`` is dropped unless the model has 1000
  classes; ``pos_embed`` is bicubic-resized to the model's token grid, CLS entry kept (:func:`resize_pos_embed`).
  The ICs and gates are reported missing.
* **Transfer learning** ``ckpt_{lr}_{wd}_{acc}.pth`` written by ``transfer_learning.py``:
  ``{'net': state dict with 'module.' prefixes, 'acc', 'epoch'}``, the fine-tuned backbone and head. The ICs and
  gates are reported missing (``train_dynn.py`` loads it with ``strict=False``).
* **Full JEI-DNN** weights (backbone, ICs and gates; ``{'net': ...}``, ``{'model': ...}`` or a plain state dict),
  loaded strictly.

About ``pos_embed``: it is a fixed sinusoid that is never trained, so a model built at another size could simply keep
its own table. The original loader instead interpolates the checkpoint's 14x14 table (bicubic, ``align_corners``
False) to the new grid, e.g. 2x2 at SVHN's 32 px, and that interpolated table is what the fine-tuned SVHN backbone,
and JEI-DNN on it, ran with. We follow the original. Anything else that does not fit (another architecture, another
number of classes or image size, a foreign file) is a :class:`~common.checkpoint.CheckpointError` naming the flag
that fixes it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from common.checkpoint import (
    CheckpointError,
    LoadReport,
    compare_state_dict,
    load_checkpoint_file,
    load_state_dict,
    select_state_dict,
)

IMAGENET_NUM_CLASSES = 1000
ARCH_BY_SHAPE = {(7, 256): "t2t_vit_7", (14, 384): "t2t_vit_14"}  # (depth, embed_dim)
DATASETS_BY_CLASSES = {10: "cifar10 or svhn", 100: "cifar100 or cifar100LT"}
EXIT_PREFIXES = ("intermediate_heads.", "gates.")


def _arch_name(depth: int, embed_dim: int) -> str:
    return ARCH_BY_SHAPE.get((depth, embed_dim), f"a T2T-ViT with {depth} blocks and embed_dim {embed_dim}")


def _checkpoint_depth(state: Mapping[str, Tensor]) -> int:
    indices = {int(k.split(".")[1]) for k in state if k.startswith("blocks.") and k.split(".")[1].isdigit()}
    return max(indices) + 1 if indices else 0


def _image_px(num_tokens: int, patch: int = 16) -> int:
    return math.isqrt(num_tokens - 1) * patch


def resize_pos_embed(posemb: Tensor, grid_size: tuple[int, int]) -> Tensor:
    """The original's ``resize_pos_embed``: keep the CLS entry, bicubic-interpolate the square grid to ``grid_size``.

    ``posemb`` is ``[1, 1 + g * g, E]``; the result is ``[1, 1 + grid_size[0] * grid_size[1], E]``.
    """
    cls_pos, grid = posemb[:, :1], posemb[0, 1:]
    old = math.isqrt(grid.shape[0])
    if old * old != grid.shape[0]:
        raise CheckpointError(f"pos_embed has {grid.shape[0]} grid entries, not a square grid; it cannot be resized")
    grid = grid.reshape(1, old, old, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid.float(), size=grid_size, mode="bicubic", align_corners=False).to(posemb.dtype)
    grid = grid.permute(0, 2, 3, 1).reshape(1, grid_size[0] * grid_size[1], -1)
    return torch.cat([cls_pos, grid], dim=1)


def check_compatible(model: nn.Module, state: Mapping[str, Tensor], source: str, check_head: bool = True,
                     check_pos_embed: bool = True) -> None:
    """Explain, before loading, why ``state`` is for another architecture, class count or image size.

    Raises :class:`CheckpointError` naming ``--arch`` / ``--dataset``; differences this does not recognise are left
    to the key-by-key report of the load itself.
    """
    if "cls_token" not in state or not any(k.startswith("tokens_to_token.") for k in state):
        shown = ", ".join(list(state)[:6])
        raise CheckpointError(f"{source} is not a T2T-ViT checkpoint (no cls_token / tokens_to_token weights); "
                              f"its first keys are: {shown}")
    depth, embed_dim = _checkpoint_depth(state), state["cls_token"].shape[-1]
    if (depth, embed_dim) != (len(model.blocks), model.embed_dim):
        theirs, ours = _arch_name(depth, embed_dim), _arch_name(len(model.blocks), model.embed_dim)
        fix = f"pass --arch {theirs}" if theirs in ARCH_BY_SHAPE.values() else "use a t2t_vit_7 / t2t_vit_14 file"
        raise CheckpointError(f"{source} holds {theirs} weights ({depth} blocks, embed_dim {embed_dim}) but the "
                              f"model is {ours}; {fix}")
    if check_head and "head.weight" in state and state["head.weight"].shape[0] != model.num_classes:
        classes = state["head.weight"].shape[0]
        datasets = DATASETS_BY_CLASSES.get(classes)
        fix = f"pass the --dataset it was trained on ({datasets})" if datasets else "pass the matching --dataset"
        raise CheckpointError(f"{source} was trained for {classes} classes but the model has {model.num_classes}; "
                              f"{fix}")
    if check_pos_embed and "pos_embed" in state and state["pos_embed"].shape != model.pos_embed.shape:
        theirs, ours = _image_px(state["pos_embed"].shape[1]), _image_px(model.pos_embed.shape[1])
        raise CheckpointError(f"{source} was made at {theirs} px ({state['pos_embed'].shape[1] - 1} tokens) but the "
                              f"model at {ours} px; SVHN runs at 32 px (--dataset svhn), the CIFAR sets at 224 px")


def _load(model: nn.Module, state: Mapping[str, Tensor], source: str, allowed_missing: Iterable[str]) -> LoadReport:
    """Load non-strictly, but only when the differences are the expected missing keys (prefixes or names)."""
    allowed = tuple(allowed_missing)
    report = compare_state_dict(model, state, source)
    unexplained = [k for k in report.missing if not k.startswith(allowed)]
    if unexplained or report.unexpected or report.mismatched:
        raise CheckpointError(f"the checkpoint does not fit {type(model).__name__}; check --arch and --dataset.\n"
                              f"{report}")
    return load_state_dict(model, state, strict=False, source=source)


def imagenet_filter_fn(state: Mapping[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """Convert a T2T-ViT ImageNet state dict for ``model`` (timm ``checkpoint_filter_fn`` convention).

    Drops ``head.*`` unless ``model`` has 1000 classes and resizes ``pos_embed`` to the model's token grid.
    """
    state = dict(state)
    if model.num_classes != IMAGENET_NUM_CLASSES:
        state.pop("head.weight", None)
        state.pop("head.bias", None)
    if "pos_embed" in state and state["pos_embed"].shape != model.pos_embed.shape:
        state["pos_embed"] = resize_pos_embed(state["pos_embed"], model.tokens_to_token.grid_size)
    return state


def _imagenet(model: nn.Module, checkpoint: Any, source: str, use_ema: bool) -> LoadReport:
    if isinstance(checkpoint, Mapping) and "net" in checkpoint and "state_dict" not in checkpoint:
        raise CheckpointError(f"{source} is a fine-tuned backbone ({{'net', 'acc', 'epoch'}}), not the ImageNet "
                              "T2T-ViT weights; pass it as the fine-tuned checkpoint instead of --weights-path")
    state = imagenet_filter_fn(select_state_dict(checkpoint, prefer_ema=use_ema), model)
    check_compatible(model, state, source)
    allowed = EXIT_PREFIXES + (() if model.num_classes == IMAGENET_NUM_CLASSES else ("head.",))
    return _load(model, state, source, allowed)


def _transfer(model: nn.Module, checkpoint: Any, source: str) -> LoadReport:
    state = select_state_dict(checkpoint)
    check_compatible(model, state, source)
    return _load(model, state, source, EXIT_PREFIXES)


def _jeidnn(model: nn.Module, checkpoint: Any, source: str) -> LoadReport:
    state = select_state_dict(checkpoint)
    check_compatible(model, state, source)
    if not any(k.startswith(EXIT_PREFIXES) for k in state):
        raise CheckpointError(f"{source} has no intermediate_heads / gates: it is a fine-tuned backbone; load it as "
                              "the transfer-learning checkpoint (the ICs and gates are then trained from scratch)")
    return load_state_dict(model, state, strict=True, source=source)


def load_imagenet_pretrained(model: nn.Module, path: str | Path, use_ema: bool = True) -> LoadReport:
    """Load ``71.7_T2T_ViT_7.pth.tar`` / ``81.5_T2T_ViT_14.pth.tar`` as ``transfer_learning.py`` does.

    Returns the report; the ICs and gates (and ``head`` for a non-ImageNet class count) are listed missing.
    """
    return _imagenet(model, load_checkpoint_file(path), str(path), use_ema)


def load_transfer_checkpoint(model: nn.Module, path: str | Path) -> LoadReport:
    """Load a ``transfer_learning.py`` checkpoint ``{'net', 'acc', 'epoch'}``: backbone and head; ICs and gates
    keep their values and are reported missing (Sec. c)."""
    return _transfer(model, load_checkpoint_file(path), str(path))


def load_jeidnn_checkpoint(model: nn.Module, path: str | Path) -> LoadReport:
    """Load full JEI-DNN weights (backbone, ICs, gates) strictly."""
    return _jeidnn(model, load_checkpoint_file(path), str(path))


def load_weights(model: nn.Module, path: str | Path, use_ema: bool = True) -> LoadReport:
    """Load any of the three formats, recognised by their content (module docstring)."""
    checkpoint, source = load_checkpoint_file(path), str(path)
    if isinstance(checkpoint, Mapping) and ("state_dict" in checkpoint or "state_dict_ema" in checkpoint):
        return _imagenet(model, checkpoint, source, use_ema)
    if any(k.startswith(EXIT_PREFIXES) for k in select_state_dict(checkpoint)):
        return _jeidnn(model, checkpoint, source)
    return _transfer(model, checkpoint, source)
