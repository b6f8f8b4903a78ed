"""What the dynamic models really buy in wall-clock time: realised speed-up against the ideal one (issue 8, item 2).

For every dynamic model and each of its configurations, inference throughput (images/s) at each ``--batch-sizes``
(batch 1 = ``--batch1-images`` images fed one at a time; their distribution of exits / routes is what a single
request sees), in eval mode without gradients, torch threads = the number of cores, after warm-up, the median of
``--repeats`` rounds; the configurations of a model and its static full model are timed round-robin in the same
process, so a change in the machine's load affects all alike. Each row gives

* realised speed-up = images/s of the configuration / images/s of the static full model,
* ideal speed-up = MACs of the static full model / MACs the configuration executes on the same images
  (:func:`common.flops.count_macs`: skipped blocks, sliced weights, gathered-out tokens and exited samples cost
  nothing), and their ratio realised / ideal, against the issue's target (0.9 for ADN and DS-Net sub-networks,
  0.8 for DyT at r = 0.5 and JEI-DNN at its default lambda).

The models (random-init weights: speed does not depend on them, and there is no fine-tuned checkpoint here):

* ADN ResNet-50 and MobileNetV2: the 16 skip configurations FFFF..TTTT against torchvision's static model;
* DS-Net ``slimmable_mbnet_v1_bn_uniform``: sub-networks 0..13 and the gate-routed dynamic model (argmax routes
  over sub-networks 0-3, the realised route histogram reported) against the ``largest`` widths;
* JEI-DNN T2T-ViT-7 (CIFAR-10 head): the real early-exit forward that drops exited samples from the batch, with
  every sample leaving at exit ``l`` (one row per exit) and with the gates set so that the exit distribution is
  ``--jeidnn-exit-fractions`` (the stand-in for a gate trained at the default lambda 0.7; the realised
  distribution is reported), against the backbone alone;
* DyT ViT-B/16 and PAD-Net ResNet-50 when their subprojects import (skipped with a note otherwise).

Training-step overhead: one optimizer step of each method against plain training of the same backbone (ADN's two
passes, DS-Net's sandwich of four widths, JEI-DNN's GATE and CLASSIFIER phases on the frozen backbone, DyT's
dispatcher pass plus the complete-model pass, PAD-Net's dynamic convolutions), at ``--train-batch-size``.

A configuration below its target is profiled (:func:`explain_shortfall`, ``torch.profiler`` on the same images):
how much faster its MAC-bearing operators (convolutions, matrix products, attention) run than the full model's
against the MAC ratio, and how much of its time goes to operators with no MACs (norms, activations, copies), whose
cost follows the activations' size rather than the MACs; the ``profile`` column and ``speed.md`` carry the finding.

Writes ``speed.csv``, ``speed.md`` and ``speed.png`` to ``--output-dir``.

    python -m benchmarks.speed                            # every model (estimated 8-10 min on 2 quiet CPU cores)
    python -m benchmarks.speed --quick --only adn,jeidnn  # fewer configurations and rounds
    python -m benchmarks.speed --device cuda              # on a GPU (synchronised timing)
"""

from __future__ import annotations

import argparse
import copy
import csv
import os
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from common.errors import ArgumentParser, UserError, run_cli
from common.flops import count_macs

DEFAULT_EXIT_FRACTIONS = (1 / 7,) * 7
CSV_FIELDS = ("paper", "model", "config", "kind", "batch_size", "device", "threads", "repeats", "baseline",
              "macs_per_image", "baseline_macs_per_image", "median_s", "baseline_s", "images_per_s",
              "baseline_images_per_s", "realised_speedup", "ideal_speedup", "efficiency", "target", "meets_target",
              "overhead", "realised", "profile")


class SpeedError(UserError):
    """A bad flag (unknown model, batch size, device or exit distribution)."""


# ------------------------------------------------------------------------------------------------------ suites
@dataclass
class Variant:
    """One configuration: ``forward(x)`` runs it on a batch; ``describe(x)`` says what it did (exits, routes);
    ``prepare(x)`` sets it up for the timed images ``x`` (untimed). The MACs of an input-independent (``static``)
    configuration are counted on one image, those of a dynamic one on all the timed images."""

    name: str
    forward: Callable[[torch.Tensor], Any]
    target: float | None = None
    describe: Callable[[torch.Tensor], str] | None = None
    prepare: Callable[[torch.Tensor], None] | None = None
    static: bool = True


@dataclass
class TrainStep:
    """One training step of the method and of plain training of the same backbone: ``step(x, y)`` each."""

    name: str
    step: Callable[[torch.Tensor, torch.Tensor], Any]
    plain: Callable[[torch.Tensor, torch.Tensor], Any]
    what: str


@dataclass
class Suite:
    """A dynamic model, its static full model (``baseline``) and its configurations, all on ``device``."""

    paper: str
    model: str
    img_size: int
    baseline: Variant
    variants: list[Variant]
    num_classes: int = 1000
    train_steps: list[TrainStep] = field(default_factory=list)


@dataclass
class Settings:
    device: torch.device
    quick: bool
    tiny: bool
    exit_fractions: tuple[float, ...]
    dyt_rate: float = 0.5


def _sgd(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)


def _plain_step(model: nn.Module, output: Callable[[torch.Tensor], torch.Tensor] | None = None):
    """A plain supervised step: CE on ``model(x)`` (or ``output(x)``), backward, SGD."""
    optimizer, criterion = _sgd(model), nn.CrossEntropyLoss()

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        model.train()
        optimizer.zero_grad(set_to_none=True)
        criterion(model(x) if output is None else output(x), y).backward()
        optimizer.step()

    return step


def adn_suites(settings: Settings) -> list[Suite]:
    """ADN (Sec. 3.1): every skip configuration of ResNet-50-ADN and MobileNetV2-ADN vs torchvision's static net."""
    import torchvision

    from adn.engine import train_step
    from adn.models import create_model

    archs = [("resnet_adn_cifar", None, 32)] if settings.tiny else [
        ("resnet50", torchvision.models.resnet50, 224), ("mobilenet_v2", torchvision.models.mobilenet_v2, 224)]
    suites = []
    for arch, static_fn, size in archs:
        torch.manual_seed(0)
        model = create_model(arch).to(settings.device).eval()
        static = (static_fn() if static_fn else create_model(arch)).to(settings.device).eval()
        names = model.configurations()
        if settings.quick:
            names = [names[0], names[len(names) // 2], names[-1]]
        variants = [Variant(name, lambda x, n=name, m=model: m(x, n), 0.9) for name in names]
        baseline = Variant("torchvision static" if static_fn else "FFFF (static stand-in)", static)
        criterion, optimizer = nn.CrossEntropyLoss(), _sgd(model)

        def adn_step(x: torch.Tensor, y: torch.Tensor, model=model, optimizer=optimizer, criterion=criterion) -> None:
            model.train()
            optimizer.zero_grad(set_to_none=True)
            train_step(model, x, y, criterion)
            optimizer.step()

        steps = [TrainStep("ADN two-pass self-distillation", adn_step, _plain_step(static),
                           "super-net CE pass + base-net KD pass, two backward calls, one SGD step")]
        suites.append(Suite("adn", f"{arch}-ADN", size, baseline, variants, 1000, steps))
    return suites


def dsnet_suites(settings: Settings) -> list[Suite]:
    """DS-Net (Sec. 3): the 14 sub-networks (sliced weights) and the gate-routed model vs the largest widths."""
    from timm.loss import SoftTargetCrossEntropy

    from dsnet.engine import sandwich_step
    from dsnet.models import create_model

    name = "slimmable_mbnet_v1_bn_uniform_tiny" if settings.tiny else "slimmable_mbnet_v1_bn_uniform"
    size = 32 if settings.tiny else 224
    torch.manual_seed(0)
    model = create_model(name, num_classes=10 if settings.tiny else 1000).to(settings.device).eval()
    choices = list(range(model.num_choices))
    if settings.quick:
        choices = [0, model.num_choices // 2, model.num_choices - 1]

    def run(mode: str, choice: int | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
        def forward(x: torch.Tensor) -> torch.Tensor:
            model.set_mode(mode, choice)
            return model(x)
        return forward

    def dynamic(x: torch.Tensor) -> torch.Tensor:
        model.set_mode("dynamic")
        model.gate_noise = False
        return model(x)

    def routes(x: torch.Tensor) -> str:
        dynamic(x)
        counts = torch.bincount(model.route.index.flatten().cpu(), minlength=len(model.routing_space)).tolist()
        return "routes " + " / ".join(f"{c}: {n}" for c, n in zip(model.routing_space, counts, strict=True))

    variants = [Variant(f"sub-network {c}", run("uniform", c), 0.9) for c in choices]
    variants.append(Variant("dynamic (gate, argmax routes 0-3)", dynamic, None, routes, static=False))
    teacher = copy.deepcopy(model).eval()
    optimizer, criterion, distill = _sgd(model), nn.CrossEntropyLoss(), SoftTargetCrossEntropy()

    def sandwich(x: torch.Tensor, y: torch.Tensor) -> None:
        model.train()
        optimizer.zero_grad(set_to_none=True)
        sandwich_step(model, teacher, x, y, criterion, distill)
        optimizer.step()
        model.eval()

    largest = run("largest")
    steps = [TrainStep("DS-Net sandwich (Stage I)", sandwich, _plain_step(model, largest),
                       "largest + 2 random + smallest widths, in-place bootstrapping from an EMA teacher (one extra "
                       "no-grad pass); plain = the largest widths alone")]
    return [Suite("dsnet", name, size, Variant("largest", largest), variants, model.num_classes, steps)]


def exit_gates(model: nn.Module, x: torch.Tensor, fractions: Sequence[float]) -> None:
    """Set JEI-DNN's gates so that on ``x`` a fraction ``fractions[l]`` of the samples exits at exit ``l``.

    Each gate ``nn.Linear(4, 1)`` reads the uncertainty features of its IC (Sec. b); it is set to a steep step on
    the first one, ``p_max``: ``a_l = k (p_max - t_l)``, with ``t_l`` between the samples still in the batch that
    should leave at ``l`` (the most confident) and those that go on. The last fraction is the final head's.
    """
    from jeidnn.models.gates import uncertainty_features

    with torch.no_grad():
        _, ic_logits = model(x)
        batch = x.size(0)
        remaining = torch.ones(batch, dtype=torch.bool, device=x.device)
        cumulative, assigned = 0.0, 0
        for level, gate in enumerate(model.gates):
            cumulative += fractions[level]
            want = min(max(int(round(cumulative * batch)) - assigned, 0), int(remaining.sum()))
            p_max = uncertainty_features(ic_logits[level])[:, 0]
            gate.linear.weight.zero_()
            if want == 0:
                gate.linear.bias.fill_(-30.0)
                continue
            candidates = p_max[remaining].sort(descending=True).values
            if want == len(candidates):
                gate.linear.bias.fill_(30.0)
                leave = remaining.clone()
            else:
                upper, lower = float(candidates[want - 1]), float(candidates[want])
                threshold, gap = (upper + lower) / 2, max((upper - lower) / 2, 1e-12)
                gate.linear.weight[0, 0] = 30.0 / gap
                gate.linear.bias.fill_(-30.0 / gap * threshold)
                leave = remaining & (p_max > threshold)
            remaining &= ~leave
            assigned += int(leave.sum())


def jeidnn_suites(settings: Settings) -> list[Suite]:
    """JEI-DNN (Sec. 3): the truly early-exiting forward of T2T-ViT-7 vs its backbone alone."""
    from jeidnn import engine
    from jeidnn.dynn import early_exit_forward
    from jeidnn.models import create_model

    size = 32 if settings.tiny else 224
    torch.manual_seed(0)
    model = create_model("t2t_vit_7", num_classes=10, img_size=size, drop_path_rate=0.0).to(settings.device).eval()
    exits = model.num_exits + 1
    if len(settings.exit_fractions) != exits:
        raise SpeedError(f"--jeidnn-exit-fractions needs {exits} values (exits 0..{exits - 2} and the final head), "
                         f"got {len(settings.exit_fractions)}")

    def backbone(x: torch.Tensor) -> torch.Tensor:
        tokens = model.embed(x)
        for block in model.blocks:
            tokens = block(tokens)
        return model.head(model.normed_cls(tokens))

    def variant(name: str, fractions: Sequence[float], target: float | None) -> Variant:
        """Its own gates (set on the timed images by ``prepare``), swapped into the model before each forward."""
        gates = copy.deepcopy(model.gates)

        def prepare(x: torch.Tensor) -> None:
            model.gates = gates
            exit_gates(model, x, fractions)

        def forward(x: torch.Tensor) -> torch.Tensor:
            model.gates = gates
            return early_exit_forward(model, x)[0]

        def describe(x: torch.Tensor) -> str:
            model.gates = gates
            share = torch.bincount(early_exit_forward(model, x)[1].cpu(), minlength=exits).double() / x.size(0)
            return "exits " + " ".join(f"{s:.2f}" for s in share.tolist())

        return Variant(name, forward, target, describe, prepare, static=False)

    levels = range(exits) if not settings.quick else (0, exits // 2, exits - 1)
    variants = []
    for level in levels:
        onehot = [1.0 if i == level else 0.0 for i in range(exits)]
        name = "final head (all blocks, gates on)" if level == exits - 1 else f"all samples exit at {level}"
        variants.append(variant(name, onehot, None))
    variants.append(variant("default lambda stand-in (exit mix)", settings.exit_fractions, 0.8))

    gated = copy.deepcopy(model)
    engine.freeze_backbone(gated)
    costs = [(level + 1) / exits for level in range(exits)]
    settings_bilevel = engine.BilevelSettings(ce_ic_tradeoff=0.7, costs=costs, bilevel_batch_count=1)
    optimizer = _sgd(gated)

    def phase(kind: str) -> Callable[[torch.Tensor, torch.Tensor], None]:
        def step(x: torch.Tensor, y: torch.Tensor) -> None:
            gated.train()
            optimizer.zero_grad(set_to_none=True)
            final_logits, ic_logits = gated(x)
            if kind == "gate":
                loss = engine.gate_phase_loss(gated, final_logits, ic_logits, y, settings_bilevel)[0]
            else:
                loss = engine.classifier_phase_loss(gated, ic_logits, y, settings_bilevel)[0]
            loss.backward()
            optimizer.step()
        return step

    plain_model = copy.deepcopy(model)

    def plain_output(x: torch.Tensor) -> torch.Tensor:
        tokens = plain_model.embed(x)
        for block in plain_model.blocks:
            tokens = block(tokens)
        return plain_model.head(plain_model.normed_cls(tokens))

    plain = _plain_step(plain_model, plain_output)
    steps = [TrainStep("JEI-DNN GATE phase", phase("gate"), plain,
                       "frozen backbone + all ICs, gate BCE on the oracle exits; plain = backbone fine-tuning"),
             TrainStep("JEI-DNN CLASSIFIER phase", phase("classifier"), plain,
                       "frozen backbone + all ICs, IC CE (gates without grad); plain = backbone fine-tuning")]
    return [Suite("jeidnn", "t2t_vit_7", size, Variant("backbone alone", backbone), variants, 10, steps)]


def set_dispatch_rate(model: nn.Module, x: torch.Tensor, rate: float, seed: int = 0) -> None:
    """Set DyT's MLP token dispatchers so that a fraction ``rate`` of the patch tokens of ``x`` is kept per block.

    Without a fine-tuned checkpoint the dispatcher ``Linear(C, 1)`` (Sec. 3.1; in eval a token is kept when its
    logit is > 0) gets a random direction, and its bias is set, block after block during one forward of ``x``, to
    the ``1 - rate`` quantile of the logits of the tokens that reach it: the rate is controlled, the choice of
    tokens still depends on the input, and later blocks see the tokens the earlier ones really produced.
    """
    generator = torch.Generator().manual_seed(seed)

    def calibrate(module: nn.Module, args: tuple) -> None:
        head = module.mlp_head
        direction = torch.randn(head.in_features, generator=generator).to(head.weight)
        head.weight.copy_(direction[None] / direction.norm())
        scores = (args[0][:, 1:, :] @ head.weight[0]).flatten().float()
        head.bias.fill_(-float(torch.quantile(scores, 1.0 - rate)))

    handles = [blk.mlp_token_select.register_forward_pre_hook(calibrate) for blk in model.blocks
               if blk.mlp_token_select is not None]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()


def dyt_suites(settings: Settings) -> list[Suite]:
    """DyT (Sec. 3.1): the MLP token dispatcher at rate ``r``, gathered (real skipping) and masked, against the
    same backbone and adapters without dispatchers (AdaptFormer, the static full model)."""
    from dyt.losses import DyTLoss
    from dyt.models import build_model

    name, size = ("vit_digits", 32) if settings.tiny else ("vit_base_patch16_224_in21k", 224)
    torch.manual_seed(0)
    model = build_model(name, num_classes=100, ffn_num=64, dispatch="mlp").to(settings.device).eval()
    static = build_model(name, num_classes=100, ffn_num=64, dispatch="none").to(settings.device).eval()
    rate = settings.dyt_rate

    def run(execution: str) -> Callable[[torch.Tensor], torch.Tensor]:
        def forward(x: torch.Tensor) -> torch.Tensor:
            model.execution = execution
            return model(x)[0]
        return forward

    def prepare(x: torch.Tensor) -> None:
        set_dispatch_rate(model, x[:8], rate)

    def kept(x: torch.Tensor) -> str:
        return f"tokens kept {float(model(x)[1]['token_select'].float().mean()):.3f} (MLP dispatch, target {rate})"

    variants = [Variant(f"r={rate} gather", run("gather"), 0.8, kept, prepare, static=False)]
    if not settings.quick:
        variants.append(Variant(f"r={rate} masked (no skipping)", run("masked"), None, kept, prepare, static=False))
    criterion = DyTLoss(token_target_ratio=rate)
    optimizer = _sgd(model)

    def dyt_step(x: torch.Tensor, y: torch.Tensor) -> None:
        model.train()
        optimizer.zero_grad(set_to_none=True)
        logits, aux = model(x)
        complete = model(x, complete_model=True)[0]
        criterion(logits, aux["token_select"], y, complete_logits=complete)[0].backward()
        optimizer.step()
        model.eval()

    steps = [TrainStep("DyT (dispatch pass + complete-model pass)", dyt_step,
                       _plain_step(static, lambda x: static(x)[0]),
                       "Gumbel-masked pass + complete-model pass for the distillation, DyT loss; plain = the same "
                       "backbone and adapters without dispatchers (AdaptFormer), CE")]
    return [Suite("dyt", name, size, Variant("no dispatcher (AdaptFormer)", lambda x: static(x)[0]), variants, 100,
                  steps)]


def padnet_suites(settings: Settings) -> list[Suite]:
    """PAD-Net (Sec. 3): DY-Conv ResNet-50 in training form, PAD-Net in training and deployed form, against the
    static ResNet-50."""
    from padnet.dyconv import deploy as padnet_deploy
    from padnet.dyconv.models import build_model

    prefix = "DyResNet10" if settings.tiny else "DyResNet50"
    size = 32 if settings.tiny else 224
    torch.manual_seed(0)
    static = build_model(prefix.replace("DyResNet", "resnet")).to(settings.device).eval()
    dynamic = build_model(prefix).to(settings.device).eval()
    pad = build_model(f"{prefix}_PAD").to(settings.device).eval()
    deployed = padnet_deploy.deploy(copy.deepcopy(pad)).to(settings.device).eval()
    variants = [Variant("PAD-Net deployed", deployed), Variant("PAD-Net training form", pad),
                Variant("DY-Conv (fully dynamic)", dynamic)]
    steps = [TrainStep("DY-Conv training", _plain_step(dynamic), _plain_step(static),
                       "dynamic convolutions (attention over K kernels); plain = the static ResNet"),
             TrainStep("PAD-Net training", _plain_step(pad), _plain_step(static),
                       "partially dynamic convolutions (static + dynamic parts); plain = the static ResNet")]
    return [Suite("padnet", prefix, size, Variant("static ResNet", static), variants, 1000, steps)]


SUITES: dict[str, tuple[str, Callable[[Settings], list[Suite]]]] = {
    "adn": ("adn.models", adn_suites),
    "dsnet": ("dsnet.models", dsnet_suites),
    "jeidnn": ("jeidnn.models", jeidnn_suites),
    "dyt": ("dyt.models", dyt_suites),
    "padnet": ("padnet.dyconv.deploy", padnet_suites),
}


# ------------------------------------------------------------------------------------------------------ timing
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def batched(forward: Callable[[torch.Tensor], Any], batch_size: int) -> Callable[[torch.Tensor], Any]:
    """At batch 1 the images of ``x`` go through one at a time (a stream of single requests); else as one batch."""
    if batch_size != 1:
        return forward
    return lambda x: [forward(x[i:i + 1]) for i in range(x.size(0))]


def _bind(forward: Callable[[torch.Tensor], Any], x: torch.Tensor) -> Callable[[], Any]:
    return lambda: forward(x)


def time_round_robin(calls: dict[str, Callable[[], Any]], warmup: int, repeats: int, device: torch.device,
                     desc: str = "timing") -> dict[str, list[float]]:
    """Seconds of every call, interleaved: ``warmup`` untimed rounds, then ``repeats`` timed rounds of each."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for r in tqdm(range(warmup + repeats), desc=desc, leave=False, dynamic_ncols=True):
        for name, call in calls.items():
            _sync(device)
            start = time.perf_counter()
            call()
            _sync(device)
            if r >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


MAC_OPERATORS = ("conv", "mm", "matmul", "scaled_dot_product", "einsum")  # aten names of the ops that do the MACs


def op_times(forward: Callable[[torch.Tensor], Any], x: torch.Tensor, device: torch.device) -> dict[str, float]:
    """Self time (s) per aten operator of one ``forward(x)`` under ``torch.profiler`` (device time on a GPU)."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.no_grad(), torch.profiler.profile(activities=activities) as prof:
        forward(x)
        _sync(device)
    field_name = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return {e.key: getattr(e, field_name) / 1e6 for e in prof.key_averages() if getattr(e, field_name) > 0}


def explain_shortfall(baseline: dict[str, float], config: dict[str, float], ideal: float) -> str:
    """Why a configuration's realised speed-up stays below the MAC ratio, from the two operator profiles."""
    def split(ops: dict[str, float]) -> tuple[float, float]:
        mac = sum(t for name, t in ops.items() if any(m in name for m in MAC_OPERATORS))
        return mac, sum(ops.values()) - mac

    base_mac, base_other = split(baseline)
    cfg_mac, cfg_other = split(config)
    top = sorted(config.items(), key=lambda item: -item[1])[:4]
    total = cfg_mac + cfg_other
    return (f"MAC-bearing ops run {base_mac / cfg_mac:.2f}x faster than the full model's for {ideal:.2f}x fewer MACs; "
            f"ops without MACs take {cfg_other / total:.0%} of the time (full model: "
            f"{base_other / (base_mac + base_other):.0%}) and shrink only {base_other / cfg_other:.2f}x; top ops: "
            + ", ".join(f"{name} {t / total:.0%}" for name, t in top))


def measure_inference(suite: Suite, batch_sizes: Sequence[int], batch1_images: int, warmup: int, repeats: int,
                      device: torch.device) -> list[dict[str, Any]]:
    """Rows of the inference table for one suite (module docstring)."""
    rows = []
    for batch_size in batch_sizes:
        images = batch1_images if batch_size == 1 else batch_size
        generator = torch.Generator().manual_seed(batch_size)
        x = torch.randn(images, 3, suite.img_size, suite.img_size, generator=generator).to(device)
        every = [suite.baseline, *suite.variants]
        with torch.no_grad():
            for v in every:
                if v.prepare is not None:
                    v.prepare(x)
            macs = {v.name: count_macs(v.forward, x[:1]).total if v.static else
                    count_macs(batched(v.forward, batch_size), x).total / images for v in every}
            notes = {v.name: v.describe(x) if v.describe else "" for v in every}
            calls = {v.name: _bind(batched(v.forward, batch_size), x) for v in every}
            times = time_round_robin(calls, warmup, repeats, device, f"{suite.model} batch {batch_size}")
        base_s = statistics.median(times[suite.baseline.name])
        for v in every:
            median = statistics.median(times[v.name])
            realised, ideal = base_s / median, macs[suite.baseline.name] / macs[v.name]
            efficiency = realised / ideal
            meets = "" if v.target is None or batch_size == 1 else ("yes" if efficiency >= v.target else "no")
            rows.append({
                "paper": suite.paper, "model": suite.model, "config": v.name, "kind": "inference",
                "batch_size": batch_size, "baseline": suite.baseline.name, "macs_per_image": macs[v.name],
                "baseline_macs_per_image": macs[suite.baseline.name], "median_s": median, "baseline_s": base_s,
                "images_per_s": images / median, "baseline_images_per_s": images / base_s,
                "realised_speedup": realised, "ideal_speedup": ideal, "efficiency": efficiency,
                "target": "" if v.target is None else v.target, "meets_target": meets, "overhead": "",
                "realised": notes[v.name], "profile": ""})
        short = [r for r in rows[-len(every):] if r["meets_target"] == "no"]
        if short:
            base_ops = op_times(batched(suite.baseline.forward, batch_size), x, device)
            by_name = {v.name: v for v in every}
            for row in short:
                ops = op_times(batched(by_name[row["config"]].forward, batch_size), x, device)
                row["profile"] = explain_shortfall(base_ops, ops, row["ideal_speedup"])
    return rows


def measure_training(suite: Suite, batch_size: int, warmup: int, repeats: int, device: torch.device
                     ) -> list[dict[str, Any]]:
    """Rows of the training-overhead table: seconds per step of each method against the plain step."""
    rows = []
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size, 3, suite.img_size, suite.img_size, generator=generator).to(device)
    y = torch.randint(0, suite.num_classes, (batch_size,), generator=generator).to(device)
    for step in suite.train_steps:
        times = time_round_robin({"method": lambda s=step: s.step(x, y), "plain": lambda s=step: s.plain(x, y)},
                                 warmup, repeats, device, f"{suite.model} training")
        method, plain = statistics.median(times["method"]), statistics.median(times["plain"])
        rows.append({"paper": suite.paper, "model": suite.model, "config": step.name, "kind": "train",
                     "batch_size": batch_size, "baseline": "plain training", "macs_per_image": "",
                     "baseline_macs_per_image": "", "median_s": method, "baseline_s": plain,
                     "images_per_s": batch_size / method, "baseline_images_per_s": batch_size / plain,
                     "realised_speedup": "", "ideal_speedup": "", "efficiency": "", "target": "",
                     "meets_target": "", "overhead": method / plain, "realised": step.what})
    return rows


# ------------------------------------------------------------------------------------------------------ output
def _fmt_row(row: dict[str, Any]) -> list[str]:
    return [row["paper"], row["model"], row["config"], str(row["batch_size"]), f"{row['images_per_s']:.1f}",
            f"{row['realised_speedup']:.2f}x", f"{row['ideal_speedup']:.2f}x", f"{row['efficiency']:.2f}",
            str(row["target"] or "-"), row["meets_target"] or "-", row["realised"]]


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown: inference rows, then the training-overhead rows."""
    def md(head, body):
        return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
                         + ["| " + " | ".join(cells) + " |" for cells in body])

    inference = [r for r in rows if r["kind"] == "inference"]
    train = [r for r in rows if r["kind"] == "train"]
    parts = []
    if inference:
        parts.append(md(["paper", "model", "configuration", "batch", "img/s", "realised", "ideal (MACs)",
                         "realised / ideal", "target", "meets", "realised behaviour"],
                        [_fmt_row(r) for r in inference]))
    if train:
        parts.append(md(["paper", "backbone", "training step", "batch", "ms / step", "plain ms / step", "overhead",
                         "what the step runs"],
                        [[r["paper"], r["model"], r["config"], str(r["batch_size"]), f"{1e3 * r['median_s']:.1f}",
                          f"{1e3 * r['baseline_s']:.1f}", f"{r['overhead']:.2f}x", r["realised"]] for r in train]))
    return "\n\n".join(parts)


def write_csv(rows: Sequence[dict[str, Any]], path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row.get(k, "") for k in CSV_FIELDS})


def plot(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """Realised against ideal speed-up, one panel per batch size, with the y = x, 0.9x and 0.8x lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    inference = [r for r in rows if r["kind"] == "inference"]
    sizes = sorted({r["batch_size"] for r in inference})
    fig, axes = plt.subplots(1, len(sizes), figsize=(6 * len(sizes), 5), squeeze=False)
    for ax, size in zip(axes[0], sizes, strict=True):
        top = 1.0
        for model in dict.fromkeys(r["model"] for r in inference):
            sel = [r for r in inference if r["model"] == model and r["batch_size"] == size]
            xs, ys = [r["ideal_speedup"] for r in sel], [r["realised_speedup"] for r in sel]
            top = max(top, *xs, *ys)
            ax.scatter(xs, ys, label=model, s=18)
        line = [0, top * 1.05]
        ax.plot(line, line, "k-", lw=0.8, label="realised = ideal")
        for factor, style in ((0.9, "--"), (0.8, ":")):
            ax.plot(line, [factor * v for v in line], "k" + style, lw=0.7, label=f"{factor} x ideal")
        ax.set_xlabel("ideal speed-up (MAC ratio to the static full model)")
        ax.set_ylabel("realised speed-up (img/s ratio)")
        ax.set_title(f"batch {size}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_markdown(rows: Sequence[dict[str, Any]], path: Path, command: str, header: str, skipped: Sequence[str]
                   ) -> None:
    lines = ["# Speed: realised against ideal speed-up", "", f"Command: `{command}`", "", header, ""]
    lines += [f"- skipped: {note}" for note in skipped] + ([""] if skipped else [])
    lines += [format_table(rows), "", "![speed](speed.png)", ""]
    short = [r for r in rows if r.get("profile")]
    if short:
        lines += ["## Below target: where the time goes (torch.profiler)", ""]
        lines += [f"- {r['model']} {r['config']}, batch {r['batch_size']} ({r['efficiency']:.2f} of ideal): "
                  f"{r['profile']}" for r in short] + [""]
    path.write_text("\n".join(lines))


# ------------------------------------------------------------------------------------------------------ main
def parse_fractions(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise SpeedError(f"--jeidnn-exit-fractions {text!r}: expected comma-separated numbers") from None
    if any(v < 0 for v in values) or abs(sum(values) - 1.0) > 1e-6:
        raise SpeedError(f"--jeidnn-exit-fractions {text!r}: fractions must be >= 0 and sum to 1")
    return values


def check_args(args: argparse.Namespace) -> tuple[list[str], torch.device]:
    names = list(SUITES) if args.only is None else [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in SUITES]
    if unknown or not names:
        raise SpeedError(f"--only {args.only!r}: unknown model(s) {', '.join(unknown) or '(none)'}; choose from "
                         f"{', '.join(SUITES)}")
    if not 0.0 < args.dyt_rate <= 1.0:
        raise SpeedError(f"--dyt-rate {args.dyt_rate}: the kept fraction must lie in (0, 1]")
    if (any(b < 1 for b in args.batch_sizes) or args.repeats < 1 or args.warmup < 0
            or args.batch1_images < 1 or args.train_batch_size < 1):
        raise SpeedError("--batch-sizes, --repeats, --batch1-images and --train-batch-size must be positive, "
                         "--warmup >= 0")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SpeedError(f"--device {args.device}: no CUDA device is available here; use --device cpu")
    try:
        device = torch.device(args.device)
    except RuntimeError:
        raise SpeedError(f"--device {args.device!r}: not a torch device (cpu, cuda, cuda:1)") from None
    return names, device


def main(args: argparse.Namespace) -> int:
    import importlib

    names, device = check_args(args)
    threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    flush = torch.set_flush_denormal(True)  # untrained nets drift towards denormals: the CPU's slow path
    settings = Settings(device, args.quick, args.tiny, parse_fractions(args.jeidnn_exit_fractions), args.dyt_rate)
    warmup, repeats = args.warmup, args.repeats
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    command = "python -m benchmarks.speed " + shlex.join(sys.argv[1:])
    rows: list[dict[str, Any]] = []
    skipped = []
    try:
        for name in tqdm(names, desc="speed", unit="paper", dynamic_ncols=True):
            requires, build = SUITES[name]
            try:
                importlib.import_module(requires)
            except ImportError as err:
                skipped.append(f"{name}: {requires} does not import yet ({err})")
                tqdm.write(f"skipping {name}: {skipped[-1]}")
                continue
            for suite in build(settings):
                rows += measure_inference(suite, args.batch_sizes, args.batch1_images, warmup, repeats, device)
                if args.train and suite.train_steps:
                    rows += measure_training(suite, args.train_batch_size, min(warmup, 1), max(2, repeats // 2),
                                             device)
                tqdm.write(format_table([r for r in rows if r["model"] == suite.model]))
    finally:
        torch.set_flush_denormal(False)
    for row in rows:
        row.update(device=str(device), threads=threads, repeats=repeats)
    header = (f"Device {device}, {threads} torch thread(s), denormals flushed: {flush}; median of {repeats} "
              f"round-robin rounds after {warmup} warm-up round(s); batch 1 = {args.batch1_images} images one at a "
              "time. Realised = img/s ratio to the static full model in the same process; ideal = MAC ratio "
              "(common.flops.count_macs on the same images).")
    if not rows:
        raise SpeedError("nothing was measured: " + "; ".join(skipped))
    write_csv(rows, output_dir / "speed.csv")
    plot(rows, output_dir / "speed.png")
    write_markdown(rows, output_dir / "speed.md", command, header, skipped)
    print(format_table(rows))
    short = [r for r in rows if r["meets_target"] == "no"]
    print(f"wrote {output_dir / 'speed.md'}; {len(short)} configuration(s) below their target")
    return 0


def get_args_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="speed", description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default=None, metavar="P1,P2", help=f"models to time (default: all of "
                        f"{', '.join(SUITES)})")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32], help="default: %(default)s")
    parser.add_argument("--batch1-images", type=int, default=8,
                        help="images timed one at a time for batch 1 (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help="three configurations per model and fewer rounds")
    parser.add_argument("--tiny", action="store_true", help="the proxies' small models at 32x32 (smoke tests)")
    parser.add_argument("--train", action=argparse.BooleanOptionalAction, default=True,
                        help="also time the training-step overhead (default: on)")
    parser.add_argument("--train-batch-size", type=int, default=8, help="batch of the training steps (default: "
                        "%(default)s)")
    parser.add_argument("--jeidnn-exit-fractions", default=",".join(f"{v:.6f}" for v in DEFAULT_EXIT_FRACTIONS),
                        help="JEI-DNN's exit distribution (exits 0..5, final) standing in for a gate trained at the "
                        "default lambda (default: uniform)")
    parser.add_argument("--dyt-rate", type=float, default=0.5,
                        help="DyT's fraction of kept tokens per block, set on the dispatchers (default: %(default)s)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default 0: one per core)")
    parser.add_argument("--output-dir", default="results", help="where speed.csv/.md/.png go (default: %(default)s)")
    return parser


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser().parse_args(), prog="speed"))
