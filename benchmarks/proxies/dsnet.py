"""DS-Net proxy: the paper's two training claims on the embedded digits, through ``dsnet/train.py``.

Per seed, ``dsnet/train.py`` runs in this process (``main(parse_args(argv))``) with its own config files and the
digits data (all 1,437 training / 360 validation images), the reduced-width supernet
``slimmable_mbnet_v1_bn_uniform_tiny`` and small-size overrides on the command line:

1. Stage I, ``-c dsnet/configs/supernet.yml``: the sandwich rule with in-place bootstrapping from the EMA teacher
   (paper Sec. 3.3), then, as the config's ``reset_bn: true`` says, the BN recalibration of all 14 widths and the
   evaluation of the 14 sub-networks: the static accuracy-MAdds curve. The separate ``reset_bn.yml`` stage would
   repeat that recalibration on the same checkpoint, so it is not run.
2. Stage I again with ``--no-inplace_bootstrap`` (every sub-network learns from the labels), same seed.
3. Stage II, ``-c dsnet/configs/gate.yml --resume <checkpoint of 1>``: only the gate learns (routing space
   sub-networks 0-3, as released), then the gated model is evaluated with the original's Gumbel noise.

Every number is the trained model's, not its EMA's. Small-size overrides, chosen on the strongest arm (the largest
sub-network, 13, of run 1, which must reach >= 90 % top-1): digits at 24x24 (at 16x16 and 5 epochs the bootstrapped
supernet's sub-networks stayed below 50 %), batch 64, the configs' lr 0.08, 10 Stage-I epochs with 1 warm-up
epoch and no cooldown, EMA decay 0.9 (the configs' 0.997 is for 2,500 steps an epoch; digits has 22), and a BN
recalibration of 5 batches that weights each batch equally (``--reset_bn_cumulative``; dsnet/README.md,
"Differences": with the original's momentum 0.1 a few batches leave the reset values in place and every
sub-network falls to chance).

Claims and the verdict rule (``benchmarks.tables.judge``), fixed before any number was seen; per-seed
differences oriented so that > 0 supports the claim; top-1 on the 360 validation images; MAdds per image in the
original's convention (dsnet/README.md, "MAdds"), the dynamic model's averaged over the validation set:

1. "The gated dynamic network lies on or above the accuracy-MAdds curve of the static sub-networks" (Sec. 1,
   Sec. 3.2 and the comparison with the supernet's sub-networks in Sec. 4): ``d_s`` = dynamic top-1 - the seed's
   static curve (its 14 sub-networks sorted by MAdds) linearly interpolated at the dynamic model's average
   MAdds. A "matches" claim: margin 1 point.
2. "In-place bootstrapping helps the smallest sub-network" (Sec. 3.3, in-place bootstrapping, and its ablation
   in Sec. 4): ``d_s`` = top-1 of sub-network 0 trained with in-place bootstrapping - without. Margin 0. The
   released configs keep ``ensemble_ib: false``, so the ensemble variant is not the one compared.

    python -m benchmarks.proxies.dsnet            # demo: 2 seeds
    python -m benchmarks.proxies.dsnet --full     # 5 seeds, longer Stage I and Stage II
    python -m benchmarks.proxies.dsnet --tiny     # test size: 1 seed, 8x8 images, 1 epoch per stage

Writes ``dsnet_proxies.csv``, ``dsnet_claims.csv``, ``dsnet_proxy.md`` and ``dsnet_proxy.png`` to
``--output-dir``; the entry point's checkpoints and logs go to a temporary folder.
"""

from __future__ import annotations

import contextlib
import shlex
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from benchmarks import tables
from common.errors import ArgumentParser, run_cli
from dsnet import train
from dsnet.madds import executed_macs
from dsnet.models import create_model

NAME = "dsnet"
PAPER = "DS-Net"
MODEL = "slimmable_mbnet_v1_bn_uniform_tiny"
CONFIGS = Path(train.__file__).resolve().parent / "configs"
METRIC = "top-1 %"
ROUTES = (0, 1, 2, 3)  # the released routing space (gate.yml: start_chn_idx 0)


@dataclass(frozen=True)
class ProxySettings:
    """Image size, batch, Stage-I epochs, lr and EMA decay chosen on the largest sub-network of the
    bootstrapped supernet alone (>= 90 % top-1); Stage II keeps the config's lr 0.08."""

    seeds: int = 2
    img_size: int = 24
    batch: int = 64
    stage1_epochs: int = 10
    warmup_epochs: int = 1
    lr: float = 0.08  # the configs' value
    ema_decay: float = 0.9
    gate_epochs: int = 2
    bn_batches: int = 5  # recalibration batches of -vb x batch images (256)


DEMO = ProxySettings()
FULL = ProxySettings(seeds=5, stage1_epochs=12, gate_epochs=4)
TINY = ProxySettings(seeds=1, img_size=8, batch=128, stage1_epochs=2, warmup_epochs=0, gate_epochs=1, bn_batches=2)


@dataclass
class SeedResult:
    """One seed: the 14 sub-networks with and without in-place bootstrapping, the gated model, and the EMA
    teacher's validation top-1 (largest) after each Stage-I epoch (the diagnostic of claim 2)."""

    static: list[float]  # top-1 of sub-networks 0..13, in-place bootstrapping
    static_madds: list[float]
    plain: list[float]  # top-1 of sub-networks 0..13, labels only
    dynamic: float
    dynamic_madds: float
    route_counts: list[int]
    gate_acc: float
    teacher: list[float]
    cpu_seconds: float


def _common(settings: ProxySettings, seed: int, output: Path) -> list[str]:
    vb = max(1, 256 // settings.batch)
    return ["--dataset", "digits", "--model", MODEL, "--img-size", str(settings.img_size), "-b", str(settings.batch),
            "-vb", str(vb), "--cooldown-epochs", "0", "-j", "0", "--device", "cpu", "--no-mlflow", "--seed", str(seed),
            "--output", str(output)]


def stage1_argv(settings: ProxySettings, seed: int, output: Path, bootstrap: bool) -> list[str]:
    """Stage I through ``supernet.yml`` (in-place bootstrapping on, as configured, or ``--no-inplace_bootstrap``)."""
    return ["-c", str(CONFIGS / "supernet.yml"), *_common(settings, seed, output), "--epochs",
            str(settings.stage1_epochs), "--warmup-epochs", str(settings.warmup_epochs), "--lr", str(settings.lr),
            "--model-ema-decay", str(settings.ema_decay), "--reset_bn_batches", str(settings.bn_batches),
            "--reset_bn_cumulative", *([] if bootstrap else ["--no-inplace_bootstrap"])]


def gate_argv(settings: ProxySettings, seed: int, output: Path, checkpoint: str) -> list[str]:
    """Stage II through ``gate.yml`` on the recalibrated Stage-I checkpoint."""
    return ["-c", str(CONFIGS / "gate.yml"), *_common(settings, seed, output), "--resume", checkpoint, "--epochs",
            str(settings.gate_epochs)]


def _train(argv: list[str], log: Path) -> dict[str, Any]:
    """One run of the entry point; its console output goes to ``log``."""
    with log.open("a") as f, contextlib.redirect_stdout(f):
        return train.main(train.parse_args(argv))


def run_seed(settings: ProxySettings, seed: int) -> SeedResult:
    start = time.process_time()
    with tempfile.TemporaryDirectory(prefix="dsnet_proxy_") as tmp:
        work = Path(tmp)
        log = work / "train.log"
        boot = _train(stage1_argv(settings, seed, work / "ib", True), log)
        plain = _train(stage1_argv(settings, seed, work / "plain", False), log)
        gate = _train(gate_argv(settings, seed, work / "gate", boot["checkpoint"]), log)
    dynamic = gate["final"]["model"]
    return SeedResult(
        static=[row["prec1"] for row in boot["final"]["model"]],
        static_madds=[row["flops"] for row in boot["final"]["model"]],
        plain=[row["prec1"] for row in plain["final"]["model"]],
        dynamic=dynamic["prec1"], dynamic_madds=dynamic["flops"], route_counts=dynamic["route_counts"],
        gate_acc=dynamic["gate_acc"], teacher=[e["eval"]["ema"]["largest"]["prec1"] for e in boot["epochs"]],
        cpu_seconds=time.process_time() - start)


def curve_at(result: SeedResult) -> float:
    """The seed's static curve (sub-networks sorted by MAdds) linearly interpolated at the dynamic MAdds."""
    order = np.argsort(result.static_madds)
    return float(np.interp(result.dynamic_madds, np.asarray(result.static_madds)[order],
                           np.asarray(result.static)[order]))


def _mean(values: Sequence[float]) -> str:
    mean, std = tables.mean_std(values)
    return f"{mean:.1f} ± {std:.1f}"


def _per_seed(diffs: Sequence[float]) -> str:
    return " / ".join(f"{d:+.1f}" for d in diffs)


def judge_claims(results: Sequence[SeedResult]) -> list[tables.Claim]:
    dyn_diffs = [r.dynamic - curve_at(r) for r in results]
    routes = np.sum([r.route_counts for r in results], axis=0)
    spread = [max(r.static) - min(r.static) for r in results]
    dyn_evidence = (f"per seed {_per_seed(dyn_diffs)}; dynamic {_mean([r.dynamic for r in results])} % at "
                    f"{np.mean([r.dynamic_madds for r in results]) / 1e6:.3f}M MAdds; static curve there "
                    f"{_mean([curve_at(r) for r in results])} %; routes {'/'.join(map(str, ROUTES))} taken "
                    f"{'/'.join(map(str, routes))} times (all seeds); the gate agrees with its SGS target on "
                    f"{_mean([r.gate_acc for r in results])} %; the static curve spans "
                    f"{_mean(spread)} points from its worst to its best sub-network")
    ib_diffs = [r.static[0] - r.plain[0] for r in results]
    first = max(1, len(results[0].teacher) // 2)
    ib_evidence = (f"per seed {_per_seed(ib_diffs)}; sub-network 0: {_mean([r.static[0] for r in results])} % with, "
                   f"{_mean([r.plain[0] for r in results])} % without; sub-network 13: "
                   f"{_mean([r.static[-1] for r in results])} % with, {_mean([r.plain[-1] for r in results])} % "
                   f"without; the EMA teacher's own top-1 (largest, eval mode) after Stage-I epochs 1-{first}: "
                   + " / ".join(f"{np.mean([r.teacher[e] for r in results]):.1f}" for e in range(first)) + " %")
    return [
        tables.judge(PAPER, "gated dynamic model on or above the static sub-networks' accuracy-MAdds curve",
                     "dynamic top-1 - static curve at its MAdds (points)", "on or above (Sec. 4)", dyn_diffs,
                     margin=1.0, evidence=dyn_evidence),
        tables.judge(PAPER, "in-place bootstrapping helps the smallest sub-network",
                     "sub-network 0 top-1, with - without (points)", "positive (Sec. 3.3, ablation in Sec. 4)",
                     ib_diffs, evidence=ib_evidence),
    ]


def arm_rows(results: Sequence[SeedResult], settings: ProxySettings) -> list[dict[str, Any]]:
    """Sub-networks 0-13 with in-place bootstrapping, sub-networks 0 and 13 without, the gated model. ``macs``:
    conv + linear MACs that execute (``common.flops``) at the proxy's image size; the gated model's from its
    route histogram plus the slimming head."""
    model = create_model(MODEL, num_classes=10).eval()
    macs = [executed_macs(model, "uniform", c, settings.img_size) for c in range(model.num_choices)]
    head = model.blocks[model.gate_stage].first_block.gate.gate[0]
    routes = np.sum([r.route_counts for r in results], axis=0)
    dyn_macs = float(np.dot(routes, [macs[c] for c in ROUTES]) / routes.sum()) + head.in_channels * head.out_channels
    dataset = f"digits {settings.img_size}x{settings.img_size} (1,437 train / 360 val)"

    def row(arm: str, values: Sequence[float], cost: float) -> dict[str, Any]:
        mean, std = tables.mean_std(values)
        return {"paper": PAPER, "arm": arm, "dataset": dataset, "metric": METRIC, "mean": round(mean, 2),
                "std": round(std, 2), "seeds": len(values), "macs": round(cost)}

    rows = [row(f"sub-network {c}, in-place bootstrapping" + (" (strongest)" if c == model.num_choices - 1 else ""),
                [r.static[c] for r in results], macs[c]) for c in range(model.num_choices)]
    rows += [row(f"sub-network {c}, no bootstrapping", [r.plain[c] for r in results], macs[c])
             for c in (0, model.num_choices - 1)]
    rows.append(row(f"gated dynamic, routes {','.join(map(str, ROUTES))}", [r.dynamic for r in results], dyn_macs))
    return rows


def plot(results: Sequence[SeedResult], path: Path) -> None:
    """Top-1 against MAdds: both static curves (error bars: std over seeds) and the gated model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    x = np.mean([r.static_madds for r in results], axis=0) / 1e6
    for values, label, color in (([r.static for r in results], "sub-networks 0-13, in-place bootstrapping",
                                  "tab:blue"),
                                 ([r.plain for r in results], "sub-networks 0-13, no bootstrapping", "tab:gray")):
        ax.errorbar(x, np.mean(values, axis=0), yerr=np.std(values, axis=0, ddof=1) if len(results) > 1 else None,
                    marker="o", capsize=2, color=color, label=label)
    dyn = [r.dynamic for r in results]
    ax.errorbar([np.mean([r.dynamic_madds for r in results]) / 1e6], [np.mean(dyn)],
                yerr=[np.std(dyn, ddof=1)] if len(dyn) > 1 else None, marker="*", markersize=14, color="tab:red",
                linestyle="none", capsize=3, label=f"gated dynamic, routes {','.join(map(str, ROUTES))}")
    ax.set_xlabel("MAdds per image (M, the original's convention)")
    ax.set_ylabel("top-1 on digits val (%)")
    ax.set_title(f"DS-Net proxy on digits, {len(results)} seed(s)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(path: Path, command: str, settings: ProxySettings, arms: list[dict[str, Any]],
                 claims: list[tables.Claim], results: Sequence[SeedResult], cpu_seconds: float) -> None:
    """``dsnet_proxy.md``: command, machine, setting, verdict rule, arms, claims."""
    strongest = tables.mean_std([r.static[-1] for r in results])[0]
    lines = [
        "# DS-Net proxy: the paper's claims on digits", "", f"Command: `{command}`", "",
        f"Machine: {tables.machine_info()}. CPU time: {cpu_seconds:.0f} s.", "",
        f"Setting: digits {settings.img_size}x{settings.img_size} (1,437 train / 360 val), `{MODEL}`, seeds "
        f"0-{len(results) - 1}, all through `dsnet/train.py`. Stage I (`-c dsnet/configs/supernet.yml`): "
        f"{settings.stage1_epochs} epochs ({settings.warmup_epochs} warm-up), batch {settings.batch}, SGD lr "
        f"{settings.lr}, EMA decay {settings.ema_decay}, then the recalibration of all 14 widths on "
        f"{settings.bn_batches} batches (`--reset_bn_cumulative`); once with in-place bootstrapping (the config) "
        f"and once with `--no-inplace_bootstrap`. Stage II (`-c dsnet/configs/gate.yml --resume` the bootstrapped "
        f"checkpoint): {settings.gate_epochs} epochs, gate only, routes {list(ROUTES)}, evaluated with the "
        f"original's Gumbel noise. Numbers are the model's, not the EMA's. The strongest arm (sub-network 13, "
        f"in-place bootstrapping) reaches {strongest:.1f} % "
        f"({'meets' if strongest >= 90 else 'BELOW'} the 90 % the proxy requires).", "",
        f"Verdict rule: {tables.VERDICT_RULE}. Margins: 1 point for claim 1 (a 'matches' claim), 0 for claim 2.", "",
        "## Arms (top-1 %, mean and std over seeds)", "", tables.markdown(arms), "",
        "## Claims", "", tables.markdown(tables.frame(claims, tables.CLAIM_COLUMNS)), "",
        f"![proxy]({path.stem}.png)", ""]
    path.write_text("\n".join(lines))


def settings_from(args) -> ProxySettings:
    return tables.proxy_settings(args, DEMO, FULL, TINY, ("seeds",))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the three stages for every seed, judge the claims, write the tables, the plot and the report."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = get_args_parser().parse_args(argv)
    settings = settings_from(args)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    start = time.process_time()
    results = [run_seed(settings, seed) for seed in tqdm(range(settings.seeds), desc="DS-Net proxy seeds",
                                                          dynamic_ncols=True)]
    claims = judge_claims(results)
    arms = arm_rows(results, settings)
    tables.write_proxy_results(output_dir, NAME, arms, claims)
    plot(results, output_dir / f"{NAME}_proxy.png")
    cpu_seconds = time.process_time() - start
    write_report(output_dir / f"{NAME}_proxy.md", "python -m benchmarks.proxies.dsnet " + shlex.join(argv),
                 settings, arms, claims, results, cpu_seconds)
    tables.print_summary(arms, claims, output_dir / f"{NAME}_proxy.md", cpu_seconds)
    return 0


def get_args_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="python -m benchmarks.proxies.dsnet", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=None, help="seeds 0..N-1 (default 2; 5 with --full; 1 with "
                        "--tiny)")
    parser.add_argument("--full", action="store_true", help="5 seeds, 10 Stage-I and 4 Stage-II epochs")
    parser.add_argument("--tiny", action="store_true", help="test size: 1 seed, 8x8 images, 1 epoch per stage")
    parser.add_argument("--output-dir", default="results", help="where the CSVs, the report and the plot go")
    return parser


if __name__ == "__main__":
    sys.exit(run_cli(main, prog="dsnet proxy"))
