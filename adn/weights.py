"""Weights for ``--test-only --weights FILE``: the released files and our own training checkpoints (spec Sec. c).

The released ADN checkpoints are plain state dicts with exactly the keys of the model (no ``module.`` prefix, no
``n_averaged``, no wrapper), loaded strictly. ``train_adn.py`` writes training checkpoints instead
(``checkpoint.pth``, ``model_<epoch>.pth``): ``{"model": ..., "model_ema": ..., "optimizer": ..., ...}``.
:func:`released_state_dict` turns either into the released format (spec Sec. f, gotcha 9), with the key
conversion of :func:`adn.models.convert.from_training_checkpoint` and errors a user can act on.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from adn.models.convert import from_training_checkpoint
from common.checkpoint import CheckpointError, load_checkpoint_file, load_state_dict


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def released_state_dict(checkpoint: Any, use_ema: bool = False) -> dict[str, torch.Tensor]:
    """The plain model state dict inside ``checkpoint``, in the released format.

    * a plain state dict is returned as it is;
    * a training checkpoint gives its ``model_ema`` entry when ``use_ema`` (``AveragedModel`` keys: the
      ``module.`` prefix is stripped and ``n_averaged`` dropped), else its ``model`` entry (a ``module.``
      prefix left by DistributedDataParallel is stripped too).

    Raises :class:`~common.checkpoint.CheckpointError` when no such entry exists.
    """
    if _is_state_dict(checkpoint):
        return dict(checkpoint)
    if not isinstance(checkpoint, Mapping):
        raise CheckpointError(f"expected a state dict or a training checkpoint, got a {type(checkpoint).__name__}")
    entry = "model_ema" if use_ema else "model"
    if entry not in checkpoint or not _is_state_dict(checkpoint[entry]):
        have = ", ".join(map(str, list(checkpoint)[:10]))
        hint = " (it was saved without --model-ema; drop --model-ema)" if use_ema and "model" in checkpoint else ""
        raise CheckpointError(f"the checkpoint has no '{entry}' state dict{hint}; its top-level keys are: {have}")
    return from_training_checkpoint(checkpoint, use_ema=use_ema)


def load_weights(model: nn.Module, path: str | Path, use_ema: bool = False) -> None:
    """Load a released state dict or a training checkpoint (see :func:`released_state_dict`) strictly.

    A missing or corrupt file, or weights of another model, raise a
    :class:`~common.checkpoint.CheckpointError` with the missing / unexpected / mismatched keys.
    """
    state = released_state_dict(load_checkpoint_file(path), use_ema=use_ema)
    load_state_dict(model, state, strict=True, source=str(path))
