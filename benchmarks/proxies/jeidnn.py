"""JEI-DNN proxy: the paper's accuracy-cost and calibration claims on the embedded digits, through its entry points.

Per seed, both of JEI-DNN's entry points run in this process on scikit-learn's ``digits`` (1,437 training images,
of which ``train_dynn.py``'s seeded split keeps 300 for validation; the 360 held-out images are the test set),
T2T-ViT-7 at 16x16 px:

1. ``jeidnn/transfer_learning.py`` trains the backbone with its final head. No ImageNet T2T-ViT weights exist
   here, so this stage trains the backbone from random initialisation on digits (``--transfer-learning False``,
   ``--transfer-ratio 1``: one learning rate for backbone and head) instead of fine-tuning it; the checkpoint
   is chosen on validation, as the entry point does. Once per seed.
2. ``jeidnn/train_dynn.py`` freezes that backbone, warms up the intermediate classifiers (ICs) and trains the
   gates and ICs bi-level (paper Sec. 3.2-3.3), once per ``--ce_ic_tradeoff`` value lambda: one operating
   point each.

The baseline is confidence thresholding (``jeidnn/baseline.py``, MSDNet's geometric exit schedule, thresholds on
the max probability chosen on validation, 39 operating points) on the ICs of the same seed after the warm-up,
i.e. ICs trained on every sample with no regard to the gates, the setting whose train-test mismatch and
over-confidence the paper's introduction criticises. They are the per-IC best states that ``train_dynn.py`` writes
to its warm-up folder, on the same frozen backbone.

Claims (Regol, Chataoui & Coates, ICLR 2024: the abstract, the experiments' accuracy-vs-Mul-Add and ECE figures) and
the verdict rule, fixed before any number was seen. Everything is measured on the 360 test images; cost is the
average Mul-Add per image in the original repository's counter (the paper's x-axis); ECE is dataset-level, 15
equal-width bins, x100, computed on proper (once-softmaxed) probabilities for both methods (jeidnn/README.md,
"Differences": the original baselines' ECE was softmaxed twice). Each claim is judged by
``benchmarks.tables.judge`` on per-seed values oriented so that > 0 supports the claim, margin 0:

1. "The learned gates' accuracy-cost curve dominates the confidence-threshold curve": ``d_s`` = mean over the
   lambda operating points of (gated top-1 - the threshold curve's top-1 linearly interpolated at the same
   average cost).
2. "JEI-DNN is better calibrated than thresholding at matched cost": ``d_s`` = mean over the lambda operating
   points of (the threshold curve's ECE interpolated at the gates' cost - the gates' ECE).

A gate point cheaper (dearer) than every threshold point is compared with the cheapest (dearest) one; the
evidence says how often that happened. The strongest arm, the backbone's own final head, must reach >= 90 % top-1.

    python -m benchmarks.proxies.jeidnn                 # demo: 3 seeds x lambda 0.01, 0.1, 1
    python -m benchmarks.proxies.jeidnn --full          # 5 seeds x 5 lambdas, longer schedules
    python -m benchmarks.proxies.jeidnn --tiny          # test size: 1 seed, 2 epochs, 2 lambdas

Writes ``jeidnn_proxies.csv``, ``jeidnn_claims.csv``, ``jeidnn_proxy.md`` and ``jeidnn_proxy.png`` to
``--output-dir``; the entry points' checkpoints go to a temporary folder.
"""

from __future__ import annotations

import shlex
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from benchmarks import tables
from common.errors import ArgumentParser, UserError, run_cli
from jeidnn import engine, metrics, train_dynn, transfer_learning
from jeidnn.baseline import threshold_baseline
from jeidnn.cost import executed_macs_per_exit, normalized_costs, original_mul_add_per_exit
from jeidnn.data import build_jeidnn_datasets
from jeidnn.models import create_model
from jeidnn.weights import load_jeidnn_checkpoint, load_transfer_checkpoint

NAME = "jeidnn"
PAPER = "JEI-DNN"
ARCH = "t2t_vit_7"
DATASET = "digits 16x16 (1,137 train / 300 val / 360 test)"
METRIC = "top-1 %"
STRONGEST = "backbone final head (full network)"
THRESHOLD = "confidence thresholds"


@dataclass(frozen=True)
class ProxySettings:
    """The proxy's schedule. Backbone size, image size, epochs and lr chosen on the backbone's final head alone
    (>= 90 % top-1 on the test images); the JEI-DNN stage keeps the original's lr 0.01 and alternates GATE /
    CLASSIFIER about three times an epoch as the original's 200 of ~700 batches does."""

    seeds: int = 3
    img_size: int = 16
    batch: int = 64
    backbone_epochs: int = 8
    backbone_lr: float = 0.03
    lambdas: tuple[float, ...] = (0.01, 0.1, 1.0)
    warmup_epochs: int = 2
    bilevel_epochs: int = 3
    lr: float = 0.01
    bilevel_batch_count: int = 6


DEMO = ProxySettings()
FULL = ProxySettings(seeds=5, backbone_epochs=10, lambdas=(0.01, 0.1, 0.5, 1.0, 2.0), bilevel_epochs=8)
TINY = ProxySettings(seeds=1, backbone_epochs=2, lambdas=(0.1, 1.0), warmup_epochs=1, bilevel_epochs=1)


class ProxyError(UserError):
    """A bad flag of the proxy."""


@dataclass
class SeedResult:
    """One seed: the backbone, the warmed-up ICs, every gate operating point and the threshold curve."""

    final_acc: float  # the backbone's final head on test (%)
    warmup_ic_acc: list[float]  # warmed-up ICs then final head on test (%)
    full_macs: float
    gates: list[dict[str, float]] = field(default_factory=list)  # per lambda: acc, cost, macs, ece, ...
    curve: pd.DataFrame | None = None  # the threshold curve: cost, acc, ece, macs (sorted by cost)


def transfer_argv(settings: ProxySettings, seed: int, output_dir: Path) -> list[str]:
    """``jeidnn/transfer_learning.py`` from random initialisation on digits (no ImageNet weights exist here)."""
    return ["--dataset", "digits", "--arch", ARCH, "--img-size", str(settings.img_size), "--transfer-learning",
            "False", "--transfer-ratio", "1", "--drop-path", "0", "--lr", str(settings.backbone_lr), "--epochs",
            str(settings.backbone_epochs), "--batch", str(settings.batch), "--seed", str(seed), "--device", "cpu",
            "--workers", "0", "--no-mlflow", "--output-dir", str(output_dir)]


def dynn_argv(settings: ProxySettings, seed: int, lam: float, backbone: Path, output_dir: Path) -> list[str]:
    """``jeidnn/train_dynn.py`` on the frozen backbone for one lambda."""
    return ["--dataset", "digits", "--arch", ARCH, "--img-size", str(settings.img_size), "--checkpoint",
            str(backbone), "--drop-path", "0", "--ce_ic_tradeoff", str(lam), "--lr", str(settings.lr),
            "--batch", str(settings.batch), "--max_warmup_epoch", str(settings.warmup_epochs), "--num_epoch",
            str(settings.warmup_epochs + settings.bilevel_epochs), "--bilevel_batch_count",
            str(settings.bilevel_batch_count), "--seed", str(seed), "--device", "cpu", "--workers", "0",
            "--no-mlflow", "--output-dir", str(output_dir)]


def _outputs(model, loader: DataLoader, costs: engine.CostTables) -> engine.Outputs:
    settings = engine.BilevelSettings(0.0, costs.normalized, pos_weights=[1.0] * model.num_exits)
    return engine.collect_outputs(model, loader, torch.device("cpu"), settings, desc="proxy eval")


def _curve(points, labels: np.ndarray, macs: Sequence[float]) -> pd.DataFrame:
    """The threshold operating points as a cost-sorted table (points of equal cost averaged)."""
    rows = [{"cost": p.average_cost, "acc": p.accuracy, "ece": 100 * metrics.ece(p.exited_probs, labels),
             "macs": metrics.average_cost(p.exit_levels, macs)} for p in points]
    return pd.DataFrame(rows).groupby("cost", as_index=False).mean().sort_values("cost")


def run_seed(settings: ProxySettings, seed: int) -> SeedResult:
    """Backbone once, train_dynn.py once per lambda, then every arm evaluated on the test images."""
    _, val_set, test_set, num_classes = build_jeidnn_datasets("digits", None, settings.img_size)
    val_loader = DataLoader(val_set, batch_size=256)
    test_loader = DataLoader(test_set, batch_size=256)
    model = create_model(ARCH, num_classes=num_classes, img_size=settings.img_size)
    mul_add = original_mul_add_per_exit(model, settings.img_size)
    costs = engine.CostTables(mul_add=[c / 1e6 for c in mul_add],
                              macs=[float(c) for c in executed_macs_per_exit(model, settings.img_size)],
                              normalized=normalized_costs(mul_add))
    with tempfile.TemporaryDirectory(prefix="jeidnn_proxy_") as tmp:
        backbone = Path(transfer_learning.main(transfer_learning.parse_args(
            transfer_argv(settings, seed, Path(tmp) / "backbone")))["best"])
        result = None
        for lam in settings.lambdas:
            args = train_dynn.parse_args(dynn_argv(settings, seed, lam, backbone, Path(tmp) / f"lambda_{lam}"))
            entry = train_dynn.main(args)
            if result is None:  # the warmed-up ICs are the same for every lambda of a seed (same seed, same data)
                result = baseline_and_backbone(args, backbone, num_classes, val_loader, test_loader, costs)
            trained = create_model(ARCH, num_classes=num_classes, img_size=settings.img_size)
            load_jeidnn_checkpoint(trained, train_dynn.run_folder(args) / train_dynn.LAST)
            out = _outputs(trained, test_loader, costs)
            probs = metrics.gated_probs(out.probs, out.exit_levels)
            result.gates.append({
                "lambda": lam, "acc": 100 * float((probs.argmax(1) == out.labels).mean()),
                "cost": metrics.average_cost(out.exit_levels, costs.mul_add),
                "macs": metrics.average_cost(out.exit_levels, costs.macs),
                "ece": 100 * metrics.ece(probs, out.labels),
                "exit0": float((out.exit_levels == 0).mean()), "ic0": entry["test"]["acc0"],
                "oracle0": entry["val"]["exit_optimal_gate0"]})
    return result


def baseline_and_backbone(args, backbone: Path, num_classes: int, val_loader: DataLoader, test_loader: DataLoader,
                          costs: engine.CostTables) -> SeedResult:
    """The frozen backbone with the warm-up's best ICs (``train_dynn.py``'s warm-up folder): the accuracy of every
    exit, and the confidence-threshold curve on those ICs (thresholds chosen on val)."""
    model = create_model(ARCH, num_classes=num_classes, img_size=args.img_size)
    load_transfer_checkpoint(model, backbone)
    folder = train_dynn.warmup_folder(args, args.img_size)
    for level, head in enumerate(model.intermediate_heads):
        head.load_state_dict(torch.load(folder / f"{level}.pth", weights_only=True)["state"])
    val, test = _outputs(model, val_loader, costs), _outputs(model, test_loader, costs)
    accs = [100 * float((p.argmax(1) == test.labels).mean()) for p in test.probs]
    points = threshold_baseline(val.probs, test.probs, test.labels, costs.mul_add, val_labels=val.labels)
    return SeedResult(final_acc=accs[-1], warmup_ic_acc=accs, full_macs=costs.macs[-1],
                      curve=_curve(points, test.labels, costs.macs))


def matched(result: SeedResult) -> list[dict[str, float]]:
    """Every gate point with the threshold curve interpolated at its cost (clamped at the curve's ends)."""
    curve = result.curve
    rows = []
    for gate in result.gates:
        at = {k: float(np.interp(gate["cost"], curve["cost"], curve[k])) for k in ("acc", "ece", "macs")}
        outside = gate["cost"] < curve["cost"].iloc[0] or gate["cost"] > curve["cost"].iloc[-1]
        rows.append({**gate, "base_acc": at["acc"], "base_ece": at["ece"], "base_macs": at["macs"],
                     "outside": outside})
    return rows


def _fmt(values: Sequence[float]) -> str:
    mean, std = tables.mean_std(values)
    return f"{mean:.2f} ± {std:.2f}"


def _seeds_text(values: Sequence[float]) -> str:
    return "[" + ", ".join(f"{v:+.2f}" for v in values) + "]"


def judge_claims(results: Sequence[SeedResult]) -> list[tables.Claim]:
    """The two claims of the module docstring, each from per-seed differences averaged over the lambdas."""
    rows = [matched(r) for r in results]
    d_acc = [float(np.mean([m["acc"] - m["base_acc"] for m in seed])) for seed in rows]
    d_ece = [float(np.mean([m["base_ece"] - m["ece"] for m in seed])) for seed in rows]
    points = sum(len(seed) for seed in rows)
    outside = sum(m["outside"] for seed in rows for m in seed)
    every = [m for seed in rows for m in seed]
    context = f"{outside} of {points} gate points lie outside the threshold curve's cost range (compared with its end"
    diagnostic = (
        f"Diagnostic: warmed-up IC 0 {_fmt([r.warmup_ic_acc[0] for r in results])} vs final head "
        f"{_fmt([r.final_acc for r in results])} top-1, so depth buys little here; the oracle sends "
        f"{_fmt([100 * m['oracle0'] for m in every])} % of the val images to IC 0; after the bi-level stage IC 0 "
        f"scores {_fmt([m['ic0'] for m in every])} on test, and the gates send "
        f"{_fmt([100 * m['exit0'] for m in every])} % of the test images out at IC 0 (over seeds and lambdas)")
    claims = []
    for diffs, claim, metric, paper_value, what in (
            (d_acc, "the learned gates' accuracy-cost curve dominates confidence thresholding",
             "top-1 %, gates - thresholds at equal Mul-Add (mean over lambdas)",
             "above the Boostnet / L2W-DEN curves on every dataset (e.g. CIFAR-10 T2T-7: 90.49 vs 87.68 / 87.34 at "
             "~9.3 M Mul-Add)", "top-1"),
            (d_ece, "lower ECE than confidence thresholding at matched cost",
             "ECE x100, thresholds - gates at equal Mul-Add (mean over lambdas)",
             "11.5 vs 70.7 / 70.2 (CIFAR-10 T2T-7; the baselines' ECE is inflated by a double softmax)", "ECE")):
        evidence = f"{what} difference per seed {_seeds_text(diffs)}; {context} point)"
        if tables.verdict(diffs)[0] != "reproduced":
            evidence += f". {diagnostic}"
        claims.append(tables.judge(PAPER, claim, metric, paper_value, diffs, evidence=evidence))
    return claims


def arm_rows(results: Sequence[SeedResult], settings: ProxySettings) -> list[dict]:
    """One row per arm for ``jeidnn_proxies.csv``: the backbone's final head, JEI-DNN at every lambda, and the
    threshold curve at the cost of every lambda (MACs: executed multiply-adds per image, averaged over the exits
    taken)."""
    def row(arm: str, values: Sequence[float], macs: Sequence[float]) -> dict:
        mean, std = tables.mean_std(values)
        return {"paper": PAPER, "arm": arm, "dataset": DATASET, "metric": METRIC, "mean": round(mean, 2),
                "std": round(std, 2), "seeds": len(values), "macs": int(round(float(np.mean(macs))))}

    rows = [row(STRONGEST, [r.final_acc for r in results], [r.full_macs for r in results])]
    per_seed = [matched(r) for r in results]
    for i, lam in enumerate(settings.lambdas):
        rows.append(row(f"JEI-DNN gates, lambda {lam:g}", [s[i]["acc"] for s in per_seed],
                        [s[i]["macs"] for s in per_seed]))
        rows.append(row(f"{THRESHOLD} at the cost of lambda {lam:g}", [s[i]["base_acc"] for s in per_seed],
                        [s[i]["base_macs"] for s in per_seed]))
    return rows


def detail_rows(results: Sequence[SeedResult], settings: ProxySettings) -> list[dict]:
    """Per lambda (mean ± std over seeds): gates and thresholds at matched cost."""
    per_seed = [matched(r) for r in results]
    rows = []
    for i, lam in enumerate(settings.lambdas):
        def get(key: str, i: int = i) -> list[float]:
            return [s[i][key] for s in per_seed]

        rows.append({"lambda": lam, "Mul-Add (M)": _fmt(get("cost")), "MMACs": _fmt([m / 1e6 for m in get("macs")]),
                     "exits at IC 0 (%)": _fmt([100 * x for x in get("exit0")]), "gates top-1": _fmt(get("acc")),
                     "thresholds top-1": _fmt(get("base_acc")), "gates ECE": _fmt(get("ece")),
                     "thresholds ECE": _fmt(get("base_ece"))})
    return rows


def plot(results: Sequence[SeedResult], settings: ProxySettings, path: Path) -> None:
    """Top-1 and ECE against Mul-Add: each seed's threshold curve, the gates' points (mean ± std over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.3))
    per_seed = [matched(r) for r in results]
    for ax, key, label in ((axes[0], "acc", "top-1 on the 360 test images (%)"),
                           (axes[1], "ece", "ECE x100 (15 bins, whole test set)")):
        for s, r in enumerate(results):
            ax.plot(r.curve["cost"], r.curve[key], "-", color="tab:gray", alpha=0.6, lw=1,
                    label=THRESHOLD if s == 0 else None)
        for i, lam in enumerate(settings.lambdas):
            cost = tables.mean_std([s[i]["cost"] for s in per_seed])
            value = tables.mean_std([s[i][key] for s in per_seed])
            ax.errorbar(cost[0], value[0], xerr=cost[1], yerr=value[1], fmt="s", capsize=3, color="tab:red",
                        label="JEI-DNN gates" if i == 0 else None)
            ax.annotate(f"λ={lam:g}", (cost[0], value[0]), fontsize=7, xytext=(6, 4 - 9 * i),
                        textcoords="offset points")
        ax.set_xlabel("Mul-Add per image (M, the original's counter)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"JEI-DNN proxy: {ARCH} on digits {settings.img_size}x{settings.img_size}, {len(results)} seed(s)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(path: Path, command: str, settings: ProxySettings, arms: list[dict], claims: list[tables.Claim],
                 results: Sequence[SeedResult], cpu_seconds: float) -> None:
    """``jeidnn_proxy.md``: command, machine, setting, verdict rule, arms, claims and the per-lambda table."""
    ics = [" / ".join(f"{a:.1f}" for a in np.mean([r.warmup_ic_acc for r in results], axis=0))]
    lines = [
        "# JEI-DNN proxy: the paper's claims on digits", "", f"Command: `{command}`", "",
        f"Machine: {tables.machine_info()}. CPU time: {cpu_seconds:.0f} s.", "",
        f"Setting: {DATASET}, `{ARCH}`, seeds 0-{len(results) - 1}. Backbone: `jeidnn/transfer_learning.py` from "
        f"random initialisation (no ImageNet weights here), {settings.backbone_epochs} epochs, SGD lr "
        f"{settings.backbone_lr} for backbone and head, no drop-path, checkpoint chosen on val. JEI-DNN: "
        f"`jeidnn/train_dynn.py` on the frozen backbone, warm-up {settings.warmup_epochs} epochs then "
        f"{settings.bilevel_epochs} bi-level epochs (GATE/CLASSIFIER every {settings.bilevel_batch_count} batches), "
        f"lr {settings.lr}, lambda in {', '.join(f'{x:g}' for x in settings.lambdas)}. Baseline: confidence "
        "thresholds (MSDNet geometric schedule, 39 points, chosen on val) on the warmed-up ICs. Test top-1 of the "
        f"warmed-up ICs 0-5 and the final head (mean over seeds): {ics[0]}.", "",
        f"Verdict rule: {tables.VERDICT_RULE}. Margins: 0 for both claims.", "",
        "## Arms (top-1 %, mean and std over seeds)", "", tables.markdown(arms), "",
        "## Claims", "", tables.markdown(tables.frame(claims, tables.CLAIM_COLUMNS)), "",
        "## Every operating point (mean ± std over seeds; thresholds interpolated at the gates' Mul-Add)", "",
        tables.markdown(detail_rows(results, settings)), "", f"![proxy]({path.stem}.png)", ""]
    path.write_text("\n".join(lines))


def settings_from(args) -> ProxySettings:
    settings = tables.proxy_settings(args, DEMO, FULL, TINY)
    if args.lambdas is not None:
        if any(lam < 0 for lam in args.lambdas):
            raise ProxyError(f"--lambdas must be 0 or more, got {' '.join(map(str, args.lambdas))}")
        settings = replace(settings, lambdas=tuple(args.lambdas))
    return settings


def main(argv: Sequence[str] | None = None) -> int:
    """Run both entry points for every seed, judge the claims, write the tables, the plot and the report."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = get_args_parser().parse_args(argv)
    settings = settings_from(args)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    start = time.process_time()
    results = [run_seed(settings, seed) for seed in tqdm(range(settings.seeds), desc="JEI-DNN proxy seeds",
                                                          dynamic_ncols=True)]
    claims = judge_claims(results)
    arms = arm_rows(results, settings)
    tables.write_proxy_results(output_dir, NAME, arms, claims)
    plot(results, settings, output_dir / f"{NAME}_proxy.png")
    cpu_seconds = time.process_time() - start
    write_report(output_dir / f"{NAME}_proxy.md", "python -m benchmarks.proxies.jeidnn " + shlex.join(argv),
                 settings, arms, claims, results, cpu_seconds)
    tables.print_summary(arms, claims, output_dir / f"{NAME}_proxy.md", cpu_seconds)
    return 0


def get_args_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="proxies.jeidnn", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=None,
                        help=f"number of seeds, 0..N-1 (default {DEMO.seeds}; {FULL.seeds} with --full, "
                             f"{TINY.seeds} with --tiny)")
    parser.add_argument("--lambdas", type=float, nargs="+", default=None,
                        help="--ce_ic_tradeoff values, one train_dynn.py run each (default "
                             f"{' '.join(f'{x:g}' for x in DEMO.lambdas)}; "
                             f"{' '.join(f'{x:g}' for x in FULL.lambdas)} with --full)")
    parser.add_argument("--full", action="store_true", help="the longer run: more seeds, lambdas and epochs")
    parser.add_argument("--tiny", action="store_true", help="test size (seconds): 1 seed, short schedules")
    parser.add_argument("--output-dir", default="results",
                        help="where jeidnn_proxies.csv, jeidnn_claims.csv, jeidnn_proxy.md and jeidnn_proxy.png go")
    return parser


if __name__ == "__main__":
    sys.exit(run_cli(main, prog="proxies.jeidnn"))
