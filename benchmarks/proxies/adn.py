"""ADN proxy: the paper's accuracy claims on the embedded digits, through ``adn/train_adn.py``.

Every network is trained by the entry point itself, ``train_adn.main(train_adn.parse_args(argv))``, on scikit-learn's
``digits`` (all 1,437 training / 360 validation images, at their native 8x8 pixels) with ``resnet_adn_cifar``
([2, 2, 4, 2] Bottlenecks, width 16; 4 skippable stages, so 16 sub-networks). Per seed, four trainings with the same
initial weights (``--seed``) and the same schedule:

* ADN: the paper's training (super-net with CE, base-net distilled from it; skip-aware norms);
* ADN with shared norms: the same with ``--no-skip-aware-norms``;
* the super-net (FFFF) and the base-net (TTTT) trained individually, ``--train-skip-cfg FFFF`` / ``TTTT`` (plain
  CE on that one network; adn/README.md, "Differences from the original").

Claims (Kang & Lee, NeurIPS 2024: the abstract, and the "(+x %p)" gains of the original README's model zoo) and
their verdict rule, fixed before any number was seen. Metric: top-1 % on the 360 validation images; each claim is
judged by ``benchmarks.tables.judge`` on the per-seed paired difference, oriented so that > 0 supports the claim:

1. "The super-net of ADN is as accurate as the individually trained super-net": ``d_s`` = ADN FFFF - individually
   trained FFFF, margin 1 point (a "matches" claim; the paper reports +0.9 for ResNet-50).
2. "The base-net of the same ADN training is as accurate as the individually trained base-net": ``d_s`` = ADN TTTT -
   individually trained TTTT, margin 1 point (the paper: +1.1).
3. "Skip-aware norms beat shared norms" (the paper's ablation of the skip-aware normalization): ``d_s`` = ADN TTTT
   - ADN-with-shared-norms TTTT, margin 0.
4. "Accuracy rises with MACs across the 2^S sub-networks, the never-trained intermediate ones included": ``d_s`` =
   Spearman rank correlation of ADN's top-1 and executed MACs over the 16 configurations of seed s, margin 0.

Diagnostic (not a claim): ADN's weights with the BatchNorm running statistics re-estimated for each configuration
on ``recalibration_samples`` training images. ADN collects running statistics only in the super-net and base-net
passes; an intermediate configuration's norms (and the never-switched ``downsample`` norms) then see inputs that
neither pass produced. Where a claim is not reproduced, its evidence says what the re-estimated weights give.

    python -m benchmarks.proxies.adn                 # demo: 3 seeds x 3 epochs
    python -m benchmarks.proxies.adn --full          # 5 seeds x 8 epochs
    python -m benchmarks.proxies.adn --tiny          # test size: 1 seed x 1 epoch

Writes ``adn_proxies.csv``, ``adn_claims.csv``, ``adn_proxy.md`` and ``adn_proxy.png`` to ``--output-dir``.
"""

from __future__ import annotations

import copy
import shlex
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from adn import train_adn
from adn.engine import evaluate
from adn.models import create_model
from adn.weights import load_weights
from benchmarks import tables
from common.data import build_loader
from common.errors import ArgumentParser, run_cli

NAME = "adn"
PAPER = "ADN"
MODEL = "resnet_adn_cifar"
SUPER, BASE = "FFFF", "TTTT"
DATASET = "digits 8x8 (1,437 train / 360 val)"
METRIC = "top-1 %"
MATCH_MARGIN = 1.0  # points of top-1 for the two "matches" claims
# the arms run per seed: name -> the entry-point flags that make it
ARMS: dict[str, list[str]] = {
    "ADN": ["--eval-all-skip-cfgs"],
    "ADN, shared norms": ["--eval-all-skip-cfgs", "--no-skip-aware-norms"],
    f"individually trained {SUPER}": ["--train-skip-cfg", SUPER],
    f"individually trained {BASE}": ["--train-skip-cfg", BASE],
}
RECALIBRATED = "ADN, BN re-estimated per configuration (diagnostic)"


@dataclass(frozen=True)
class ProxySettings:
    """The proxy's schedule. Chosen on the baseline arm (the individually trained super-net reaches >= 90 %)."""

    seeds: int = 3
    epochs: int = 3
    img_size: int = 8
    batch_size: int = 64
    lr: float = 0.05
    recalibration_samples: int = 256


DEMO = ProxySettings()
FULL = ProxySettings(seeds=5, epochs=8)
TINY = ProxySettings(seeds=1, epochs=1, recalibration_samples=64)


def entry_argv(settings: ProxySettings, seed: int, output_dir: Path) -> list[str]:
    """The ``adn/train_adn.py`` command line shared by every arm (SGD, cosine schedule, one process, no MLflow)."""
    return ["--dataset", "digits", "--model", MODEL, "--device", "cpu", "--val-crop-size", str(settings.img_size),
            "-b", str(settings.batch_size), "-j", "0", "--epochs", str(settings.epochs), "--lr", str(settings.lr),
            "--lr-scheduler", "cosineannealinglr", "--seed", str(seed), "--print-freq", "1000", "--no-mlflow",
            "--output-dir", str(output_dir)]


def recalibrated_accuracies(argv: list[str], checkpoint: Path, samples: int, seed: int) -> dict[str, float]:
    """Top-1 of every configuration of the ADN checkpoint after re-estimating all BatchNorm running statistics
    (a cumulative average over ``samples`` training images run through that configuration in train mode)."""
    args = train_adn.parse_args(argv)
    train_set, val_set = train_adn.load_data(args)
    model = create_model(MODEL, num_classes=val_set.num_classes)
    load_weights(model, checkpoint)
    images = torch.stack([image for image, _ in tables.subset(train_set, samples, seed)])
    loader = build_loader(val_set, 256, train=False)
    criterion = nn.CrossEntropyLoss()
    accuracies = {}
    for cfg in model.configurations():
        copy_ = copy.deepcopy(model)
        for module in copy_.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.reset_running_stats()
                module.momentum = None
        copy_.train()
        with torch.no_grad():
            copy_(images, cfg)
        accuracies[cfg] = evaluate(copy_, criterion, loader, "cpu", cfg, desc=f"re-estimated {cfg}")["acc1"]
    return accuracies


def run_seed(settings: ProxySettings, seed: int) -> tuple[dict[str, dict[str, float]], dict[str, int]]:
    """All arms of one seed: ``{arm: {skip_cfg: top-1}}`` (plus the diagnostic) and the MACs per configuration."""
    acc: dict[str, dict[str, float]] = {}
    macs: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="adn_proxy_") as tmp:
        for arm, flags in ARMS.items():
            out = Path(tmp) / arm.replace(" ", "_").replace(",", "")
            argv = entry_argv(settings, seed, out) + flags
            result = train_adn.main(train_adn.parse_args(argv))
            if "skip_cfgs" in result:
                acc[arm] = {row["skip_cfg"]: row["acc1"] for row in result["skip_cfgs"]}
                macs.update({row["skip_cfg"]: row["macs"] for row in result["skip_cfgs"]})
            else:
                trained = flags[flags.index("--train-skip-cfg") + 1]
                acc[arm] = {trained: result["val"]["trained"]["acc1"]}
            if arm == "ADN":
                acc[RECALIBRATED] = recalibrated_accuracies(argv, out / "checkpoint.pth",
                                                            settings.recalibration_samples, seed)
    return acc, macs


def per_seed(runs: Sequence[dict[str, dict[str, float]]], arm: str, cfg: str) -> list[float]:
    return [run[arm][cfg] for run in runs]


def _fmt(values: Sequence[float]) -> str:
    mean, std = tables.mean_std(values)
    return f"{mean:.2f} ± {std:.2f}"


def _diffs(a: Sequence[float], b: Sequence[float]) -> list[float]:
    return [x - y for x, y in zip(a, b, strict=True)]


def _seeds_text(values: Sequence[float]) -> str:
    return "[" + ", ".join(f"{v:+.2f}" for v in values) + "]"


def judge_claims(runs: Sequence[dict[str, dict[str, float]]], macs: dict[str, int]) -> list[tables.Claim]:
    """The four claims of the module docstring, each from per-seed paired differences."""
    cfgs = list(macs)
    cost = [macs[c] for c in cfgs]
    claims = []
    for cfg, role, paper_value in ((SUPER, "super-net", "77.6 vs 76.7 (+0.9), ResNet-50 ImageNet"),
                                   (BASE, "base-net", "76.1 vs 75.0 (+1.1), ResNet-50 ImageNet")):
        adn, alone = per_seed(runs, "ADN", cfg), per_seed(runs, f"individually trained {cfg}", cfg)
        diffs = _diffs(adn, alone)
        evidence = (f"ADN {cfg} {_fmt(adn)} vs individually trained {_fmt(alone)}; d per seed {_seeds_text(diffs)}")
        outcome = tables.verdict(diffs, MATCH_MARGIN)[0]
        if outcome != "reproduced":
            fixed = per_seed(runs, RECALIBRATED, cfg)
            evidence += (f". Diagnostic: with BN statistics re-estimated for {cfg} ADN gives {_fmt(fixed)} "
                         f"(d {_seeds_text(_diffs(fixed, alone))})")
        claims.append(tables.judge(PAPER, f"the {role} ({cfg}) of one ADN training matches the individually "
                                   f"trained {role}", f"{METRIC}, ADN - individual", paper_value, diffs,
                                   margin=MATCH_MARGIN, evidence=evidence))

    adn, shared = per_seed(runs, "ADN", BASE), per_seed(runs, "ADN, shared norms", BASE)
    diffs = _diffs(adn, shared)
    others = [c for c in cfgs if c != SUPER]
    sub_adn = [sum(run["ADN"][c] for c in others) / len(others) for run in runs]
    sub_shared = [sum(run["ADN, shared norms"][c] for c in others) / len(others) for run in runs]
    claims.append(tables.judge(
        PAPER, "skip-aware norms beat shared norms (base-net)", f"{METRIC} of {BASE}, skip-aware - shared",
        "ablation in the paper (number not available here)", diffs,
        evidence=(f"{BASE}: skip-aware {_fmt(adn)} vs shared {_fmt(shared)}; d per seed {_seeds_text(diffs)}; "
                  f"mean of the {len(others)} sub-networks: {_fmt(sub_adn)} vs {_fmt(sub_shared)}")))

    rho = [tables.spearman(cost, [run["ADN"][c] for c in cfgs]) for run in runs]
    evidence = f"Spearman per seed {_seeds_text(rho)}"
    if tables.verdict(rho)[0] != "reproduced":
        fixed = [tables.spearman(cost, [run[RECALIBRATED][c] for c in cfgs]) for run in runs]
        worst = [min(run["ADN"].values()) for run in runs]
        worst_fixed = [min(run[RECALIBRATED].values()) for run in runs]
        evidence += (f"; worst configuration {_fmt(worst)}. Diagnostic: with BN statistics re-estimated per "
                     f"configuration, Spearman {_seeds_text(fixed)} and worst configuration {_fmt(worst_fixed)} "
                     "(ADN collects running statistics in the super-net and base-net passes only)")
    claims.append(tables.judge(PAPER, f"accuracy rises with MACs across the {len(cfgs)} sub-networks",
                               "Spearman(top-1, MACs) per seed", "1.0 over the README's 4 ResNet50-ADN rows", rho,
                               evidence=evidence))
    return claims


def arm_rows(runs: Sequence[dict[str, dict[str, float]]], macs: dict[str, int]) -> list[dict]:
    """One row per arm for ``adn_proxies.csv``: ADN's 16 sub-networks, the individually trained super- and base-net,
    the shared-norm ablation's super- and base-net, and ADN's super- and base-net with re-estimated BN statistics
    (the diagnostic)."""
    def row(arm: str, cfg: str, label: str) -> dict:
        mean, std = tables.mean_std(per_seed(runs, arm, cfg))
        return {"paper": PAPER, "arm": label, "dataset": DATASET, "metric": METRIC, "mean": round(mean, 2),
                "std": round(std, 2), "seeds": len(runs), "macs": macs[cfg]}

    roles = {SUPER: " (super-net)", BASE: " (base-net)"}
    rows = [row("ADN", cfg, f"ADN {cfg}{roles.get(cfg, '')}") for cfg in macs]
    rows += [row(f"individually trained {cfg}", cfg, f"individually trained {cfg}{roles[cfg]}") for cfg in roles]
    rows += [row("ADN, shared norms", cfg, f"ADN, shared norms {cfg}{roles[cfg]}") for cfg in roles]
    rows += [row(RECALIBRATED, cfg, f"ADN {cfg}{roles[cfg]}, BN re-estimated (diagnostic)") for cfg in roles]
    return rows


def plot(runs: Sequence[dict[str, dict[str, float]]], macs: dict[str, int], settings: ProxySettings,
         path: Path) -> None:
    """Top-1 against executed MACs per image for every arm (error bars: std over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    styles = {"ADN": "o", "ADN, shared norms": "^", RECALIBRATED: "x", f"individually trained {SUPER}": "*",
              f"individually trained {BASE}": "*"}
    for i, (arm, marker) in enumerate(styles.items()):
        cfgs = sorted(runs[0][arm], key=lambda c: macs[c])
        stats = [tables.mean_std(per_seed(runs, arm, c)) for c in cfgs]
        x = [macs[c] / 1e6 + 0.01 * (i - 2) for c in cfgs]  # equal-cost configurations: arms shifted apart
        ax.errorbar(x, [m for m, _ in stats], yerr=[s for _, s in stats], label=arm, marker=marker, linestyle="none",
                    markersize=12 if marker == "*" else 5, capsize=2, elinewidth=0.8)
    ax.set_xlabel(f"executed MMACs per image ({settings.img_size}x{settings.img_size}; arms shifted slightly apart)")
    ax.set_ylabel("top-1 accuracy on digits val (%)")
    ax.set_title(f"ADN proxy: {MODEL}, {settings.epochs} epochs, {len(runs)} seed(s)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(path: Path, command: str, settings: ProxySettings, arms: list[dict], claims: list[tables.Claim],
                 runs: Sequence[dict[str, dict[str, float]]], macs: dict[str, int], cpu_seconds: float) -> None:
    """``adn_proxy.md``: command, machine, setting, verdict rule, arms, claims and the diagnostic table."""
    diagnostic = [{"skip_cfg": cfg, "MMACs": f"{macs[cfg] / 1e6:.2f}",
                   **{arm: _fmt(per_seed(runs, arm, cfg)) for arm in ("ADN", "ADN, shared norms", RECALIBRATED)}}
                  for cfg in macs]
    lines = [
        "# ADN proxy: the paper's claims on digits", "", f"Command: `{command}`", "",
        f"Machine: {tables.machine_info()}. CPU time: {cpu_seconds:.0f} s.", "",
        f"Setting: `adn/train_adn.py` (`train_adn.main`) on {DATASET}, `{MODEL}` (width 16), {settings.epochs} "
        f"epochs, SGD lr {settings.lr} (momentum 0.9, wd 1e-4), cosine schedule, batch {settings.batch_size}, "
        f"seeds 0-{len(runs) - 1} (the same initial weights for every arm of a seed). ADN: alpha 0.5, T 1, top-K KD "
        "clipped to the 10 classes. MACs are executed multiply-adds per image.", "",
        f"Verdict rule: {tables.VERDICT_RULE}. Margins: {MATCH_MARGIN:g} point of top-1 for the two 'matches' "
        "claims, 0 for 'beats' and 'rises'.", "",
        "## Arms (top-1 %, mean and std over seeds)", "", tables.markdown(arms), "",
        "## Claims", "", tables.markdown(tables.frame(claims, tables.CLAIM_COLUMNS)), "",
        "## Every configuration, and the BN re-estimation diagnostic", "",
        f"{RECALIBRATED}: ADN's weights with every BatchNorm's running statistics re-estimated for that "
        f"configuration on {settings.recalibration_samples} training images.", "", tables.markdown(diagnostic), ""]
    path.write_text("\n".join(lines))


def settings_from(args) -> ProxySettings:
    return tables.proxy_settings(args, DEMO, FULL, TINY, ("seeds", "epochs"))


def main(argv: Sequence[str] | None = None) -> int:
    """Train every arm for every seed through the entry point, judge the claims, write the tables and the plot."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = get_args_parser().parse_args(argv)
    settings = settings_from(args)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    start = time.process_time()
    runs, macs = [], {}
    for seed in tqdm(range(settings.seeds), desc="ADN proxy seeds", dynamic_ncols=True):
        acc, macs = run_seed(settings, seed)
        runs.append(acc)
    claims = judge_claims(runs, macs)
    arms = arm_rows(runs, macs)
    tables.write_proxy_results(output_dir, NAME, arms, claims)
    plot(runs, macs, settings, output_dir / f"{NAME}_proxy.png")
    cpu_seconds = time.process_time() - start
    write_report(output_dir / f"{NAME}_proxy.md", "python -m benchmarks.proxies.adn " + shlex.join(argv), settings,
                 arms, claims, runs, macs, cpu_seconds)
    tables.print_summary(arms, claims, output_dir / f"{NAME}_proxy.md", cpu_seconds)
    return 0


def get_args_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="proxies.adn", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=None,
                        help=f"number of seeds, 0..N-1 (default {DEMO.seeds}; {FULL.seeds} with --full, "
                             f"{TINY.seeds} with --tiny)")
    parser.add_argument("--epochs", type=int, default=None,
                        help=f"epochs of every training (default {DEMO.epochs}; {FULL.epochs} with --full, "
                             f"{TINY.epochs} with --tiny)")
    parser.add_argument("--full", action="store_true", help="the longer run: more seeds and epochs")
    parser.add_argument("--tiny", action="store_true", help="test size (seconds): 1 seed, 1 epoch")
    parser.add_argument("--output-dir", default="results",
                        help="where adn_proxies.csv, adn_claims.csv, adn_proxy.md and adn_proxy.png go")
    return parser


if __name__ == "__main__":
    sys.exit(run_cli(main, prog="proxies.adn"))
