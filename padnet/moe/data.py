"""A small GENERATED GLUE-format text task, so that ``run_glue_pad.py`` runs with no download.

This is not GLUE data: the sentences are made from templates and word lists by a seeded generator. The task is
binary sentiment in the format of GLUE SST-2 (lower-cased, space-tokenised sentences; label 1 = positive), with a
negation ("is not") that flips the label, so that a bag-of-words model cannot solve it perfectly. The records
have the keys of :func:`common.data.read_glue` for SST-2 (``idx``, ``sentence``, ``label``), and
:func:`write_generated_sst2` writes them as ``train.tsv`` / ``dev.tsv`` that ``--task_name sst2 --data_dir``
reads like the real SST-2.
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

GENERATED_SIZES = {"train": 160, "dev": 96}

_SUBJECTS = ("the movie", "this film", "the plot", "the acting", "the soundtrack", "the ending", "the cast",
             "the script", "the story", "the director 's work", "the dialogue", "every scene")
_POSITIVE = ("wonderful", "charming", "brilliant", "moving", "delightful", "gripping", "clever", "beautiful",
             "funny", "touching", "smart", "fresh")
_NEGATIVE = ("dull", "tedious", "clumsy", "boring", "predictable", "shallow", "messy", "lifeless", "silly",
             "bland", "forced", "stale")
_INTENSIFIERS = ("", "really ", "truly ", "rather ", "quite ", "surprisingly ")
_TEMPLATES = ("{subject} is {negation}{intensifier}{adjective} .",
              "i thought {subject} was {negation}{intensifier}{adjective} .",
              "{subject} , as a whole , is {negation}{intensifier}{adjective}",
              "honestly , {subject} is {negation}{intensifier}{adjective} and it shows .")


def generated_sst2(split: str = "train", num_samples: int | None = None, seed: int = 0) -> list[dict]:
    """The generated sentiment records of ``split`` ('train' or 'dev'); deterministic for a seed.

    Half of the sentences use a positive adjective; a quarter are negated, which flips the label.
    """
    if split not in GENERATED_SIZES:
        raise ValueError(f"the generated task has splits {tuple(GENERATED_SIZES)}, not {split!r}")
    rng = random.Random(f"padnet-moe-generated-{seed}-{split}")
    records = []
    for idx in range(num_samples or GENERATED_SIZES[split]):
        positive = rng.random() < 0.5
        negated = rng.random() < 0.25
        sentence = rng.choice(_TEMPLATES).format(
            subject=rng.choice(_SUBJECTS), negation="not " if negated else "",
            intensifier=rng.choice(_INTENSIFIERS), adjective=rng.choice(_POSITIVE if positive else _NEGATIVE))
        records.append({"idx": idx, "sentence": sentence, "label": int(positive != negated)})
    return records


def write_generated_sst2(directory: str | Path, seed: int = 0) -> Path:
    """Write the generated task as GLUE SST-2 files ``<directory>/{train,dev}.tsv``; returns ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for split in GENERATED_SIZES:
        with (directory / f"{split}.tsv").open("w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f, delimiter="\t", quoting=csv.QUOTE_NONE, lineterminator="\n")
            writer.writerow(["sentence", "label"])
            writer.writerows([r["sentence"], r["label"]] for r in generated_sst2(split, seed=seed))
    return directory
