"""Optimizer, learning-rate schedule and EMA of ``adn/train_adn.py``: torchvision's classification recipe.

The original ``train_adn.py`` builds these exactly as torchvision's ``references/classification/train.py``
(spec Sec. d, flags ``--opt``, ``--lr-scheduler``, ``--lr-warmup-*``, ``--*-weight-decay``, ``--model-ema*``;
spec Sec. b for the EMA decay). One fix: the ``--transformer-embedding-decay`` keys include ViT's
``pos_embedding`` (spec Sec. f, gotcha 6), which the original's list (``class_token``, ``position_embedding``,
``relative_position_bias_table``) missed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from common.errors import UserError

NORM_CLASSES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._BatchNorm,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.LocalResponseNorm,
)
# Parameter names that --transformer-embedding-decay applies to: ViT's class token and position embedding (named
# ``pos_embedding`` in torchvision's ViT), the original's ``position_embedding``, and Swin's bias tables.
EMBEDDING_KEYS = ("class_token", "pos_embedding", "position_embedding", "relative_position_bias_table")
OPTIMIZERS = ("sgd", "sgd_nesterov", "rmsprop", "adamw")
LR_SCHEDULERS = ("steplr", "multisteplr", "cosineannealinglr", "exponentiallr")
WARMUP_METHODS = ("linear", "constant")


def set_weight_decay(
    model: nn.Module,
    weight_decay: float,
    norm_weight_decay: float | None = None,
    custom_keys_weight_decay: Sequence[tuple[str, float]] | None = None,
    norm_classes: tuple[type[nn.Module], ...] = NORM_CLASSES,
) -> list[dict[str, Any]]:
    """Parameter groups with their own weight decay (torchvision's ``utils.set_weight_decay``).

    A parameter whose own name (or, for a key with a dot, its dotted path) equals a custom key goes to that key's
    group; otherwise a parameter of a norm layer goes to the ``norm_weight_decay`` group when that is given;
    everything else gets ``weight_decay``. Empty groups are dropped; frozen parameters are left out.
    """
    custom = dict(custom_keys_weight_decay or [])
    groups: dict[str, list[nn.Parameter]] = {"other": [], "norm": [], **{key: [] for key in custom}}
    decay: dict[str, float | None] = {"other": weight_decay, "norm": norm_weight_decay, **custom}

    def visit(module: nn.Module, prefix: str) -> None:
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            path = f"{prefix}.{name}" if prefix else name
            key = next((k for k in custom if k == (path if "." in k else name)), None)
            if key is not None:
                groups[key].append(param)
            elif norm_weight_decay is not None and isinstance(module, norm_classes):
                groups["norm"].append(param)
            else:
                groups["other"].append(param)
        for child_name, child in module.named_children():
            visit(child, f"{prefix}.{child_name}" if prefix else child_name)

    visit(model, "")
    return [{"params": params, "weight_decay": decay[key]} for key, params in groups.items() if params]


def parameter_groups(model: nn.Module, args: Any) -> list[dict[str, Any]]:
    """The groups of :func:`set_weight_decay` for ``--wd``, ``--norm-weight-decay``, ``--bias-weight-decay`` and
    ``--transformer-embedding-decay``."""
    custom: list[tuple[str, float]] = []
    if args.bias_weight_decay is not None:
        custom.append(("bias", args.bias_weight_decay))
    if args.transformer_embedding_decay is not None:
        custom += [(key, args.transformer_embedding_decay) for key in EMBEDDING_KEYS]
    return set_weight_decay(model, args.weight_decay, norm_weight_decay=args.norm_weight_decay,
                            custom_keys_weight_decay=custom or None)


def build_optimizer(params: Iterable[Any], args: Any) -> torch.optim.Optimizer:
    """``--opt``: ``sgd`` (Nesterov when the name contains ``nesterov``), ``rmsprop`` (eps 0.0316, alpha 0.9), or
    ``adamw``; ``--lr``, ``--momentum``, ``--wd`` as in torchvision."""
    name = args.opt.lower()
    if name.startswith("sgd"):
        return torch.optim.SGD(params, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay,
                               nesterov="nesterov" in name)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay,
                                   eps=0.0316, alpha=0.9)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
    raise UserError(f"--opt {args.opt} is not supported; choose one of: {', '.join(OPTIMIZERS)}")


def build_lr_scheduler(optimizer: torch.optim.Optimizer, args: Any) -> torch.optim.lr_scheduler.LRScheduler:
    """``--lr-scheduler`` (stepped once per epoch), preceded by ``--lr-warmup-epochs`` of linear or constant
    warm-up (``--lr-warmup-decay`` is the starting factor) through ``SequentialLR``."""
    name = args.lr_scheduler.lower()
    sched = torch.optim.lr_scheduler
    if name == "steplr":
        main = sched.StepLR(optimizer, step_size=args.lr_step_size, gamma=args.lr_gamma)
    elif name == "multisteplr":
        main = sched.MultiStepLR(optimizer, milestones=args.lr_multi_steps, gamma=args.lr_gamma)
    elif name == "cosineannealinglr":
        main = sched.CosineAnnealingLR(optimizer, T_max=args.epochs - args.lr_warmup_epochs, eta_min=args.lr_min)
    elif name == "exponentiallr":
        main = sched.ExponentialLR(optimizer, gamma=args.lr_gamma)
    else:
        raise UserError(f"--lr-scheduler {args.lr_scheduler} is not supported; choose one of: "
                        f"{', '.join(LR_SCHEDULERS)}")
    if args.lr_warmup_epochs <= 0:
        return main
    method = args.lr_warmup_method.lower()
    if method == "linear":
        warmup = sched.LinearLR(optimizer, start_factor=args.lr_warmup_decay, total_iters=args.lr_warmup_epochs)
    elif method == "constant":
        warmup = sched.ConstantLR(optimizer, factor=args.lr_warmup_decay, total_iters=args.lr_warmup_epochs)
    else:
        raise UserError(f"--lr-warmup-method {args.lr_warmup_method} is not supported; choose one of: "
                        f"{', '.join(WARMUP_METHODS)}")
    return sched.SequentialLR(optimizer, schedulers=[warmup, main], milestones=[args.lr_warmup_epochs])


def ema_decay(decay: float, world_size: int, batch_size: int, ema_steps: int, epochs: int) -> float:
    """The per-update EMA decay of torchvision's recipe (spec Sec. b, EMA).

    ``1 - min(1, (1 - decay) * world_size * batch_size * ema_steps / epochs)``: the adjustment keeps the
    averaging horizon independent of the number of GPUs, the batch size, the update interval and the epochs.
    """
    adjust = world_size * batch_size * ema_steps / epochs
    return 1.0 - min(1.0, (1.0 - decay) * adjust)


class ExponentialMovingAverage(AveragedModel):
    """EMA of the parameters and buffers (``use_buffers=True``): ``avg = decay * avg + (1 - decay) * param``.

    ``AveragedModel`` copies the model at the first update (``n_averaged == 0``); the training loop resets
    ``n_averaged`` during warm-up so the EMA keeps copying. Its state dict has the keys ``module.<key>`` and
    ``n_averaged``, the original's ``model_ema`` checkpoint entry.
    """

    def __init__(self, model: nn.Module, decay: float, device: torch.device | str = "cpu"):
        def ema_avg(averaged: torch.Tensor, current: torch.Tensor, num_averaged: torch.Tensor) -> torch.Tensor:
            return decay * averaged + (1.0 - decay) * current

        super().__init__(model, device=device, avg_fn=ema_avg, use_buffers=True)
        self.decay = decay
