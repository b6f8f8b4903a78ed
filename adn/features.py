"""Stage outputs for the feature-level self-distillation of ``--fpn`` (spec Sec. b and Sec. d).

The original wrapped a freshly built ``resnet50`` (whatever ``--model`` said) in an ``IntermediateLayerGetter``
that returned the globally pooled outputs of ``layer1``-``layer3``. :class:`StageFeatures` wraps the model that
was actually chosen, any :class:`~adn.models.ResNetADN`, and returns the logits together with the pooled
outputs of every stage but the last (``layer1``-``layer3`` for a 4-stage ResNet, as in the paper release).

Its ``forward`` runs through the wrapper, so that under DistributedDataParallel (which wraps this module) the
gradient synchronisation sees the whole computation. The wrapper has no parameters or buffers of its own: its
state dict is the wrapped model's with a ``model.`` prefix, and checkpoints always store the wrapped model.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from adn.losses import pool_features


class StageFeatures(nn.Module):
    """``forward(x, skip_cfg) -> (logits, [pooled stage outputs])`` for a model with ``forward_features``.

    ``stages`` picks the stage indices whose outputs are returned (default: every stage but the last).
    """

    def __init__(self, model: nn.Module, stages: Sequence[int] | None = None):
        super().__init__()
        if not hasattr(model, "forward_features") or not hasattr(model, "forward_head"):
            raise TypeError(f"{type(model).__name__} has no forward_features/forward_head")
        self.model = model
        num = model.num_skippable_stages
        self.stages = list(range(num - 1)) if stages is None else list(stages)
        if not self.stages or any(not 0 <= s < num for s in self.stages):
            raise ValueError(f"stages must be a non-empty subset of 0..{num - 1}, got {self.stages}")

    def forward(self, x: torch.Tensor, skip_cfg=None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        last, outputs = self.model.forward_features(x, skip_cfg)
        if not isinstance(outputs, (list, tuple)):
            raise TypeError(f"{type(self.model).__name__}.forward_features must return (last map, stage outputs) "
                            "for feature distillation")
        return self.model.forward_head(last), [pool_features(outputs[s]) for s in self.stages]
