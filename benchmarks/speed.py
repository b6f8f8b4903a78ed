"""Dynamic inference at its limit: every configuration of every dynamic model against its static export and the
MAC ratio.

For each model of :mod:`benchmarks.speed_models` and each ``name`` in ``model.configurations()``, three things run
on the same images, interleaved in one process by :func:`benchmarks.timing.time_interleaved`: the dynamic model
after ``model.set_configuration(name)``, its static export ``to_static(model, name)`` (the same network built
statically: the limit the dynamic model can reach) and the full static model of its group. Each row gives

* realised = images/s of the configuration / images/s of the full static model,
* ideal = MACs of the full static model / MACs the configuration executes on the same images
  (:func:`common.flops.count_macs`: skipped blocks, sliced weights, gathered-out tokens and exited samples cost
  nothing), and realised / ideal,
* dynamic / export = images/s of the dynamic model / images/s of its export (``-`` where a configuration has
  per-sample structure and no static export).

Targets, checked at every batch size (batch 1 = ``--batch1-images`` images fed one at a time, a stream of single
requests): ADN, DS-Net, JEI-DNN and DyT configurations reach 0.95 of their export and 0.9 of their MAC ratio;
DY-Conv reaches 0.7 (batch 1) / 0.6 (larger batches) of the static network; deployed PAD-Net is at least as fast
as DY-Conv. A row that misses is profiled (``torch.profiler`` on the same images) against what it missed: its
export, the full static model or DY-Conv. ``--quick`` times the smaller model of each paper (MobileNetV2 for ADN
and PAD-Net, a 4-block ViT-Ti for DyT) at the first and last of its configurations; ``--tiny`` the proxies' 32 px
models. Writes ``speed.csv``, ``speed.md`` and ``speed.png`` to ``--output-dir``.

    python -m benchmarks.speed                               # every configuration (make speed)
    python -m benchmarks.speed --quick --output-dir /tmp/s   # the extremes of the small models
    python -m benchmarks.speed --only adn,dyt --device cuda  # on a GPU (synchronised timing)
"""

from __future__ import annotations

import argparse
import functools
import os
import shlex
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from benchmarks.speed_models import GROUPS, Dynamic, Group
from benchmarks.tables import machine_info, markdown_table, write_csv
from benchmarks.timing import Timing, fixed_threads, time_interleaved
from common.configurations import ConfigurationError
from common.errors import ArgumentParser, UserError, run_cli
from common.flops import count_macs

PAPERS = tuple(GROUPS)
CSV_FIELDS = ("paper", "group", "model", "config", "batch_size", "device", "threads", "repeats", "macs_per_image",
              "static_macs_per_image", "export_macs_per_image", "images_per_s", "images_per_s_low", "images_per_s_high",
              "export_images_per_s", "static_images_per_s", "realised", "ideal", "efficiency", "vs_export",
              "targets", "meets", "profile")
MAC_OPERATORS = ("conv", "mm", "matmul", "scaled_dot_product", "einsum", "bmm")  # aten names of the MAC ops
EXPORT_TARGET, EFFICIENCY_TARGET = 0.95, 0.9
DYCONV_TARGETS = {1: 0.7, "batch": 0.6}  # DY-Conv's img/s over the static network's


@dataclass
class Candidate:
    """One timed forward: the full static model, a configuration of a dynamic model, or its export."""

    label: str
    forward: Callable[[torch.Tensor], Any]


def pick(names: Sequence[str], quick: bool) -> list[str]:
    """Every configuration, or with ``quick`` the first and the last."""
    return [names[0], names[-1]] if quick and len(names) > 2 else list(names)


def configured(model: nn.Module, name: str) -> Callable[[torch.Tensor], Any]:
    """``model`` in configuration ``name``: set before every call, since one model serves all its rows."""
    def forward(x: torch.Tensor) -> Any:
        model.set_configuration(name)
        return model(x)
    return forward


def batched(forward: Callable[[torch.Tensor], Any], batch_size: int) -> Callable[[torch.Tensor], Any]:
    """At batch 1 the images of ``x`` go through one at a time; else as one batch."""
    return forward if batch_size != 1 else lambda x: [forward(x[i:i + 1]) for i in range(x.size(0))]


# ------------------------------------------------------------------------------------------------------ profiles
def op_times(forward: Callable[[torch.Tensor], Any], x: torch.Tensor, device: torch.device, threads: int
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


def mac_split(ops: dict[str, float]) -> tuple[float, float]:
    """(seconds in MAC-bearing operators, seconds in the others)."""
    mac = sum(t for name, t in ops.items() if any(m in name for m in MAC_OPERATORS))
    return mac, sum(ops.values()) - mac


def explain_shortfall(static: dict[str, float], config: dict[str, float], ideal: float) -> str:
    """Why a configuration's speed-up over the full static model stays below its MAC ratio."""
    (base_mac, base_other), (cfg_mac, cfg_other) = mac_split(static), mac_split(config)
    total = cfg_mac + cfg_other
    top = sorted(config.items(), key=lambda item: -item[1])[:4]
    return (f"against the full static model: MAC-bearing ops run {base_mac / cfg_mac:.2f}x faster for {ideal:.2f}x "
            f"fewer MACs; ops without MACs take {cfg_other / total:.0%} of the time (full model: "
            f"{base_other / (base_mac + base_other):.0%}) and shrink only {base_other / cfg_other:.2f}x; top ops: "
            + ", ".join(f"{name} {t / total:.0%}" for name, t in top))


def explain_gap(reference_label: str, reference: dict[str, float], config: dict[str, float]) -> str:
    """Where a configuration spends more time than ``reference`` (its export, or DY-Conv): the largest excesses."""
    extra = {name: config.get(name, 0.0) - reference.get(name, 0.0) for name in {*config, *reference}}
    total, reference_total = sum(config.values()), sum(reference.values())
    top = sorted(extra.items(), key=lambda item: -item[1])[:4]
    return (f"against {reference_label}: {(total - reference_total) * 1e3:+.1f} ms per call "
            f"({total / reference_total:.2f}x its time); largest excesses: "
            + ", ".join(f"{name} {t * 1e3:+.1f} ms" for name, t in top))


# ------------------------------------------------------------------------------------------------------ measure
def row_targets(paper: str, model: str, config: str, batch_size: int) -> dict[str, float]:
    """The targets of one row (module docstring): column name -> the least acceptable value."""
    if paper != "padnet":
        return {"vs_export": EXPORT_TARGET, "efficiency": EFFICIENCY_TARGET}
    if "DY-Conv" in model:
        return {"realised": DYCONV_TARGETS[1 if batch_size == 1 else "batch"]}
    return {"vs_dyconv": 1.0} if config == "deployed" else {}


Config = tuple[Dynamic, str, Candidate, "Candidate | None"]


def build_candidates(group: Group, quick: bool, device: torch.device) -> tuple[Candidate, list[Config]]:
    """The full static model and, per dynamic model and configuration, the dynamic forward and its export. An
    untrained model is prepared (its subproject's ``prepare``) on 8 calibration images, the same at every batch."""
    static = group.build_static().to(device)
    calibration = torch.randn(8, 3, group.img_size, group.img_size, generator=torch.Generator().manual_seed(0))
    configs = []
    for dynamic in group.dynamic:
        model = dynamic.build().to(device)
        if dynamic.prepare is not None:
            dynamic.prepare(model, calibration.to(device))
        for name in pick(model.configurations(), quick):
            model.set_configuration(name)
            try:
                exported = Candidate(f"{dynamic.label} {name} export", dynamic.export(model, name).eval())
            except ConfigurationError:
                exported = None  # per-sample structure: no static form (the model's to_static says why)
            configs.append((dynamic, name, Candidate(f"{dynamic.label} {name}", configured(model, name)), exported))
    return Candidate(group.static_label, static), configs


def measure_group(group: Group, args: argparse.Namespace, device: torch.device, threads: int) -> list[dict[str, Any]]:
    """The rows of one group at every batch size (module docstring)."""
    static, configs = build_candidates(group, args.quick, device)
    every = [static] + [c for _, _, dyn, exp in configs for c in (dyn, exp) if c is not None]
    dyconv = [dyn for dynamic, _, dyn, _ in configs if "DY-Conv" in dynamic.label][:1]
    out = []
    for batch_size in args.batch_sizes:
        images = args.batch1_images if batch_size == 1 else batch_size
        x = torch.randn(images, 3, group.img_size, group.img_size,
                        generator=torch.Generator().manual_seed(batch_size)).to(device)
        with torch.no_grad():
            macs = {c.label: count_macs(batched(c.forward, batch_size), x).total / images for c in every}
        times = time_interleaved({c.label: functools.partial(batched(c.forward, batch_size), x) for c in every},
                                 items=images, warmup=args.warmup, repeats=args.repeats, threads=threads,
                                 device=device, desc=f"{group.name} batch {batch_size}")
        base: Timing = times[static.label]
        rows = [row(group, static.label, "full static", batch_size, base, None, base, 1.0, macs[static.label],
                    macs[static.label], args, device, threads)]
        for dynamic, name, dyn, exp in configs:
            r = row(group, dynamic.label, name, batch_size, times[dyn.label], exp and times[exp.label], base,
                    macs[static.label] / macs[dyn.label], macs[dyn.label], macs[static.label], args, device, threads)
            r["export_macs_per_image"] = macs[exp.label] if exp else ""
            targets = row_targets(group.paper, dynamic.label, name, batch_size)
            if dyconv and "vs_dyconv" in targets:
                r["vs_dyconv"] = times[dyn.label].images_per_s / times[dyconv[0].label].images_per_s
            judge(r, targets)
            if r["meets"] == "no":
                r["profile"] = profile_miss(r, batched(dyn.forward, batch_size), x, device, threads, static, exp,
                                            dyconv, batch_size)
            r.pop("vs_dyconv", None)
            rows.append(r)
        out += rows
    return out


def row(group: Group, model: str, config: str, batch_size: int, timing: Timing, export: Timing | None, base: Timing,
        ideal: float, macs: float, static_macs: float, args: argparse.Namespace, device: torch.device, threads: int
        ) -> dict[str, Any]:
    low, high = timing.spread
    realised = timing.images_per_s / base.images_per_s
    return dict(paper=group.paper, group=group.name, model=model, config=config, batch_size=batch_size,
                device=str(device), threads=threads, repeats=args.repeats, macs_per_image=macs,
                static_macs_per_image=static_macs, export_macs_per_image="", images_per_s=timing.images_per_s,
                images_per_s_low=low, images_per_s_high=high, export_images_per_s=export.images_per_s if export else "",
                static_images_per_s=base.images_per_s, realised=realised, ideal=ideal, efficiency=realised / ideal,
                vs_export=timing.images_per_s / export.images_per_s if export else "", targets="", meets="",
                profile="")


def judge(r: dict[str, Any], targets: dict[str, float]) -> None:
    """Fill ``targets`` (as text) and ``meets`` of a row; a column without a value (no export) is not judged."""
    checked = {column: least for column, least in targets.items() if r.get(column, "") != ""}
    r["targets"] = ", ".join(f"{column.replace('_', ' ')} >= {least}" for column, least in checked.items())
    if checked:
        r["meets"] = "yes" if all(r[column] >= least for column, least in checked.items()) else "no"


def profile_miss(r: dict[str, Any], forward: Callable, x: torch.Tensor, device: torch.device, threads: int,
                 static: Candidate, export: Candidate | None, dyconv: list[Candidate], batch_size: int) -> str:
    """The profile explanation of every target the row misses."""
    ops = op_times(forward, x, device, threads)
    notes = []
    if r.get("vs_export", "") != "" and r["vs_export"] < EXPORT_TARGET and export is not None:
        notes.append(explain_gap("its static export", op_times(batched(export.forward, batch_size), x, device,
                                                               threads), ops))
    if (r["paper"] != "padnet" and r["efficiency"] < EFFICIENCY_TARGET) or "realised" in r["targets"]:
        notes.append(explain_shortfall(op_times(batched(static.forward, batch_size), x, device, threads), ops,
                                       r["ideal"]))
    if "vs dyconv" in r["targets"] and dyconv:
        notes.append(explain_gap("DY-Conv", op_times(batched(dyconv[0].forward, batch_size), x, device, threads),
                                 ops))
    return "; ".join(notes)


# ------------------------------------------------------------------------------------------------------ output
def _num(value: Any, digits: int = 2, suffix: str = "") -> str:
    return "-" if value in ("", None) else f"{float(value):.{digits}f}{suffix}"


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown: img/s with the spread of the rounds, realised and ideal speed-ups, dynamic / export, targets.
    Works on measured rows and on rows read back from ``speed.csv`` (strings)."""
    return markdown_table(
        ["paper", "model", "configuration", "batch", "img/s (spread)", "export img/s", "realised", "ideal (MACs)",
         "realised / ideal", "dynamic / export", "targets", "meets"],
        [[r["paper"], r["model"], r["config"], r["batch_size"],
          f"{_num(r['images_per_s'], 1)} ({_num(r['images_per_s_low'], 1)}-{_num(r['images_per_s_high'], 1)})",
          _num(r["export_images_per_s"], 1), _num(r["realised"], suffix="x"), _num(r["ideal"], suffix="x"),
          _num(r["efficiency"]), _num(r["vs_export"]), r["targets"] or "-", r["meets"] or "-"] for r in rows])


def plot(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """Realised against ideal speed-up, one panel per batch size, with the y = x and 0.9x lines; exports hollow."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted({r["batch_size"] for r in rows})
    fig, axes = plt.subplots(1, len(sizes), figsize=(6 * len(sizes), 5), squeeze=False)
    for ax, size in zip(axes[0], sizes, strict=True):
        for model in dict.fromkeys(r["model"] for r in rows if r["config"] != "full static"):
            sel = [r for r in rows if r["model"] == model and r["batch_size"] == size]
            dots = ax.scatter([r["ideal"] for r in sel], [r["realised"] for r in sel], label=model, s=18)
            exported = [r for r in sel if r["export_images_per_s"] != ""]
            ax.scatter([r["ideal"] for r in exported], [r["export_images_per_s"] / r["static_images_per_s"]
                                                        for r in exported], s=30, facecolors="none",
                       edgecolors=dots.get_facecolor())
        line = [0, 1.05 * max(1.0, *(max(r["ideal"], r["realised"]) for r in rows))]
        ax.plot(line, line, "k-", lw=0.8, label="realised = ideal")
        ax.plot(line, [EFFICIENCY_TARGET * v for v in line], "k--", lw=0.7, label=f"{EFFICIENCY_TARGET} x ideal")
        ax.set(xlabel="ideal speed-up (MAC ratio to the full static model)", ylabel="realised speed-up (img/s ratio)",
               title=f"batch {size} (hollow: static export)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def header(args: argparse.Namespace, device: torch.device, threads: int) -> str:
    return (f"Machine: {machine_info()}. Device {device}, {threads} torch thread(s); median of {args.repeats} "
            f"interleaved rounds after {args.warmup} warm-up round(s) (benchmarks/timing.py), spread = slowest-"
            f"fastest round; batch 1 = {args.batch1_images} images one at a time. Realised = img/s over the full "
            "static model's, in the same process; ideal = MAC ratio (common.flops.count_macs, same images); "
            "dynamic / export = img/s over the configuration's static export (`<subproject>/export.py`).")


# ------------------------------------------------------------------------------------------------------ main
def check_args(args: argparse.Namespace) -> tuple[list[str], torch.device]:
    names = list(PAPERS) if args.only is None else [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in GROUPS]
    if unknown or not names:
        raise UserError(f"--only {args.only!r}: unknown paper(s) {', '.join(unknown) or '(none)'}; choose from "
                        f"{', '.join(PAPERS)}")
    args.batch1_images = args.batch1_images or (4 if args.quick or args.tiny else 8)
    if min(*args.batch_sizes, args.repeats, args.batch1_images) < 1 or min(args.warmup, args.threads) < 0:
        raise UserError("--batch-sizes, --repeats and --batch1-images must be positive, --warmup and --threads >= 0")
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
    size = "tiny" if args.tiny else "quick" if args.quick else "full"
    args.quick = args.quick or args.tiny
    (output_dir := Path(args.output_dir)).mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    for name in tqdm(names, desc="speed", unit="paper", dynamic_ncols=True):
        for group in GROUPS[name](size):
            group_rows = measure_group(group, args, device, threads)
            tqdm.write(format_table(group_rows))
            rows += group_rows
    write_csv(output_dir / "speed.csv", rows, CSV_FIELDS)
    plot(rows, output_dir / "speed.png")
    command = f"python -m benchmarks.speed {shlex.join(argv)}".strip()
    short = [r for r in rows if r["profile"]]
    lines = ["# Speed: every configuration against its static export and its MAC ratio", "", f"Command: `{command}`",
             "", header(args, device, threads), "", format_table(rows), "", "![speed](speed.png)", ""]
    if short:
        lines += ["## Below target: where the time goes (torch.profiler)", "", *(
            f"- {r['model']} {r['config']}, batch {r['batch_size']}: {r['profile']}" for r in short), ""]
    (output_dir / "speed.md").write_text("\n".join(lines))
    judged = [r for r in rows if r["meets"]]
    print(f"wrote {output_dir / 'speed.md'}; {len(judged) - len(short)} of {len(judged)} judged rows meet their "
          "targets")
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
                        help="the smaller model of each paper, its first and last configurations")
    parser.add_argument("--tiny", action="store_true",
                        help="the proxies' small models at 32x32 with --quick's configurations (smoke tests)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default 0: one per core)")
    parser.add_argument("--output-dir", default="results", help="where speed.csv/.md/.png go (default: %(default)s)")
    return parser


if __name__ == "__main__":
    sys.exit(run_cli(main, prog="speed"))
