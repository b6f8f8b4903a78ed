"""Reader for the GLUE benchmark's tab-separated files (all nine tasks).

Each row becomes a plain dict with the text keys of Hugging Face's ``run_glue.py`` (``task_to_keys``), an
``idx`` and a ``label``: an int index into the task's label list, a float for STS-B, ``None`` for the unlabeled
test files. The label order is that of the ``glue`` configs of Hugging Face ``datasets``.

Columns are found by header name where the file has a header; CoLA's train/dev files have none and use the
fixed positions of the official release. Quotes are literal text in GLUE files (``QUOTE_NONE``).
"""

from __future__ import annotations

import csv
import sys
from dataclasses import dataclass
from pathlib import Path

from torch.utils.data import Dataset

from common.data.vision import DataError


@dataclass(frozen=True)
class GlueTask:
    """Where a GLUE task keeps its text and label, and what the labels are (``None`` = regression)."""

    directory: str
    text_keys: tuple[str, ...]        # the run_glue.py names of the text fields
    text_columns: tuple[str, ...]     # the header names of those fields in the tsv files
    label_column: str | None
    labels: tuple[str, ...] | None
    splits: tuple[str, ...] = ("train", "dev", "test")


GLUE_TASKS: dict[str, GlueTask] = {
    "cola": GlueTask("CoLA", ("sentence",), ("sentence",), "label", ("0", "1")),
    "sst2": GlueTask("SST-2", ("sentence",), ("sentence",), "label", ("0", "1")),
    "mrpc": GlueTask("MRPC", ("sentence1", "sentence2"), ("#1 String", "#2 String"), "Quality", ("0", "1")),
    "stsb": GlueTask("STS-B", ("sentence1", "sentence2"), ("sentence1", "sentence2"), "score", None),
    "qqp": GlueTask("QQP", ("question1", "question2"), ("question1", "question2"), "is_duplicate", ("0", "1")),
    "mnli": GlueTask("MNLI", ("premise", "hypothesis"), ("sentence1", "sentence2"), "gold_label",
                     ("entailment", "neutral", "contradiction"),
                     ("train", "dev_matched", "dev_mismatched", "test_matched", "test_mismatched")),
    "qnli": GlueTask("QNLI", ("question", "sentence"), ("question", "sentence"), "label",
                     ("entailment", "not_entailment")),
    "rte": GlueTask("RTE", ("sentence1", "sentence2"), ("sentence1", "sentence2"), "label",
                    ("entailment", "not_entailment")),
    "wnli": GlueTask("WNLI", ("sentence1", "sentence2"), ("sentence1", "sentence2"), "label", ("0", "1")),
}

# CoLA train/dev rows: source, label, original judgement, sentence (no header).
_COLA_NO_HEADER = {"label": 1, "sentence": 3}


def glue_task(name: str) -> tuple[str, GlueTask]:
    """Look a task up by any usual spelling (``sst2``, ``SST-2``, ``sts-b``)."""
    key = name.lower().replace("-", "").replace("_", "")
    if key not in GLUE_TASKS:
        raise DataError(f"unknown GLUE task '{name}'; choose one of: {', '.join(GLUE_TASKS)}")
    return key, GLUE_TASKS[key]


def _rows(path: Path) -> list[tuple[int, list[str]]]:
    """The non-blank rows of a tsv file, each with its line number in the file (for error messages); a UTF-8 byte
    order mark, as spreadsheet programs write, is dropped."""
    csv.field_size_limit(sys.maxsize)
    try:
        with path.open(encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
            return [(reader.line_num, row) for row in reader if row and any(cell.strip() for cell in row)]
    except UnicodeDecodeError as err:
        raise DataError(f"{path} is not UTF-8 text ({err}); is it really a GLUE .tsv file?") from None


def read_glue(task: str, data_dir: str | Path, split: str = "train") -> list[dict]:
    """Read ``<data_dir>/<split>.tsv`` of a GLUE task into a list of records (see the module docstring).

    ``data_dir`` is the task folder (``glue_data/SST-2``) or the GLUE root holding it.
    """
    key, spec = glue_task(task)
    if split == "dev" and key == "mnli":
        split = "dev_matched"
    if split not in spec.splits:
        raise DataError(f"GLUE task '{key}' has no split '{split}'; choose one of: {', '.join(spec.splits)}")
    folder = Path(data_dir)
    if (folder / spec.directory).is_dir():
        folder = folder / spec.directory
    path = folder / f"{split}.tsv"
    if not path.is_file():
        raise DataError(f"GLUE file {path} not found; expected the official GLUE layout "
                        f"<glue_data>/{spec.directory}/{{{','.join(spec.splits)}}}.tsv")
    rows = _rows(path)
    if not rows:
        raise DataError(f"{path} is empty")

    if key == "cola" and not split.startswith("test"):
        columns, body = _COLA_NO_HEADER, rows
    else:
        header = [h.strip() for h in rows[0][1]]
        columns, body = {name: i for i, name in enumerate(header)}, rows[1:]
    is_test = split.startswith("test")
    wanted = list(spec.text_columns) + ([] if is_test or spec.label_column is None else [spec.label_column])
    missing = [c for c in wanted if c not in columns]
    if missing:
        raise DataError(f"{path}: header lacks column(s) {missing}; expected the GLUE {spec.directory} format "
                        f"with columns {wanted}")
    width = max(columns.values()) + 1

    records = []
    for lineno, row in body:
        if len(row) < width:
            raise DataError(f"{path}:{lineno}: expected at least {width} tab-separated columns, got {len(row)}")
        record: dict = {"idx": len(records)}
        for text_key, column in zip(spec.text_keys, spec.text_columns, strict=True):
            record[text_key] = row[columns[column]]
        record["label"] = None if is_test else _label(row[columns[spec.label_column]], spec, path, lineno)
        records.append(record)
    if not records:
        raise DataError(f"{path} has a header but no rows; give the {spec.directory} {split} file with its data")
    return records


def _label(value: str, spec: GlueTask, path: Path, lineno: int) -> int | float:
    value = value.strip()
    if spec.labels is None:
        try:
            return float(value)
        except ValueError:
            raise DataError(f"{path}:{lineno}: score {value!r} is not a number") from None
    if value not in spec.labels:
        raise DataError(f"{path}:{lineno}: label {value!r} is not one of {list(spec.labels)}")
    return spec.labels.index(value)


class GlueDataset(Dataset):
    """A GLUE split as a torch Dataset of plain records; ``num_labels`` is 1 for the regression task."""

    def __init__(self, task: str, data_dir: str | Path, split: str = "train"):
        self.task, self.spec = glue_task(task)
        self.records = read_glue(task, data_dir, split)
        self.num_labels = 1 if self.spec.labels is None else len(self.spec.labels)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        return self.records[index]
