"""A user's own text-classification files for ``run_glue_pad.py`` (``--train_file`` / ``--validation_file`` /
``--test_file``), read as Hugging Face's ``run_glue.py`` reads them.

* Formats by extension: ``.csv`` (comma-separated), ``.tsv`` / ``.txt`` (tab-separated, no quoting, as GLUE), and
  ``.json`` / ``.jsonl`` (one object per line, or one array of objects).
* Columns: a header row is recognised by a column named ``label``. The texts are ``sentence1`` and ``sentence2``
  when both exist, else the first two other columns, else the only other one (``run_glue.py``'s rule). Without a
  header row (csv / tsv), the last column is the label and the one or two columns before it are the texts.
* Labels: any strings; the label set is read from the training file and sorted, so any number of classes works.
  Labels that are all integers stay classes (sorted numerically); numbers that are not all integers make a
  regression task. A test file may have no label column.

Every way a file can be wrong is a :class:`LocalDataError` naming the file and, where there is one, the line.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from common.errors import UserError

LABEL = "label"
TABLE_SEPARATORS = {".csv": ",", ".tsv": "\t", ".txt": "\t"}
JSON_SUFFIXES = (".json", ".jsonl")


class LocalDataError(UserError):
    """A local data file that is missing, unreadable, or not a text-classification table."""


@dataclass
class LocalTask:
    """The texts' column names, the sorted label set (None for regression) and the records of each split, in the
    record format of :func:`common.data.read_glue` (``idx``, the text keys, ``label``)."""

    text_keys: tuple[str, str | None]
    label_list: list[str] | None
    splits: dict[str, list[dict] | None]


def _rows(path: Path, keys: tuple[str, str | None] | None = None) -> list[dict[str, str]]:
    """The file's rows as dicts of strings, with the header rule of the module docstring; ``keys`` (the training
    file's text columns) also recognise the header of an unlabelled file and name a headerless one's columns."""
    suffix = path.suffix.lower()
    if not path.is_file():
        raise LocalDataError(f"{path} does not exist")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise LocalDataError(f"{path} cannot be read as UTF-8 text ({err})") from None
    if suffix in JSON_SUFFIXES:
        return _json_rows(path, text)
    if suffix not in TABLE_SEPARATORS:
        raise LocalDataError(f"{path}: unknown format {suffix or '(no extension)'}; use .csv, .tsv, .json or .jsonl")
    quoting = csv.QUOTE_NONE if TABLE_SEPARATORS[suffix] == "\t" else csv.QUOTE_MINIMAL
    rows = [r for r in csv.reader(text.splitlines(), delimiter=TABLE_SEPARATORS[suffix], quoting=quoting)
            if any(cell.strip() for cell in r)]
    if not rows:
        raise LocalDataError(f"{path} is empty")
    header = [LABEL if h.strip().lower() == LABEL else h.strip() for h in rows[0]]
    texts = [k for k in keys or () if k is not None]
    if LABEL in header or (texts and set(texts) <= set(header)):
        body, first = rows[1:], 2
    else:
        body, first = rows, 1
        width = len(rows[0])
        if texts and width in (len(texts), len(texts) + 1):
            header = (texts + [LABEL])[:width]
        elif not texts and width in (2, 3):
            header = ["sentence", LABEL] if width == 2 else ["sentence1", "sentence2", LABEL]
        else:
            raise LocalDataError(f"{path}: no header row with a '{LABEL}' column, and {width} columns; without a "
                                 "header give one or two text columns followed by the label")
    out = []
    for lineno, row in enumerate(body, start=first):
        if len(row) != len(header):
            raise LocalDataError(f"{path}:{lineno}: {len(row)} columns, the header has {len(header)}")
        out.append(dict(zip(header, row, strict=True)))
    if not out:
        raise LocalDataError(f"{path} has a header but no rows")
    return out


def _json_rows(path: Path, text: str) -> list[dict[str, str]]:
    try:
        data = json.loads(text) if text.lstrip().startswith("[") else [
            json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as err:
        raise LocalDataError(f"{path}: not JSON lines or a JSON array of objects ({err})") from None
    if not data:
        raise LocalDataError(f"{path} is empty")
    if not all(isinstance(row, dict) for row in data):
        raise LocalDataError(f"{path}: every record must be a JSON object")
    return [{str(k): "" if v is None else str(v) for k, v in row.items()} for row in data]


def text_keys(columns: list[str], path: Path) -> tuple[str, str | None]:
    """The text columns by ``run_glue.py``'s rule (module docstring)."""
    others = [c for c in columns if c != LABEL]
    if "sentence1" in others and "sentence2" in others:
        return "sentence1", "sentence2"
    if not others:
        raise LocalDataError(f"{path}: no text column besides '{LABEL}'")
    return (others[0], others[1]) if len(others) >= 2 else (others[0], None)


def _label_set(values: list[str]) -> list[str] | None:
    """The sorted classes, or None when the labels are numbers that are not all integers (regression)."""
    try:
        return [str(v) for v in sorted({int(v) for v in values})]
    except ValueError:
        pass
    try:
        [float(v) for v in values]
    except ValueError:
        return sorted(set(values))
    return None


def _records(rows: list[dict[str, str]], keys: tuple[str, str | None], labels: list[str] | None, path: Path,
             labelled: bool) -> list[dict]:
    missing = [k for k in keys if k is not None and k not in rows[0]]
    if missing:
        raise LocalDataError(f"{path}: no column {missing[0]!r}; the training file's texts are {keys}")
    if labelled and LABEL not in rows[0]:
        raise LocalDataError(f"{path}: no '{LABEL}' column")
    integer = labels is not None and all(_is_int(label) for label in labels)
    records = []
    for i, row in enumerate(rows):
        record = {"idx": i, **{k: row[k] for k in keys if k is not None}, LABEL: None}
        value = row.get(LABEL, "").strip()
        if value and labels is None:
            try:
                record[LABEL] = float(value)
            except ValueError:
                raise LocalDataError(f"{path}, record {i + 1}: label {value!r} is not a number, and the training "
                                     "file's labels are (regression)") from None
        elif value:
            canonical = str(int(value)) if integer and _is_int(value) else value  # "01" is class "1"
            if canonical not in labels:
                raise LocalDataError(f"{path}, record {i + 1}: label {value!r} is not in the training file's "
                                     f"classes {labels[:20]}")
            record[LABEL] = labels.index(canonical)
        elif labelled:
            raise LocalDataError(f"{path}, record {i + 1}: empty label")
        records.append(record)
    return records


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def load_local_task(train_file: str | None, validation_file: str | None, test_file: str | None,
                    needed: tuple[str, ...]) -> LocalTask:
    """The splits of the files a user gives; the training file (always read) fixes the texts and the labels."""
    if train_file is None:
        raise LocalDataError("--validation_file / --test_file need --train_file, which sets the text columns and "
                             "the label set")
    train_path = Path(train_file)
    train_rows = _rows(train_path)
    if LABEL not in train_rows[0]:
        raise LocalDataError(f"{train_path}: no '{LABEL}' column")
    keys = text_keys(list(train_rows[0]), train_path)
    labels = _label_set([r[LABEL].strip() for r in train_rows])
    splits: dict[str, list[dict] | None] = {"train": None, "validation": None, "test": None}
    if "train" in needed:
        splits["train"] = _records(train_rows, keys, labels, train_path, labelled=True)
    for split, file, flag in (("validation", validation_file, "--validation_file"), ("test", test_file,
                                                                                     "--test_file")):
        if split not in needed:
            continue
        if file is None:
            raise LocalDataError(f"{'--do_eval' if split == 'validation' else '--do_predict'} with --train_file "
                                 f"needs {flag}")
        path = Path(file)
        splits[split] = _records(_rows(path, keys), keys, labels, path, labelled=split == "validation")
    return LocalTask(keys, labels, splits)
