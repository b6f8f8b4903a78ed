"""DyT proxy: the paper's accuracy-FLOPs claims on a digits transfer task, through ``dyt/main_image.py``.

Every stage is ``dyt.main_image.main(dyt.main_image.parse_args(argv))`` in this process, on scikit-learn's
``digits`` drawn shifted (``--digits_shift canvas``: the 8x8 digit at 12 px in a random quadrant of a noisy
24 px canvas, so 27 of the 36 patch tokens are background), model ``vit_digits_tiny`` (patch 4, width 48,
depth 4):

1. **Pre-training** (once per proxy run, seed 0): the plain ViT (``--ffn_num 0 --dispatch none``) trained
   from scratch on digits 0-4 (716 train images), standing in for the IN-21K backbone.
2. **Adaptation** to digits 5-9 (a new class split: 716 train / 180 val images), from that backbone
   (``--finetune``), per seed, with five arms:

   * full fine-tuning (``--fulltune``, no adapter; the strongest arm, which must reach >= 90 % top-1);
   * AdaptFormer: the frozen backbone with a bottleneck-8 adapter per block and no dispatcher
     (``--dispatch none``), trained with CE only, the paper's main PEFT baseline;
   * DyT at r = 0.5: adapters + MLP dispatchers (Sec. 3.1, Eq. 1-2), the NeurIPS loss of Sec. 3.2 (CE + rate loss
     + complete-model CE + KL);
   * a random token mask at r = 0.5 and a fixed centre mask at r = 0.5: DyT's model and loss with every
     dispatcher's mask replaced (``--token_mask random`` / ``centre``, controls that are not in the original;
     ``dyt/README.md``).

Every arm is scored by top-1 on the 180 target val images at its last epoch (no model selection), and costs
executed MACs per image on those images (``dyt.flops.executed_macs_per_sample``: ``common.flops`` on the
gather path, so skipped tokens cost nothing). For the arms with dispatchers the report also gives where the eval
masks fall: the share of the kept patch tokens on the digit's quadrant (base rate 0.25) and the share of the digit's
tokens kept.

Claims (Zhao et al., NeurIPS 2024: abstract, Fig. 1, Table 3 and Table 6; Table 7 of App. A.3.1 for the random
dispatch) and the verdict rule, fixed before any number was seen. Each claim is judged by
``benchmarks.tables.judge`` on per-seed paired differences oriented so that > 0 supports the claim:

1. "At r = 0.5 DyT matches AdaptFormer's accuracy with fewer FLOPs": ``d_s`` = top-1(DyT) - top-1(AdaptFormer),
   margin 1 point; the evidence gives both arms' MACs and their ratio.
2. "DyT's learned dispatch beats a random token mask at the same rate": ``d_s`` = top-1(DyT) - top-1(random),
   margin 0.
3. "DyT's learned dispatch beats a fixed (centre) token mask at the same rate": ``d_s`` = top-1(DyT) -
   top-1(centre), margin 0.

    python -m benchmarks.proxies.dyt              # demo: 3 seeds (141 s CPU at one thread; ~95 s alone on 2)
    python -m benchmarks.proxies.dyt --full       # 5 seeds, longer schedules
    python -m benchmarks.proxies.dyt --tiny       # test size: 1 seed, 1-2 epochs (seconds)

Writes ``dyt_proxies.csv``, ``dyt_claims.csv``, ``dyt_proxy.md`` and ``dyt_proxy.png`` to ``--output-dir``; the
entry points' checkpoints and logs go to a temporary folder.
"""

from __future__ import annotations

import contextlib
import math
import shlex
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from benchmarks import tables
from common.errors import ArgumentParser, run_cli
from dyt import main_image
from dyt.data import num_classes_of
from dyt.flops import executed_macs_per_sample

NAME = "dyt"
PAPER = "DyT"
MODEL = "vit_digits_tiny"
SOURCE, TARGET = "0-4", "5-9"
DATASET = "digits 5-9 on a 24 px noisy canvas (716 train / 180 val), backbone pre-trained on digits 0-4"
VAL_IMAGES = 180
METRIC = "top-1 %"
RATE = 0.5
FULL_FT, ADAPTFORMER, DYT = "full fine-tuning", "AdaptFormer-8", f"DyT-8 r={RATE:g}"
RANDOM, CENTRE = f"random mask r={RATE:g}", f"centre mask r={RATE:g}"
# each arm's flags on top of the common adaptation argv
ARMS: dict[str, list[str]] = {
    FULL_FT: ["--fulltune", "--ffn_num", "0", "--dispatch", "none", "--no_distill"],
    ADAPTFORMER: ["--ffn_num", "8", "--dispatch", "none", "--no_distill"],
    DYT: ["--ffn_num", "8", "--token_target_ratio", str(RATE)],
    RANDOM: ["--ffn_num", "8", "--token_target_ratio", str(RATE), "--token_mask", "random"],
    CENTRE: ["--ffn_num", "8", "--token_target_ratio", str(RATE), "--token_mask", "centre"],
}


@dataclass(frozen=True)
class ProxySettings:
    """The schedule. Model size, image size, epochs and lr were chosen on the full fine-tuning arm alone (>= 90 %
    top-1 on the target val) and to fit the CPU budget; the adapters use the VTAB recipe's scale 1 and weight
    decay 1e-4 (``main_vtab.py``'s defaults), bottleneck 8."""

    seeds: int = 3
    pretrain_epochs: int = 15
    pretrain_lr: float = 2e-3
    epochs: int = 6
    lr: float = 3e-3
    batch: int = 32


DEMO = ProxySettings()
FULL = ProxySettings(seeds=5, pretrain_epochs=30, epochs=12)
TINY = ProxySettings(seeds=1, pretrain_epochs=2, epochs=1)


def _common(batch: int, epochs: int, seed: int, output_dir: Path) -> list[str]:
    return ["--dataset", "digits", "--digits_shift", "canvas", "--model", MODEL, "--device", "cpu",
            "--num_workers", "0", "--no-mlflow", "--batch_size", str(batch), "--epochs", str(epochs),
            "--eval_freq", str(epochs), "--warmup_epochs", "1", "--seed", str(seed), "--output_dir", str(output_dir)]


def pretrain_argv(settings: ProxySettings, output_dir: Path) -> list[str]:
    """The source task: the plain ViT from scratch on digits 0-4 (every parameter trains, CE only)."""
    return [*_common(settings.batch, settings.pretrain_epochs, 0, output_dir), "--digits_classes", SOURCE,
            "--ffn_num", "0", "--dispatch", "none", "--no_distill", "--lr", str(settings.pretrain_lr),
            "--weight_decay", "0.05"]


def adapt_argv(settings: ProxySettings, arm: str, seed: int, backbone: Path, output_dir: Path) -> list[str]:
    """The target task for one arm and seed, from the pre-trained backbone."""
    return [*_common(settings.batch, settings.epochs, seed, output_dir), "--digits_classes", TARGET,
            "--finetune", str(backbone), "--lr", str(settings.lr), "--weight_decay", "1e-4", "--scale", "1",
            *ARMS[arm]]


def digit_tokens(images: torch.Tensor, grid: int) -> torch.Tensor:
    """[B, grid * grid] 0/1: the patch tokens of the quadrant that holds the digit (the brightest quadrant of a
    ``--digits_shift canvas`` image)."""
    side = images.shape[-1] // 2
    quadrant = images[:, 0].unfold(1, side, side).unfold(2, side, side).amax(dim=(-1, -2)).flatten(1).argmax(1)
    half = grid // 2
    cells = torch.zeros(len(images), 2, 2, dtype=torch.bool)
    cells.view(len(images), 4)[torch.arange(len(images)), quadrant] = True
    return cells.repeat_interleave(half, 1).repeat_interleave(half, 2).flatten(1).float()


@torch.no_grad()
def measure_checkpoint(argv: list[str]) -> dict[str, float]:
    """On the target val images, for the model the run ``argv`` wrote (its ``final_checkpoint.pth``): executed
    MACs per image and, for the runs with dispatchers, the share of the kept patch tokens (over layers) that lie on
    the digit's quadrant (``fg_share``; the base rate is 0.25) and the share of the digit's tokens kept
    (``fg_kept``)."""
    args = main_image.parse_args(argv)
    model = main_image.create_model(args, num_classes_of("digits", digits=main_image.digits_variant(args)))
    main_image.load_eval_checkpoint(model, str(Path(args.output_dir) / main_image.FINAL_CHECKPOINT))
    val = main_image.load_data(args, main_image.model_img_size(model)).test
    out = {"macs": executed_macs_per_sample(model, DataLoader(val, batch_size=256))}
    if args.dispatch != "none":
        kept = model.eval()(val.images)[1]["token_select"][..., 0]  # [B, L, N-1]
        digit = digit_tokens(val.images, math.isqrt(kept.shape[-1]))[:, None, :].expand_as(kept)
        out["fg_share"] = float((kept * digit).sum() / kept.sum().clamp(min=1))
        out["fg_kept"] = float((kept * digit).sum() / digit.sum())
    return out


def run(settings: ProxySettings) -> tuple[float, dict[str, list[dict[str, float]]]]:
    """Pre-train once, then every arm for every seed: ``(source val top-1, {arm: [per-seed results]})``. The entry
    points' output goes to a log in the temporary folder."""
    results: dict[str, list[dict[str, float]]] = {arm: [] for arm in ARMS}
    progress = sys.stderr
    with (tempfile.TemporaryDirectory(prefix="dyt_proxy_") as tmp, open(Path(tmp) / "log.txt", "w") as log,
          contextlib.redirect_stdout(log), contextlib.redirect_stderr(log)):
        source = main_image.main(main_image.parse_args(pretrain_argv(settings, Path(tmp) / "pretrain")))
        backbone = Path(tmp) / "pretrain" / main_image.FINAL_CHECKPOINT
        for seed in range(settings.seeds):
            for arm in ARMS:
                argv = adapt_argv(settings, arm, seed, backbone, Path(tmp) / f"{len(results[arm])}_{arm}")
                start = time.process_time()
                test = main_image.main(main_image.parse_args(argv))["test"]
                results[arm].append({"acc": test["acc1"], "rate": test.get("activation_rate", 1.0),
                                     **measure_checkpoint(argv), "cpu_s": time.process_time() - start})
                print(f"[dyt proxy] seed {seed} {arm}: top-1 {test['acc1']:.2f}", file=progress, flush=True)
    return source["test"]["acc1"], results


def _values(results: dict[str, list[dict[str, float]]], arm: str, key: str) -> list[float]:
    return [r[key] for r in results[arm]]


def _fmt(values: Sequence[float], digits: int = 2) -> str:
    mean, std = tables.mean_std(values)
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _per_seed(diffs: Sequence[float]) -> str:
    return "[" + ", ".join(f"{d:+.2f}" for d in diffs) + "]"


def diagnostic(diffs: Sequence[float], margin: float) -> str:
    """Why a claim is not reproduced: the sign of the mean difference and the noise of one run."""
    if len(diffs) < 2:
        return ". Diagnostic: one seed gives no interval"
    mean, std = tables.mean_std(diffs)
    noise = 100 * np.sqrt(0.25 / VAL_IMAGES)
    side = "below" if mean < -margin else "above"
    return (f". Diagnostic: the mean difference {mean:+.2f} lies {side} -margin and the seeds spread by std "
            f"{std:.2f} points; one run's top-1 on {VAL_IMAGES} images has a binomial standard error of up to "
            f"{noise:.1f} points")


def judge_claims(results: dict[str, list[dict[str, float]]]) -> list[tables.Claim]:
    """The three claims of the module docstring."""
    acc = {arm: np.array(_values(results, arm, "acc")) for arm in ARMS}
    macs = {arm: float(np.mean(_values(results, arm, "macs"))) for arm in ARMS}
    rate = _fmt(_values(results, DYT, "rate"), 3)
    ratio = macs[DYT] / macs[ADAPTFORMER]

    def share(arm: str, key: str) -> str:
        return _fmt(_values(results, arm, key), 3)

    masks_text = (f"; DyT's eval masks: {share(DYT, 'fg_share')} of the kept patch tokens lie on the digit's quadrant "
                  f"(base rate 0.25; centre mask {share(CENTRE, 'fg_share')}), {share(DYT, 'fg_kept')} of the digit's "
                  f"tokens are kept (random mask {share(RANDOM, 'fg_kept')})")
    claims = []
    for other, claim, margin, paper_value, extra in (
            (ADAPTFORMER, f"at r = {RATE:g} DyT matches AdaptFormer's accuracy with fewer FLOPs", 1.0,
             "VTAB-1K 77.14 vs 74.75 at 12.54 vs 17.61 GFLOPs (Table 3); CIFAR-100 91.37 vs 92.03 at 12.21 vs 17.81 "
             "(Table 6)",
             f"MACs per image DyT {macs[DYT] / 1e6:.3f} M vs AdaptFormer {macs[ADAPTFORMER] / 1e6:.3f} M, ratio "
             f"{ratio:.2f} (paper 12.21 / 17.81 = 0.69); realised activation rate {rate}"),
            (RANDOM, f"DyT's learned dispatch beats a random token mask at r = {RATE:g}", 0.0,
             "CIFAR-100 91.37 (token dispatcher) vs 89.38 / 87.15 (random dispatch; Table 7, App. A.3.1)",
             f"MACs per image {macs[DYT] / 1e6:.3f} M vs {macs[RANDOM] / 1e6:.3f} M"),
            (CENTRE, f"DyT's learned dispatch beats a fixed centre token mask at r = {RATE:g}", 0.0,
             "not in the paper (a control of this repository)",
             f"MACs per image {macs[DYT] / 1e6:.3f} M vs {macs[CENTRE] / 1e6:.3f} M")):
        diffs = (acc[DYT] - acc[other]).tolist()
        evidence = (f"top-1 DyT - {other} per seed {_per_seed(diffs)} (DyT {_fmt(acc[DYT])}, {other} "
                    f"{_fmt(acc[other])}); {extra}")
        if tables.verdict(diffs, margin)[0] != "reproduced":
            evidence += diagnostic(diffs, margin) + masks_text
        claims.append(tables.judge(PAPER, claim, f"{METRIC}, DyT - {other} (target val, last epoch)", paper_value,
                                   diffs, margin=margin, evidence=evidence))
    return claims


def arm_rows(results: dict[str, list[dict[str, float]]]) -> list[dict]:
    """One row per arm for ``dyt_proxies.csv`` (MACs: executed MACs per target val image, mean over seeds)."""
    rows = []
    for arm in ARMS:
        mean, std = tables.mean_std(_values(results, arm, "acc"))
        rows.append({"paper": PAPER, "arm": arm, "dataset": DATASET, "metric": METRIC, "mean": round(mean, 2),
                     "std": round(std, 2), "seeds": len(results[arm]),
                     "macs": int(round(float(np.mean(_values(results, arm, "macs")))))})
    return rows


def detail_rows(results: dict[str, list[dict[str, float]]]) -> list[dict]:
    """Per arm: top-1 per seed, realised activation rate, MACs, where the masks fall (share of the kept patch
    tokens on the digit's quadrant, share of the digit's tokens kept) and the CPU seconds of one run."""
    return [{"arm": arm, "top-1 per seed": " / ".join(f"{a:.1f}" for a in _values(results, arm, "acc")),
             "activation rate": _fmt(_values(results, arm, "rate"), 3),
             "MMACs per image": _fmt([m / 1e6 for m in _values(results, arm, "macs")], 3),
             "kept tokens on the digit": _fmt(_values(results, arm, "fg_share"), 3) if "fg_share" in results[arm][0]
             else "-",
             "digit tokens kept": _fmt(_values(results, arm, "fg_kept"), 3) if "fg_kept" in results[arm][0] else "-",
             "CPU s per run": f"{np.mean(_values(results, arm, 'cpu_s')):.1f}"} for arm in ARMS]


def plot(arms: list[dict], results: dict[str, list[dict[str, float]]], path: Path) -> None:
    """Top-1 against executed MACs per arm (error bars: std over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.3))
    for row, marker in zip(arms, "*osxP", strict=True):
        macs = tables.mean_std([m / 1e6 for m in _values(results, row["arm"], "macs")])
        ax.errorbar(macs[0], row["mean"], xerr=macs[1], yerr=row["std"], fmt=marker, capsize=3, ms=8,
                    label=row["arm"])
    ax.set_xlabel("executed MMACs per image (gather path)")
    ax.set_ylabel("top-1 on digits 5-9, target val (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"DyT proxy: {MODEL}, digits 0-4 -> 5-9 on a noisy canvas, {arms[0]['seeds']} seed(s)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(path: Path, command: str, settings: ProxySettings, source_acc: float, arms: list[dict],
                 claims: list[tables.Claim], results: dict[str, list[dict[str, float]]], cpu_seconds: float) -> None:
    """``dyt_proxy.md``: command, machine, setting, verdict rule, arms, claims and the per-arm details."""
    lines = [
        "# DyT proxy: the paper's claims on a digits transfer task", "", f"Command: `{command}`", "",
        f"Machine: {tables.machine_info()}. CPU time: {cpu_seconds:.0f} s.", "",
        f"Setting: `dyt/main_image.py` with `--dataset digits --digits_shift canvas --model {MODEL}` (24 px canvas, "
        "patch 4: 36 patch tokens + CLS, the digit in one quadrant). Pre-training once (seed 0): the plain ViT from "
        f"scratch on digits {SOURCE}, {settings.pretrain_epochs} epochs, AdamW lr {settings.pretrain_lr}, weight "
        f"decay 0.05, batch {settings.batch}; source val top-1 {source_acc:.1f} %. Adaptation to digits {TARGET} "
        f"from that backbone, seeds 0-{settings.seeds - 1}: {settings.epochs} epochs, AdamW lr {settings.lr}, "
        f"weight decay 1e-4, one warm-up epoch then cosine, batch {settings.batch}; adapters bottleneck 8, scale 1. "
        "Top-1 on the 180 target val images at the last epoch.", "",
        f"Verdict rule: {tables.VERDICT_RULE}. Margins: 1 point for claim 1 ('matches'), 0 for claims 2 and 3.", "",
        "## Arms (top-1 %, mean and std over seeds; MACs per image)", "", tables.markdown(arms), "",
        "## Claims", "", tables.markdown(tables.frame(claims, tables.CLAIM_COLUMNS)), "",
        "## Per arm", "", tables.markdown(detail_rows(results)), "", f"![proxy]({path.stem}.png)", ""]
    path.write_text("\n".join(lines))


def settings_from(args) -> ProxySettings:
    return tables.proxy_settings(args, DEMO, FULL, TINY, ("seeds",))


def main(argv: Sequence[str] | None = None) -> int:
    """Pre-train, adapt with every arm for every seed, judge the claims, write the tables, plot and report."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = get_args_parser().parse_args(argv)
    settings = settings_from(args)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    start = time.process_time()
    source_acc, results = run(settings)
    claims = judge_claims(results)
    arms = arm_rows(results)
    tables.write_proxy_results(output_dir, NAME, arms, claims)
    plot(arms, results, output_dir / f"{NAME}_proxy.png")
    cpu_seconds = time.process_time() - start
    write_report(output_dir / f"{NAME}_proxy.md", "python -m benchmarks.proxies.dyt " + shlex.join(argv), settings,
                 source_acc, arms, claims, results, cpu_seconds)
    tables.print_summary(arms, claims, output_dir / f"{NAME}_proxy.md", cpu_seconds)
    return 0


def get_args_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="proxies.dyt", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=None,
                        help=f"number of adaptation seeds, 0..N-1 (default {DEMO.seeds}; {FULL.seeds} with --full, "
                             f"{TINY.seeds} with --tiny)")
    parser.add_argument("--full", action="store_true", help="the longer run: more seeds and epochs")
    parser.add_argument("--tiny", action="store_true", help="test size (seconds): 1 seed, 1-2 epochs")
    parser.add_argument("--output-dir", default="results",
                        help="where dyt_proxies.csv, dyt_claims.csv, dyt_proxy.md and dyt_proxy.png go")
    return parser


if __name__ == "__main__":
    sys.exit(run_cli(main, prog="proxies.dyt"))
