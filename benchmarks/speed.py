"""What the dynamic models really buy in wall-clock time: realised speed-up against the ideal (MAC-ratio) one.

Each dynamic model's configurations and its static full model are timed together by
:func:`benchmarks.timing.time_interleaved` at each ``--batch-sizes`` (batch 1 = ``--batch1-images`` images fed
one at a time: the exits / routes a single request sees). Each row gives

* realised speed-up = images/s of the configuration / images/s of the static full model,
* ideal speed-up = MACs of the static full model / MACs the configuration executes on the same images
  (:func:`common.flops.count_macs`: skipped blocks, sliced weights, gathered-out tokens and exited samples cost
  nothing), their ratio realised / ideal and whether it ``meets`` the target at batch > 1: 0.9 for ADN's skip
  configurations and DS-Net's sub-networks, 0.8 for DyT's gathered execution at r = 0.5 and JEI-DNN at its
  default lambda.

The models (random-init weights: speed does not depend on them; one ``*_suites`` function each): ADN's skip
configurations, DS-Net's sub-networks and gate-routed model, JEI-DNN's early-exit forward (exits set by
:func:`exit_gates`), DyT's token dispatcher gathered and masked (rate set by :func:`set_dispatch_rate`), PAD-Net
deployed and in training form and DY-Conv. A configuration below its target is profiled
(:func:`explain_shortfall`, ``torch.profiler`` on the same images): how much faster its MAC-bearing operators
run than the full model's, against the MAC ratio, and how much time goes to operators without MACs (norms,
activations, copies). ``--quick`` (``make demo``) times the smaller model of each paper (MobileNetV2 for ADN and
PAD-Net, the 4-block ViT-Ti at 224 px for DyT) and the first and last configurations; ``--tiny`` the
proxies' 32 px models. Writes ``speed.csv``, ``speed.md`` and ``speed.png`` to ``--output-dir``.

    python -m benchmarks.speed                               # every model (make speed)
    python -m benchmarks.speed --quick --output-dir results  # make demo's stage
    python -m benchmarks.speed --only adn,dyt --device cuda  # on a GPU (synchronised timing)
"""

from __future__ import annotations

import argparse
import copy
import functools
import os
import shlex
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from benchmarks.tables import machine_info, markdown_table, write_csv
from benchmarks.timing import fixed_threads, time_interleaved
from common.errors import ArgumentParser, UserError, run_cli
from common.flops import count_macs

PAPERS = ("adn", "dsnet", "jeidnn", "dyt", "padnet")
CSV_FIELDS = ("paper", "model", "config", "kind", "batch_size", "device", "threads", "repeats", "baseline",
              "macs_per_image", "baseline_macs_per_image", "median_s", "baseline_s", "images_per_s",
              "baseline_images_per_s", "realised_speedup", "ideal_speedup", "efficiency", "target", "meets_target",
              "realised", "profile", "images_per_s_low", "images_per_s_high")
MAC_OPERATORS = ("conv", "mm", "matmul", "scaled_dot_product", "einsum")  # aten names of the ops that do the MACs


@dataclass
class Variant:
    """One configuration: ``forward(x)`` runs it; ``prepare(x)`` sets it up for the timed images (untimed);
    ``describe(x)`` says what it did (exits, routes). A ``static`` one's MACs are counted on one image."""

    name: str
    forward: Callable[[torch.Tensor], Any]
    target: float | None = None
    describe: Callable[[torch.Tensor], str] = lambda x: ""
    prepare: Callable[[torch.Tensor], None] = lambda x: None
    static: bool = True


@dataclass
class Suite:
    """A dynamic model, its static full model (``baseline``) and its configurations."""

    paper: str
    model: str
    img_size: int
    baseline: Variant
    variants: list[Variant]


@dataclass
class Settings:
    device: torch.device
    quick: bool = False
    tiny: bool = False
    exit_fractions: tuple[float, ...] = (1 / 7,) * 7
    dyt_rate: float = 0.5


def pick(names: Sequence[Any], quick: bool) -> list[Any]:
    """Every configuration, or with ``quick`` the first and the last (the extremes of each model)."""
    return [names[0], names[-1]] if quick and len(names) > 2 else list(names)


# ------------------------------------------------------------------------------------------------------ suites
def adn_suites(settings: Settings) -> list[Suite]:
    """ADN (Sec. 3.1): the skip configurations of ResNet-50-ADN / MobileNetV2-ADN against torchvision's static net."""
    import torchvision

    from adn.models import create_model

    suites = []
    for arch in ["resnet_adn_cifar"] if settings.tiny else ["mobilenet_v2"] if settings.quick else [
            "resnet50", "mobilenet_v2"]:
        torch.manual_seed(0)
        model = create_model(arch).to(settings.device).eval()
        static = (create_model(arch) if settings.tiny else torchvision.models.get_model(arch)).to(settings.device)
        configurations = pick(model.configurations(), settings.quick)
        variants = [Variant(n, lambda x, n=n, m=model: m(x, n), 0.9) for n in configurations]
        baseline = Variant("FFFF (static stand-in)" if settings.tiny else "torchvision static", static.eval())
        suites.append(Suite("adn", f"{arch}-ADN", 32 if settings.tiny else 224, baseline, variants))
    return suites


def dsnet_suites(settings: Settings) -> list[Suite]:
    """DS-Net (Sec. 3): the sub-networks (sliced weights) and the gate-routed model against the largest widths."""
    from dsnet.models import create_model

    name = "slimmable_mbnet_v1_bn_uniform" + ("_tiny" if settings.tiny else "")
    torch.manual_seed(0)
    model = create_model(name, num_classes=10 if settings.tiny else 1000).to(settings.device).eval()

    def run(mode: str, choice: int | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
        def forward(x: torch.Tensor) -> torch.Tensor:
            model.set_mode(mode, choice)
            model.gate_noise = False
            return model(x)
        return forward

    def routes(x: torch.Tensor) -> str:
        run("dynamic")(x)
        counts = torch.bincount(model.route.index.flatten().cpu(), minlength=len(model.routing_space)).tolist()
        return "routes " + " / ".join(f"{c}: {n}" for c, n in zip(model.routing_space, counts, strict=True))

    variants = [Variant(f"sub-network {c}", run("uniform", c), 0.9)
                for c in pick(range(model.num_choices), settings.quick)]
    variants.append(Variant("dynamic (gate, argmax routes 0-3)", run("dynamic"), None, routes, static=False))
    return [Suite("dsnet", name, 32 if settings.tiny else 224, Variant("largest", run("largest")), variants)]


def exit_gates(model: nn.Module, x: torch.Tensor, fractions: Sequence[float]) -> None:
    """Set JEI-DNN's gates so that on ``x`` a fraction ``fractions[l]`` of the samples exits at exit ``l``.

    Each gate ``nn.Linear(4, 1)`` reads its IC's uncertainty features (Sec. 3.1); it becomes a steep step on the
    first one, ``p_max``: ``a_l = k (p_max - t_l)``, with ``t_l`` between the samples still in the batch that
    should leave at ``l`` (the most confident) and those that go on. The last fraction is the final head's.
    """
    from jeidnn.models.gates import uncertainty_features

    with torch.no_grad():
        _, ic_logits = model(x)
        n = x.size(0)
        remaining = torch.ones(n, dtype=torch.bool, device=x.device)
        for level, gate in enumerate(model.gates):
            left = int(remaining.sum())  # the samples that did not exit before this level
            want = min(max(round(sum(fractions[:level + 1]) * n) - (n - left), 0), left)
            p_max = uncertainty_features(ic_logits[level])[:, 0]
            gate.linear.weight.zero_()
            gate.linear.bias.fill_(-30.0 if want == 0 else 30.0)
            if want == 0:
                continue
            candidates = p_max[remaining].sort(descending=True).values
            leave = remaining.clone()
            if want < len(candidates):
                upper, lower = float(candidates[want - 1]), float(candidates[want])
                threshold, gap = (upper + lower) / 2, max((upper - lower) / 2, 1e-12)
                gate.linear.weight[0, 0] = 30.0 / gap
                gate.linear.bias.fill_(-30.0 / gap * threshold)
                leave &= p_max > threshold
            remaining &= ~leave


def jeidnn_suites(settings: Settings) -> list[Suite]:
    """JEI-DNN (Sec. 3): the truly early-exiting forward of T2T-ViT-7 against its backbone alone."""
    from jeidnn.dynn import early_exit_forward
    from jeidnn.models import create_model

    size = 32 if settings.tiny else 224
    torch.manual_seed(0)
    model = create_model("t2t_vit_7", num_classes=10, img_size=size, drop_path_rate=0.0).to(settings.device).eval()
    exits = model.num_exits + 1
    if len(settings.exit_fractions) != exits:
        raise UserError(f"--jeidnn-exit-fractions needs {exits} values (exits 0..{exits - 2} and the final head), "
                         f"got {len(settings.exit_fractions)}")

    def backbone(x: torch.Tensor) -> torch.Tensor:
        tokens = model.embed(x)
        for block in model.blocks:
            tokens = block(tokens)
        return model.head(model.normed_cls(tokens))

    def variant(name: str, fractions: Sequence[float], target: float | None) -> Variant:
        """Its own gates (set on the timed images by ``prepare``), swapped into the model before each forward."""
        gates = copy.deepcopy(model.gates)

        def forward(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            model.gates = gates
            return early_exit_forward(model, x)

        def describe(x: torch.Tensor) -> str:
            share = torch.bincount(forward(x)[1].cpu(), minlength=exits).double() / x.size(0)
            return "exits " + " ".join(f"{s:.2f}" for s in share.tolist())

        def prepare(x: torch.Tensor) -> None:
            model.gates = gates
            exit_gates(model, x, fractions)

        return Variant(name, forward, target, describe, prepare, static=False)

    variants = [variant(f"all samples exit at {level}" if level < exits - 1 else "final head (all blocks, gates on)",
                        [float(i == level) for i in range(exits)], None)
                for level in pick(range(exits), settings.quick)]
    variants.append(variant("default lambda stand-in (exit mix)", settings.exit_fractions, 0.8))
    return [Suite("jeidnn", "t2t_vit_7", size, Variant("backbone alone", backbone), variants)]


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
    """DyT (Sec. 3.1): the MLP token dispatcher at rate ``r``, gathered and masked, against the same backbone and
    adapters without dispatchers (AdaptFormer, the static full model)."""
    from dyt.models import build_model

    name, size = (("vit_digits", 32) if settings.tiny else ("vit_tiny_d4_e192", 224) if settings.quick
                  else ("vit_base_patch16_224_in21k", 224))
    torch.manual_seed(0)
    model = build_model(name, num_classes=100, ffn_num=64, dispatch="mlp").to(settings.device).eval()
    static = build_model(name, num_classes=100, ffn_num=64, dispatch="none").to(settings.device).eval()
    rate = settings.dyt_rate

    def run(execution: str) -> Variant:
        def forward(x: torch.Tensor) -> torch.Tensor:
            model.execution = execution
            return model(x)[0]

        def kept(x: torch.Tensor) -> str:
            return f"tokens kept {float(model(x)[1]['token_select'].float().mean()):.3f} (target {rate})"

        return Variant(f"r={rate} {execution}", forward, 0.8 if execution == "gather" else None, kept,
                       lambda x: set_dispatch_rate(model, x[:8], rate), static=False)

    return [Suite("dyt", name, size, Variant("no dispatcher (AdaptFormer)", lambda x: static(x)[0]),
                  [run("gather"), run("masked")])]


def padnet_suites(settings: Settings) -> list[Suite]:
    """PAD-Net (Sec. 3): DY-Conv, PAD-Net in training and deployed form, against the static network."""
    from padnet.dyconv import deploy as padnet_deploy
    from padnet.dyconv.models import build_model

    static_name, prefix, width = (("resnet10", "DyResNet10", {}) if settings.tiny else
                                  ("mobilenetv2", "Dymobilenetv2", {"width_multiplier": 1.0}) if settings.quick else
                                  ("resnet50", "DyResNet50", {}))
    torch.manual_seed(0)
    static = build_model(static_name, **width).to(settings.device).eval()
    dynamic = build_model(prefix, **width).to(settings.device).eval()
    pad = build_model(f"{prefix}_PAD", **width).to(settings.device).eval()
    deployed = padnet_deploy.deploy(copy.deepcopy(pad)).to(settings.device).eval()
    variants = pick([Variant("PAD-Net deployed", deployed), Variant("PAD-Net training form", pad),
                     Variant("DY-Conv (fully dynamic)", dynamic)], settings.quick)
    return [Suite("padnet", prefix, 32 if settings.tiny else 224, Variant("static network", static), variants)]


SUITES: dict[str, Callable[[Settings], list[Suite]]] = {
    "adn": adn_suites, "dsnet": dsnet_suites, "jeidnn": jeidnn_suites, "dyt": dyt_suites, "padnet": padnet_suites}


# ------------------------------------------------------------------------------------------------------ measure
def batched(forward: Callable[[torch.Tensor], Any], batch_size: int) -> Callable[[torch.Tensor], Any]:
    """At batch 1 the images of ``x`` go through one at a time (a stream of single requests); else as one batch."""
    return forward if batch_size != 1 else lambda x: [forward(x[i:i + 1]) for i in range(x.size(0))]


def op_times(forward: Callable[[torch.Tensor], Any], x: torch.Tensor, device: torch.device, threads: int | None = None
             ) -> dict[str, float]:
    """Self time (s) per aten operator of one ``forward(x)`` under ``torch.profiler`` (device time on a GPU)."""
    cuda = device.type == "cuda"
    activities = [torch.profiler.ProfilerActivity.CPU] + [torch.profiler.ProfilerActivity.CUDA] * cuda
    with fixed_threads(threads), torch.profiler.profile(activities=activities) as prof:
        forward(x)
        if cuda:
            torch.cuda.synchronize(device)
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    return {e.key: getattr(e, key) / 1e6 for e in prof.key_averages() if getattr(e, key) > 0}


def explain_shortfall(baseline: dict[str, float], config: dict[str, float], ideal: float) -> str:
    """Why a configuration's realised speed-up stays below the MAC ratio, from the two operator profiles."""
    def split(ops: dict[str, float]) -> tuple[float, float]:
        mac = sum(t for name, t in ops.items() if any(m in name for m in MAC_OPERATORS))
        return mac, sum(ops.values()) - mac

    (base_mac, base_other), (cfg_mac, cfg_other) = split(baseline), split(config)
    top = sorted(config.items(), key=lambda item: -item[1])[:4]
    total = cfg_mac + cfg_other
    return (f"MAC-bearing ops run {base_mac / cfg_mac:.2f}x faster than the full model's for {ideal:.2f}x fewer MACs; "
            f"ops without MACs take {cfg_other / total:.0%} of the time (full model: "
            f"{base_other / (base_mac + base_other):.0%}) and shrink only {base_other / cfg_other:.2f}x; top ops: "
            + ", ".join(f"{name} {t / total:.0%}" for name, t in top))


def measure_inference(suite: Suite, batch_sizes: Sequence[int], batch1_images: int, warmup: int, repeats: int,
                      device: torch.device, threads: int) -> list[dict[str, Any]]:
    """Rows of the inference table for one suite (module docstring)."""
    rows = []
    every = [suite.baseline, *suite.variants]
    for batch_size in batch_sizes:
        images = batch1_images if batch_size == 1 else batch_size
        generator = torch.Generator().manual_seed(batch_size)
        x = torch.randn(images, 3, suite.img_size, suite.img_size, generator=generator).to(device)
        with torch.no_grad():
            for v in every:
                v.prepare(x)
            macs = {v.name: count_macs(v.forward, x[:1]).total if v.static else
                    count_macs(batched(v.forward, batch_size), x).total / images for v in every}
            notes = {v.name: v.describe(x) for v in every}
        calls = {v.name: functools.partial(batched(v.forward, batch_size), x) for v in every}
        times = time_interleaved(calls, items=images, warmup=warmup, repeats=repeats, threads=threads, device=device,
                                 desc=f"{suite.model} batch {batch_size}")
        base, base_macs = times[suite.baseline.name], macs[suite.baseline.name]
        for v in every:
            timing, low_high = times[v.name], times[v.name].spread
            realised, ideal = base.median_s / timing.median_s, base_macs / macs[v.name]
            meets = "" if v.target is None or batch_size == 1 else "yes" if realised / ideal >= v.target else "no"
            rows.append(dict(
                paper=suite.paper, model=suite.model, config=v.name, kind="inference", batch_size=batch_size,
                device=str(device), threads=threads, repeats=repeats, baseline=suite.baseline.name,
                macs_per_image=macs[v.name], baseline_macs_per_image=base_macs, median_s=timing.median_s,
                baseline_s=base.median_s, images_per_s=timing.images_per_s, baseline_images_per_s=base.images_per_s,
                realised_speedup=realised, ideal_speedup=ideal, efficiency=realised / ideal, target=v.target or "",
                meets_target=meets, realised=notes[v.name], profile="", images_per_s_low=low_high[0],
                images_per_s_high=low_high[1]))
        short = [(row, v) for row, v in zip(rows[-len(every):], every, strict=True) if row["meets_target"] == "no"]
        if short:
            base_ops = op_times(batched(suite.baseline.forward, batch_size), x, device, threads)
            for row, v in short:
                ops = op_times(batched(v.forward, batch_size), x, device, threads)
                row["profile"] = explain_shortfall(base_ops, ops, row["ideal_speedup"])
    return rows


# ------------------------------------------------------------------------------------------------------ output
def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown: img/s with the spread of the rounds, the speed-ups, their ratio and the target."""
    return markdown_table(
        ["paper", "model", "configuration", "batch", "img/s (spread)", "realised", "ideal (MACs)", "realised / ideal",
         "target", "meets", "realised behaviour"],
        [[r["paper"], r["model"], r["config"], r["batch_size"],
          f"{r['images_per_s']:.1f} ({r['images_per_s_low']:.1f}-{r['images_per_s_high']:.1f})",
          f"{r['realised_speedup']:.2f}x", f"{r['ideal_speedup']:.2f}x", f"{r['efficiency']:.2f}", r["target"] or "-",
          r["meets_target"] or "-", r["realised"]] for r in rows])


def plot(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """Realised against ideal speed-up, one panel per batch size, with the y = x, 0.9x and 0.8x lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted({r["batch_size"] for r in rows})
    fig, axes = plt.subplots(1, len(sizes), figsize=(6 * len(sizes), 5), squeeze=False)
    for ax, size in zip(axes[0], sizes, strict=True):
        for model in dict.fromkeys(r["model"] for r in rows):
            sel = [r for r in rows if r["model"] == model and r["batch_size"] == size]
            ax.scatter([r["ideal_speedup"] for r in sel], [r["realised_speedup"] for r in sel], label=model, s=18)
        line = [0, 1.05 * max(1.0, *(max(r["ideal_speedup"], r["realised_speedup"]) for r in rows))]
        ax.plot(line, line, "k-", lw=0.8, label="realised = ideal")
        for factor, style in ((0.9, "--"), (0.8, ":")):
            ax.plot(line, [factor * v for v in line], "k" + style, lw=0.7, label=f"{factor} x ideal")
        ax.set(xlabel="ideal speed-up (MAC ratio to the static full model)", ylabel="realised speed-up (img/s ratio)",
               title=f"batch {size}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------------ main
def parse_fractions(text: str) -> tuple[float, ...]:
    """``--jeidnn-exit-fractions``: comma-separated shares of the exits, >= 0, summing to 1."""
    try:
        values = tuple(float(Fraction(v)) for v in text.split(","))
    except (ValueError, ZeroDivisionError):
        raise UserError(f"--jeidnn-exit-fractions {text!r}: expected comma-separated numbers or fractions (1/7)"
                         ) from None
    if any(v < 0 for v in values) or abs(sum(values) - 1.0) > 1e-6:
        raise UserError(f"--jeidnn-exit-fractions {text!r}: fractions must be >= 0 and sum to 1")
    return values


def check_args(args: argparse.Namespace) -> tuple[list[str], torch.device]:
    names = list(PAPERS) if args.only is None else [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in SUITES]
    if unknown or not names:
        raise UserError(f"--only {args.only!r}: unknown model(s) {', '.join(unknown) or '(none)'}; choose from "
                         f"{', '.join(PAPERS)}")
    if not 0.0 < args.dyt_rate <= 1.0:
        raise UserError(f"--dyt-rate {args.dyt_rate}: the kept fraction must lie in (0, 1]")
    args.batch1_images = args.batch1_images or (4 if args.quick or args.tiny else 8)
    if min(*args.batch_sizes, args.repeats, args.batch1_images) < 1 or min(args.warmup, args.threads) < 0:
        raise UserError("--batch-sizes, --repeats and --batch1-images must be positive, "
                         "--warmup and --threads >= 0")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {args.device}: no CUDA device is available here; use --device cpu")
    try:
        return names, torch.device(args.device)
    except RuntimeError:
        raise UserError(f"--device {args.device!r}: not a torch device (cpu, cuda, cuda:1)") from None


def main(argv: Sequence[str] | None = None) -> int:
    """Time the selected papers' models (module docstring) and write the three files; 0 when done."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = get_args_parser().parse_args(argv)
    names, device = check_args(args)
    threads = args.threads or os.cpu_count() or 1
    settings = Settings(device, args.quick or args.tiny, args.tiny, args.jeidnn_exit_fractions, args.dyt_rate)
    (output_dir := Path(args.output_dir)).mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    for name in tqdm(names, desc="speed", unit="paper", dynamic_ncols=True):
        for suite in SUITES[name](settings):
            rows += measure_inference(suite, args.batch_sizes, args.batch1_images, args.warmup, args.repeats, device,
                                      threads)
            tqdm.write(format_table([r for r in rows if r["model"] == suite.model]))
    header = (f"Machine: {machine_info()}. Device {device}, {threads} torch thread(s); median of {args.repeats} "
              f"interleaved rounds after {args.warmup} warm-up round(s) (benchmarks/timing.py), spread = slowest-"
              f"fastest round; batch 1 = {args.batch1_images} images one at a time. Realised = img/s ratio to the "
              "static full model in the same process; ideal = MAC ratio (common.flops.count_macs, same images).")
    write_csv(output_dir / "speed.csv", rows, CSV_FIELDS)
    plot(rows, output_dir / "speed.png")
    command = f"python -m benchmarks.speed {shlex.join(argv)}".strip()
    lines = ["# Speed: realised against ideal speed-up", "", f"Command: `{command}`", "", header, "",
             format_table(rows), "", "![speed](speed.png)", ""]
    short = [r for r in rows if r["profile"]]
    if short:
        lines += ["## Below target: where the time goes (torch.profiler)", "", *(
            f"- {r['model']} {r['config']}, batch {r['batch_size']} ({r['efficiency']:.2f} of ideal): {r['profile']}"
            for r in short), ""]
    (output_dir / "speed.md").write_text("\n".join(lines))
    print(format_table(rows))
    print(f"wrote {output_dir / 'speed.md'}; {len(short)} configuration(s) below their target")
    return 0


def get_args_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="speed", description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default=None, metavar="P1,P2",
                        help=f"papers whose models to time (default: all of {', '.join(PAPERS)})")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32], help="default: %(default)s")
    parser.add_argument("--batch1-images", type=int, default=None,
                        help="images timed one at a time for batch 1 (default: 8, 4 with --quick or --tiny)")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default: %(default)s)")
    parser.add_argument("--quick", action="store_true",
                        help="the smaller model of each paper, its first and last configurations (make demo)")
    parser.add_argument("--tiny", action="store_true",
                        help="the proxies' small models at 32x32 with --quick's configurations (smoke tests)")
    parser.add_argument("--jeidnn-exit-fractions", type=parse_fractions, default=",".join(["1/7"] * 7),
                        help="JEI-DNN's exit distribution (exits 0..5, final) standing in for a gate trained at the "
                        "default lambda (default: uniform)")
    parser.add_argument("--dyt-rate", type=float, default=0.5,
                        help="DyT's fraction of kept tokens per block, set on the dispatchers (default: %(default)s)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default 0: one per core)")
    parser.add_argument("--output-dir", default="results", help="where speed.csv/.md/.png go (default: %(default)s)")
    return parser


if __name__ == "__main__":
    sys.exit(run_cli(main, prog="speed"))
