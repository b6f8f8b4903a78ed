"""Training and evaluation loops of ADN, in the shape of torchvision's classification reference.

* :func:`train_step`: one self-distillation step, the two-backward scheme of the original
  ``train_one_epoch_twobackward`` (spec Sec. b, "Training objective"): super-net pass, ``alpha * CE``, backward;
  base-net pass, ``(1 - alpha) * (top-K KD [+ feature KD])``, backward. The gradients of both passes accumulate;
  the optimizer is not stepped here.
* :func:`train_one_epoch`: the loop around it with gradient clipping, the optimizer step and the EMA update.
* :func:`evaluate`: top-1 / top-5 / loss of one skip configuration, reduced over processes (spec Sec. e).
* :func:`evaluate_all_skip_cfgs`: accuracy and executed MACs of all 2^S configurations (spec Sec. f, item 12).

These functions are shared by ``adn/train_adn.py`` and the benchmarks; ``model`` may be a bare ADN model,
one wrapped in DistributedDataParallel, an EMA ``AveragedModel``, or (for ``fpn``) a
:class:`~adn.features.StageFeatures` wrapper.
"""

from __future__ import annotations

import csv
import math
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

from adn.features import StageFeatures
from adn.losses import DEFAULT_TOPK, feature_kd_loss, topk_kd_loss
from adn.models import skip_cfg_name
from common.checkpoint import unwrap_model
from common.distributed import all_reduce_sum, is_main_process, reduce_weighted_mean
from common.flops import count_macs

# The attributes train_one_epoch reads from ``args``, with the defaults of adn/train_adn.py.
TRAIN_DEFAULTS: dict[str, Any] = {
    "subpath_alpha": 0.5,
    "subpath_temp": 1.0,
    "subpath_topk": DEFAULT_TOPK,
    "fpn": False,
    "clip_grad_norm": None,
    "model_ema_steps": 32,
    "lr_warmup_epochs": 0,
    "print_freq": 10,
    "train_skip_cfg": None,
    "freeze_params": False,
}


def _uncompiled(model: nn.Module) -> nn.Module:
    """The module inside a ``torch.compile`` wrapper and DDP / DataParallel (``--torch-compile``)."""
    return unwrap_model(getattr(model, "_orig_mod", model))


def core_model(model: nn.Module) -> nn.Module:
    """The ADN model inside ``torch.compile``, DDP / DataParallel, EMA (``AveragedModel``) and
    :class:`StageFeatures` wrappers."""
    while True:
        inner = _uncompiled(model)
        if isinstance(inner, AveragedModel):
            inner = inner.module
        if isinstance(inner, StageFeatures):
            inner = inner.model
        if inner is model:
            return model
        model = inner


def freeze_all_but_classifier(model: nn.Module) -> int:
    """``--freeze_params``: only the classification head stays trainable (``requires_grad``); returns the number
    of trainable parameters. The BatchNorm statistics are kept by :func:`freeze_norm_statistics`."""
    model = core_model(model)
    head = model.classifier_name + "."
    for name, param in model.named_parameters():
        param.requires_grad_(name.startswith(head))
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def freeze_norm_statistics(model: nn.Module) -> None:
    """Put every BatchNorm in evaluation mode, so that training passes use and keep its running statistics."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()


def super_and_base_cfgs(model: nn.Module) -> tuple[tuple[bool, ...], tuple[bool, ...]]:
    """The super-net (every sub-path: all F) and base-net (every skippable sub-path skipped: all T) configurations."""
    num = core_model(model).num_skippable_stages
    return (False,) * num, (True,) * num


def num_correct(output: torch.Tensor, target: torch.Tensor, topk: Sequence[int] = (1, 5)) -> list[torch.Tensor]:
    """How many samples have their label among the top-k predictions, for every k (clipped to the class count).

    Soft targets (mixup / cutmix, shape (B, C)) count their largest entry as the label, as torchvision does.
    """
    if target.dim() == 2:
        target = target.argmax(dim=1)
    maxk = min(max(topk), output.shape[1])
    pred = output.topk(maxk, dim=1, largest=True, sorted=True).indices
    hits = pred.eq(target.unsqueeze(1))
    return [hits[:, : min(k, maxk)].any(dim=1).sum() for k in topk]


def _backward(loss: torch.Tensor, scaler: torch.amp.GradScaler | None) -> None:
    (scaler.scale(loss) if scaler is not None else loss).backward()


def _split_output(output: Any, fpn: bool) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
    if fpn:
        logits, feats = output
        return logits, feats
    return output, None


def train_step(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    criterion: nn.Module,
    alpha: float = 0.5,
    temperature: float = 1.0,
    topk: int = DEFAULT_TOPK,
    fpn: bool = False,
    scaler: torch.amp.GradScaler | None = None,
) -> dict[str, float]:
    """One ADN self-distillation step on a batch: two passes, two backward calls, no optimizer step.

    1. Super-net (all F): ``loss_full = alpha * criterion(z_super, targets)``, backward.
    2. Base-net (all T): ``loss_kd = (1 - alpha) * (topk_kd_loss(z_base, z_super, topk, T) [+ feature_kd])``,
       backward; the gradients add to those of step 1.

    With ``fpn`` the feature KD of :func:`~adn.losses.feature_kd_loss` is added; ``model`` must then be a
    :class:`~adn.features.StageFeatures` (possibly inside DDP); a bare ResNet-ADN is wrapped here. With a
    ``scaler`` both passes run under ``torch.autocast`` on the device of ``images`` and both losses are scaled by
    the same GradScaler (the caller unscales / steps it). The model must be in train mode and its gradients
    zeroed by the caller.

    Returns the unweighted ``ce``, ``kd`` and ``feature_kd`` (0 without ``fpn``), the weighted ``loss_full`` and
    ``loss_kd``, and the top-1 / top-5 training accuracies (percent) of the super-net (``acc1``, ``acc5``) and
    the base-net (``acc1_skip``, ``acc5_skip``).
    """
    if fpn and not isinstance(_uncompiled(model), StageFeatures):
        if _uncompiled(model) is not model:
            raise ValueError("with fpn=True wrap the model in adn.features.StageFeatures before DDP")
        model = StageFeatures(model)
    super_cfg, base_cfg = super_and_base_cfgs(model)
    device_type = images.device.type
    amp = scaler is not None

    with torch.autocast(device_type, enabled=amp):
        logits_super, feats_super = _split_output(model(images, super_cfg), fpn)
        ce = criterion(logits_super, targets)
        loss_full = alpha * ce
    _backward(loss_full, scaler)

    with torch.autocast(device_type, enabled=amp):
        logits_base, feats_base = _split_output(model(images, base_cfg), fpn)
        kd = topk_kd_loss(logits_base, logits_super, k=topk, temperature=temperature)
        feat_kd = feature_kd_loss(feats_super, feats_base, temperature) if fpn else kd.new_zeros(())
        loss_kd = (1.0 - alpha) * (kd + feat_kd)
    _backward(loss_kd, scaler)

    with torch.no_grad():
        batch = images.shape[0]
        correct = num_correct(logits_super, targets) + num_correct(logits_base, targets)
        values = torch.stack([ce.detach().float(), kd.detach().float(), feat_kd.detach().float(),
                              loss_full.detach().float(), loss_kd.detach().float()]
                             + [c.float() * 100.0 / batch for c in correct]).tolist()
    names = ("ce", "kd", "feature_kd", "loss_full", "loss_kd", "acc1", "acc5", "acc1_skip", "acc5_skip")
    return dict(zip(names, values, strict=True))


def train_step_single(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    criterion: nn.Module,
    skip_cfg: str | Sequence[bool],
    scaler: torch.amp.GradScaler | None = None,
) -> dict[str, float]:
    """One ordinary supervised step of the single configuration ``skip_cfg``: CE on the labels, one backward, no
    self-distillation and no other sub-network; the optimizer is not stepped here.

    Training only ``skip_cfg`` this way gives the *individually trained* network of that depth that the paper
    compares its sub-networks with (its README's "+x %p" gains are over such networks): with ``TTTT`` the
    skippable blocks never run, so it is the base-net architecture trained on its own. Returns ``ce`` and the
    top-1 / top-5 training accuracies (percent) of that network (``acc1``, ``acc5``).
    """
    with torch.autocast(images.device.type, enabled=scaler is not None):
        logits = model(images, skip_cfg)
        ce = criterion(logits, targets)
    _backward(ce, scaler)
    with torch.no_grad():
        correct = num_correct(logits, targets)
        values = torch.stack([ce.detach().float()] + [c.float() * 100.0 / images.shape[0] for c in correct]).tolist()
    return dict(zip(("ce", "acc1", "acc5"), values, strict=True))


# train_step key -> the name logged per epoch. "loss_softmax_kd" holds the unweighted top-K KD and "loss_kd" the
# weighted total (1 - alpha) * (KD + feature KD): the original logged that total as "loss_softmax_kd".
EPOCH_METRIC_NAMES = {
    "loss_full": "loss_full_acc",
    "ce": "loss_ce",
    "kd": "loss_softmax_kd",
    "feature_kd": "loss_features_kd",
    "loss_kd": "loss_kd",
    "acc1": "acc1",
    "acc5": "acc5",
    "acc1_skip": "acc1_skip",
    "acc5_skip": "acc5_skip",
}
# the keys of train_step_single (training one configuration, ``train_skip_cfg``)
SINGLE_METRIC_NAMES = {"ce": "loss_ce", "acc1": "acc1", "acc5": "acc5"}


def _hp(args: Any, name: str) -> Any:
    return getattr(args, name, TRAIN_DEFAULTS[name])


def train_one_epoch(
    model: nn.Module,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: Iterable,
    device: torch.device | str,
    epoch: int,
    args: Any,
    model_ema: AveragedModel | None = None,
    scaler: torch.amp.GradScaler | None = None,
) -> dict[str, float]:
    """One epoch of ADN training (the original ``train_one_epoch_twobackward``), with a tqdm progress bar.

    Per batch: zero the gradients, :func:`train_step`, clip the accumulated gradient norm to
    ``args.clip_grad_norm`` (unscaled first under AMP), step the optimizer (through the scaler under AMP), and
    every ``args.model_ema_steps`` batches update ``model_ema``; during the ``args.lr_warmup_epochs`` its
    ``n_averaged`` is reset to 0 so the EMA keeps copying the weights (torchvision's rule).

    ``args`` is any object with the attributes of :data:`TRAIN_DEFAULTS` (missing ones take those defaults):
    ``subpath_alpha``, ``subpath_temp``, ``subpath_topk``, ``fpn``, ``clip_grad_norm``, ``model_ema_steps``,
    ``lr_warmup_epochs``, ``print_freq`` (how often the progress bar's numbers are refreshed), ``train_skip_cfg``
    (None: ADN's self-distillation; a configuration name such as ``"TTTT"``: :func:`train_step_single` instead),
    ``freeze_params`` (the BatchNorm statistics stay frozen: :func:`freeze_norm_statistics`).

    Returns the epoch means over all processes (weighted by batch size): ``loss_full_acc`` (alpha * CE),
    ``loss_ce``, ``loss_softmax_kd`` (top-K KD, unweighted), ``loss_features_kd`` (with fpn), ``loss_kd`` (the
    weighted total (1 - alpha) * (KD + feature KD)), ``acc1``/``acc5`` (super-net) and ``acc1_skip``/
    ``acc5_skip`` (base-net) on the training batches, plus ``lr`` and ``img/s`` (all processes together). With
    ``train_skip_cfg``: ``loss_ce``, ``acc1`` and ``acc5`` of the trained configuration, ``lr`` and ``img/s``.
    """
    model.train()
    if _hp(args, "freeze_params"):
        freeze_norm_statistics(model)
    single = _hp(args, "train_skip_cfg")
    names = SINGLE_METRIC_NAMES if single is not None else EPOCH_METRIC_NAMES
    fpn = bool(_hp(args, "fpn"))
    clip = _hp(args, "clip_grad_norm")
    ema_steps = max(1, int(_hp(args, "model_ema_steps")))
    print_freq = max(1, int(_hp(args, "print_freq")))
    sums = dict.fromkeys(names, 0.0)
    count = 0
    start = time.time()
    progress = tqdm(loader, desc=f"Epoch [{epoch}]", disable=not is_main_process(), dynamic_ncols=True,
                    leave=False)
    for i, (images, targets) in enumerate(progress):
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        if single is not None:
            stats = train_step_single(model, images, targets, criterion, single, scaler=scaler)
        else:
            stats = train_step(model, images, targets, criterion, alpha=_hp(args, "subpath_alpha"),
                               temperature=_hp(args, "subpath_temp"), topk=_hp(args, "subpath_topk"), fpn=fpn,
                               scaler=scaler)
        if scaler is not None:
            if clip is not None:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), clip)
            scaler.step(optimizer)
            scaler.update()
        else:
            if clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), clip)
            optimizer.step()

        if model_ema is not None and i % ema_steps == 0:
            model_ema.update_parameters(core_model(model))
            if epoch < _hp(args, "lr_warmup_epochs"):
                model_ema.n_averaged.fill_(0)

        batch = images.shape[0]
        count += batch
        for key in sums:
            sums[key] += stats[key] * batch
        if i % print_freq == 0:
            losses = ("ce",) if single is not None else ("loss_full", "loss_kd")
            shown = {k: f"{stats[k]:.4f}" for k in losses}
            shown.update({k: f"{stats[k]:.1f}" for k in ("acc1", "acc1_skip") if k in stats})
            progress.set_postfix(**shown, lr=f"{optimizer.param_groups[0]['lr']:.4g}")
    elapsed = time.time() - start
    means = reduce_weighted_mean(sums, count)
    total_images = all_reduce_sum([count])[0].item()
    metrics = {names[k]: v for k, v in means.items() if fpn or k != "feature_kd"}
    metrics["lr"] = optimizer.param_groups[0]["lr"]
    metrics["img/s"] = total_images / max(elapsed, 1e-9)
    return metrics


def evaluate(
    model: nn.Module,
    criterion: nn.Module,
    loader: Iterable,
    device: torch.device | str,
    skip_cfg: str | Sequence[bool] | None = None,
    desc: str | None = None,
) -> dict[str, float]:
    """Top-1 / top-5 accuracy (percent) and mean loss of one skip configuration (spec Sec. e).

    ``skip_cfg`` is a name (``"TFTF"``) or a flag list; ``None`` uses the model's default ``skip_cfg``. The
    sums (correct predictions, loss times batch size, sample count) are reduced over all processes before
    dividing, so the result is the accuracy over every evaluated sample. A distributed sampler that pads the
    dataset makes a few samples count twice; a warning says so.
    """
    model.eval()
    cfg = core_model(model).resolve_skip_cfg(skip_cfg)
    sums = {"loss": 0.0, "correct1": 0.0, "correct5": 0.0}
    count = 0
    progress = tqdm(loader, desc=desc or f"Test {skip_cfg_name(cfg)}", disable=not is_main_process(),
                    dynamic_ncols=True, leave=False)
    with torch.inference_mode():
        for images, targets in progress:
            images = images.to(device, non_blocking=True)
            targets = targets.to(device, non_blocking=True)
            output = model(images, cfg)
            if isinstance(output, tuple):  # a StageFeatures wrapper: (logits, features)
                output = output[0]
            loss = criterion(output, targets)
            c1, c5 = num_correct(output, targets, (1, 5))
            batch = images.shape[0]
            sums["loss"] += loss.item() * batch
            sums["correct1"] += c1.item()
            sums["correct5"] += c5.item()
            count += batch
    means = reduce_weighted_mean(sums, count)
    samples = int(all_reduce_sum([count])[0].item())
    dataset = getattr(loader, "dataset", None)
    if dataset is not None and hasattr(dataset, "__len__") and len(dataset) != samples and is_main_process():
        warnings.warn(f"the dataset has {len(dataset)} samples but {samples} were evaluated (the distributed "
                      "sampler pads to a multiple of the world size); run on one process for exact numbers",
                      stacklevel=2)
    return {"acc1": 100.0 * means["correct1"], "acc5": 100.0 * means["correct5"], "loss": means["loss"],
            "samples": samples}


def _example_input(loader: Any, device: torch.device | str) -> torch.Tensor:
    """One image of the loader's size, as a (1, C, H, W) batch."""
    dataset = getattr(loader, "dataset", None)
    if dataset is not None and len(dataset) > 0:
        image = dataset[0][0]
    else:
        image = next(iter(loader))[0][0]
    return image.unsqueeze(0).to(device)


def evaluate_all_skip_cfgs(
    model: nn.Module,
    criterion: nn.Module,
    loader: Iterable,
    device: torch.device | str,
) -> list[dict[str, Any]]:
    """Accuracy and cost of every skip configuration, super-net first (spec Sec. f, item 12; Sec. e).

    One row per configuration: ``skip_cfg`` (``"FFFF"`` ... ``"TTTT"``), ``acc1``, ``acc5``, ``loss`` and
    ``macs``, the executed multiply-adds for one image of the loader's size (:func:`common.flops.count_macs`:
    convolutions, matrix products and attention; a skipped block costs nothing).
    """
    core = core_model(model)
    example = _example_input(loader, device)
    rows = []
    for name in core.configurations():
        result = evaluate(model, criterion, loader, device, name, desc=f"Test {name}")
        core.eval()
        macs = count_macs(core, example, name).total
        rows.append({"skip_cfg": name, "acc1": result["acc1"], "acc5": result["acc5"], "loss": result["loss"],
                     "macs": macs})
    return rows


TABLE_COLUMNS = ("skip_cfg", "acc1", "acc5", "loss", "macs")


def format_skip_cfg_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The rows of :func:`evaluate_all_skip_cfgs` as a fixed-width text table (MACs in millions)."""
    lines = [f"{'skip_cfg':<10} {'Acc@1':>7} {'Acc@5':>7} {'loss':>8} {'MMACs':>10}"]
    for row in rows:
        lines.append(f"{row['skip_cfg']:<10} {row['acc1']:7.2f} {row['acc5']:7.2f} {row['loss']:8.4f} "
                     f"{row['macs'] / 1e6:10.2f}")
    return "\n".join(lines)


def write_skip_cfg_csv(rows: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Write the rows of :func:`evaluate_all_skip_cfgs` to a CSV file (``macs`` = multiply-adds per image)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=TABLE_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{row[k]:.4f}" if isinstance(row[k], float) and math.isfinite(row[k])
                                 else row[k]) for k in TABLE_COLUMNS})
    return path
