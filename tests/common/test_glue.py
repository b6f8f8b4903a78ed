"""Tests of the GLUE reader (common.data.glue): the real SST-2 files and small files in every task's format."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from common.data import GLUE_TASKS, DataError, GlueDataset, build_dataset, read_glue

SST2_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "glue" / "SST-2"


@pytest.fixture(scope="module")
def sst2_dir() -> Path:
    """The real SST-2 folder; skipped on a fresh clone without ../shared, a failure in CI where it is always there."""
    if not SST2_DIR.is_dir():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{SST2_DIR} is missing; CI runs with ../shared beside the checkout")
        pytest.skip(f"{SST2_DIR} is absent")
    return SST2_DIR


def _write(root: Path, directory: str, split: str, lines: list[str]) -> Path:
    path = root / directory / f"{split}.tsv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def _tsv(*cells: str) -> str:
    return "\t".join(cells)


# ------------------------------------------------------------------------------------------- real SST-2
@pytest.mark.parametrize(("split", "count"), [("train", 60_614), ("dev", 872)])
def test_real_sst2_counts_and_labels(sst2_dir, split, count):
    records = read_glue("sst2", sst2_dir, split)
    assert len(records) == count
    assert {r["label"] for r in records} == {0, 1}
    assert all(set(r) == {"idx", "sentence", "label"} for r in records)
    assert [r["idx"] for r in records[:3]] == [0, 1, 2]
    assert all(isinstance(r["sentence"], str) and r["sentence"].strip() for r in records)


def test_real_sst2_through_build_dataset(sst2_dir):
    dataset = build_dataset("glue/sst2", sst2_dir.parent, "dev")  # the GLUE root holding SST-2/
    assert isinstance(dataset, GlueDataset)
    assert len(dataset) == 872 and dataset.num_labels == 2
    assert dataset[0] == read_glue("SST-2", sst2_dir, "dev")[0]


# ----------------------------------------------------------------------------- every task, official format
MNLI_HEAD = ["index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
             "sentence1_parse", "sentence2_parse", "sentence1", "sentence2"]


def _mnli_row(index: str, premise: str, hypothesis: str, *labels: str) -> str:
    return _tsv(index, "31193", "31193n", "government", "( ( bin ) )", "( ( bin ) )", "(ROOT (S))", "(ROOT (S))",
                premise, hypothesis, *labels)


# task -> (folder, split, lines, expected records without idx)
CASES = {
    "cola": ("CoLA", "train", [
        _tsv("gj04", "1", "", "Our friends won't buy this analysis."),
        _tsv("gj04", "0", "*", "They drank the pub."),
    ], [{"sentence": "Our friends won't buy this analysis.", "label": 1},
        {"sentence": "They drank the pub.", "label": 0}]),
    "sst2": ("SST-2", "dev", [
        _tsv("sentence", "label"),
        _tsv("it 's a charming journey . ", "1"),
        _tsv("unflinchingly bleak", "0"),
    ], [{"sentence": "it 's a charming journey . ", "label": 1},
        {"sentence": "unflinchingly bleak", "label": 0}]),
    "mrpc": ("MRPC", "train", [
        _tsv("Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"),
        _tsv("1", "702876", "702977", "He called him a liar.", "He said he lied."),
        _tsv("0", "2108705", "2108831", "Yucaipa owned Dominick's.", "Yucaipa bought Dominick's."),
    ], [{"sentence1": "He called him a liar.", "sentence2": "He said he lied.", "label": 1},
        {"sentence1": "Yucaipa owned Dominick's.", "sentence2": "Yucaipa bought Dominick's.", "label": 0}]),
    "stsb": ("STS-B", "dev", [
        _tsv("index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1", "sentence2",
             "score"),
        _tsv("0", "main-captions", "MSRvid", "2012test", "0000", "none", "none", "A man with a hard hat.",
             "A man wearing a hard hat.", "5.000"),
        _tsv("1", "main-captions", "MSRvid", "2012test", "0002", "none", "none", "A kid plays.", "A cat sits.",
             "0.25"),
    ], [{"sentence1": "A man with a hard hat.", "sentence2": "A man wearing a hard hat.", "label": 5.0},
        {"sentence1": "A kid plays.", "sentence2": "A cat sits.", "label": 0.25}]),
    "qqp": ("QQP", "train", [
        _tsv("id", "qid1", "qid2", "question1", "question2", "is_duplicate"),
        _tsv("133273", "213221", "213222", "How is the life of a math student?", "Which is the best book?", "0"),
        _tsv("402555", "536040", "536041", "How do I control my horny emotions?", "How do you control it?", "1"),
    ], [{"question1": "How is the life of a math student?", "question2": "Which is the best book?", "label": 0},
        {"question1": "How do I control my horny emotions?", "question2": "How do you control it?", "label": 1}]),
    "mnli": ("MNLI", "dev_matched", [
        _tsv(*MNLI_HEAD, "label1", "label2", "label3", "label4", "label5", "gold_label"),
        _mnli_row("0", "The new rights are nice.", "Everyone loves them.", "entailment", "neutral", "neutral",
                  "contradiction", "neutral", "neutral"),  # gold_label (last) differs from label1
        _mnli_row("1", "This site includes a list.", "The list is here.", "entailment", "entailment",
                  "entailment", "entailment", "entailment", "entailment"),
        _mnli_row("2", "He slept.", "He ran.", "contradiction", "contradiction", "contradiction",
                  "contradiction", "contradiction", "contradiction"),
    ], [{"premise": "The new rights are nice.", "hypothesis": "Everyone loves them.", "label": 1},
        {"premise": "This site includes a list.", "hypothesis": "The list is here.", "label": 0},
        {"premise": "He slept.", "hypothesis": "He ran.", "label": 2}]),
    "qnli": ("QNLI", "train", [
        _tsv("index", "question", "sentence", "label"),
        _tsv("0", "When did it end?", "It ended in 1945.", "entailment"),
        _tsv("1", "Who wrote it?", "The sky is blue.", "not_entailment"),
    ], [{"question": "When did it end?", "sentence": "It ended in 1945.", "label": 0},
        {"question": "Who wrote it?", "sentence": "The sky is blue.", "label": 1}]),
    "rte": ("RTE", "dev", [
        _tsv("index", "sentence1", "sentence2", "label"),
        _tsv("0", "Dana Reeve died.", "Christopher Reeve had an accident.", "not_entailment"),
        _tsv("1", "Yet, we now are ready.", "We are ready.", "entailment"),
    ], [{"sentence1": "Dana Reeve died.", "sentence2": "Christopher Reeve had an accident.", "label": 1},
        {"sentence1": "Yet, we now are ready.", "sentence2": "We are ready.", "label": 0}]),
    "wnli": ("WNLI", "train", [
        _tsv("index", "sentence1", "sentence2", "label"),
        _tsv("0", "I stuck a pin through a carrot.", "The carrot had a hole.", "1"),
        _tsv("1", "John couldn't see the stage.", "John is so short.", "0"),
    ], [{"sentence1": "I stuck a pin through a carrot.", "sentence2": "The carrot had a hole.", "label": 1},
        {"sentence1": "John couldn't see the stage.", "sentence2": "John is so short.", "label": 0}]),
}


def test_cases_cover_every_task():
    assert set(CASES) == set(GLUE_TASKS)


@pytest.mark.parametrize("task", sorted(CASES))
def test_every_task_in_its_official_format(tmp_path, task):
    directory, split, lines, expected = CASES[task]
    _write(tmp_path, directory, split, lines)
    records = read_glue(task, tmp_path, split)
    assert records == [{"idx": i, **e} for i, e in enumerate(expected)]
    # the keys are those of Hugging Face run_glue.py: idx, the task's text keys, label
    assert list(records[0]) == ["idx", *GLUE_TASKS[task].text_keys, "label"]


@pytest.mark.parametrize("task", sorted(CASES))
def test_task_folder_or_glue_root(tmp_path, task):
    directory, split, lines, _ = CASES[task]
    _write(tmp_path, directory, split, lines)
    assert read_glue(task, tmp_path / directory, split) == read_glue(task, tmp_path, split)


@pytest.mark.parametrize(("task", "keys"), [
    ("mnli", ("premise", "hypothesis")),
    ("qnli", ("question", "sentence")),
    ("qqp", ("question1", "question2")),
    ("mrpc", ("sentence1", "sentence2")),
    ("stsb", ("sentence1", "sentence2")),
    ("cola", ("sentence",)),
])
def test_run_glue_key_names(task, keys):
    assert GLUE_TASKS[task].text_keys == keys


@pytest.mark.parametrize(("task", "num_labels"), [("stsb", 1), ("mnli", 3), ("rte", 2), ("cola", 2)])
def test_glue_dataset(tmp_path, task, num_labels):
    directory, split, lines, expected = CASES[task]
    _write(tmp_path, directory, split, lines)
    dataset = build_dataset(f"glue/{task}", tmp_path, split)
    assert isinstance(dataset, GlueDataset)
    assert dataset.num_labels == num_labels
    assert len(dataset) == len(expected)
    assert dataset[1] == {"idx": 1, **expected[1]}


def test_stsb_labels_are_floats(tmp_path):
    directory, split, lines, _ = CASES["stsb"]
    _write(tmp_path, directory, split, lines)
    labels = [r["label"] for r in read_glue("stsb", tmp_path, split)]
    assert all(isinstance(label, float) for label in labels)


def test_quotes_are_literal(tmp_path):
    _write(tmp_path, "SST-2", "train", [
        _tsv("sentence", "label"),
        _tsv('the " dumb and dumber " crowd', "0"),
        _tsv('"an unclosed quote', "1"),
        _tsv("after it", "0"),
    ])
    records = read_glue("sst2", tmp_path, "train")
    assert [r["sentence"] for r in records] == ['the " dumb and dumber " crowd', '"an unclosed quote', "after it"]
    assert [r["label"] for r in records] == [0, 1, 0]


@pytest.mark.parametrize(("task", "directory", "split", "lines", "text"), [
    ("cola", "CoLA", "test", [_tsv("index", "sentence"), _tsv("0", "Bill whistled past the house.")],
     {"sentence": "Bill whistled past the house."}),
    ("sst2", "SST-2", "test", [_tsv("index", "sentence"), _tsv("0", "uneasy mishmash of styles")],
     {"sentence": "uneasy mishmash of styles"}),
    ("mrpc", "MRPC", "test", [_tsv("index", "#1 ID", "#2 ID", "#1 String", "#2 String"),
                              _tsv("0", "1089874", "1089925", "PCCW's chief.", "Its chief.")],
     {"sentence1": "PCCW's chief.", "sentence2": "Its chief."}),
    ("qqp", "QQP", "test", [_tsv("id", "question1", "question2"), _tsv("0", "Why?", "How?")],
     {"question1": "Why?", "question2": "How?"}),
    ("mnli", "MNLI", "test_matched", [_tsv(*MNLI_HEAD), _mnli_row("0", "Hierbas is a Caribbean liqueur.",
                                                                  "It is made in Canada.")],
     {"premise": "Hierbas is a Caribbean liqueur.", "hypothesis": "It is made in Canada."}),
])
def test_test_split_has_no_labels(tmp_path, task, directory, split, lines, text):
    _write(tmp_path, directory, split, lines)
    assert read_glue(task, tmp_path, split) == [{"idx": 0, **text, "label": None}]


def test_mnli_dev_means_dev_matched_and_mismatched_is_separate(tmp_path):
    directory, _, lines, expected = CASES["mnli"]
    _write(tmp_path, directory, "dev_matched", lines)
    _write(tmp_path, directory, "dev_mismatched", [lines[0], lines[3]])
    assert read_glue("mnli", tmp_path, "dev") == read_glue("mnli", tmp_path, "dev_matched")
    assert [r["label"] for r in read_glue("mnli", tmp_path, "dev_mismatched")] == [2]


def test_mnli_train_header(tmp_path):
    _write(tmp_path, "MNLI", "train", [
        _tsv(*MNLI_HEAD, "label1", "gold_label"),
        _mnli_row("0", "Conceptually cream skimming has two dimensions.", "Product and geography.", "neutral",
                  "neutral"),
    ])
    assert read_glue("mnli", tmp_path, "train") == [{
        "idx": 0, "premise": "Conceptually cream skimming has two dimensions.",
        "hypothesis": "Product and geography.", "label": 1}]


@pytest.mark.parametrize(("spelling", "task"), [
    ("SST-2", "sst2"), ("sst2", "sst2"), ("sst-2", "sst2"), ("Sst_2", "sst2"),
    ("sts-b", "stsb"), ("STS-B", "stsb"), ("CoLA", "cola"), ("MNLI", "mnli"),
])
def test_task_name_spellings(tmp_path, spelling, task):
    directory, split, lines, _ = CASES[task]
    _write(tmp_path, directory, split, lines)
    assert read_glue(spelling, tmp_path, split) == read_glue(task, tmp_path, split)
    assert GlueDataset(spelling, tmp_path, split).task == task


def test_blank_lines_are_skipped(tmp_path):
    _write(tmp_path, "SST-2", "train", [_tsv("sentence", "label"), "", _tsv("good", "1"), "\t", _tsv("bad", "0")])
    assert [r["sentence"] for r in read_glue("sst2", tmp_path, "train")] == ["good", "bad"]


def test_crlf_line_endings(tmp_path):
    path = tmp_path / "SST-2" / "train.tsv"
    path.parent.mkdir()
    path.write_bytes(b"sentence\tlabel\r\ngood\t1\r\nbad\t0\r\n")
    assert read_glue("sst2", tmp_path, "train") == [{"idx": 0, "sentence": "good", "label": 1},
                                                    {"idx": 1, "sentence": "bad", "label": 0}]


# ------------------------------------------------------------------------------------------------ errors
def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(DataError) as info:
        read_glue("rte", tmp_path, "train")
    message = str(info.value)
    assert str(tmp_path / "train.tsv") in message
    assert "RTE/{train,dev,test}.tsv" in message


def test_unknown_task_lists_choices(tmp_path):
    with pytest.raises(DataError, match="unknown GLUE task 'squad'; choose one of: cola, sst2, mrpc"):
        read_glue("squad", tmp_path)
    with pytest.raises(DataError, match="unknown GLUE task 'imdb'.*wnli"):
        build_dataset("glue/imdb", tmp_path, "train")


def test_glue_needs_a_task_and_a_root(tmp_path):
    with pytest.raises(DataError, match="unknown GLUE task ''"):
        build_dataset("glue", tmp_path, "train")
    with pytest.raises(DataError, match="--data-root"):
        build_dataset("glue/sst2", None, "train")


@pytest.mark.parametrize(("task", "split", "choices"), [
    ("sst2", "validation", "train, dev, test"),
    ("mnli", "test", "train, dev_matched, dev_mismatched, test_matched, test_mismatched"),
])
def test_unknown_split_lists_choices(tmp_path, task, split, choices):
    with pytest.raises(DataError, match=f"no split '{split}'; choose one of: {choices}"):
        read_glue(task, tmp_path, split)


def test_short_row_names_path_and_line(tmp_path):
    path = _write(tmp_path, "QNLI", "dev", [
        _tsv("index", "question", "sentence", "label"),
        _tsv("0", "Why?", "Because.", "entailment"),
        _tsv("1", "Why not?", "entailment"),
    ])
    with pytest.raises(DataError, match=f"{path}:3: expected at least 4 tab-separated columns, got 3"):
        read_glue("qnli", tmp_path, "dev")


def test_error_line_numbers_count_blank_lines(tmp_path):
    path = _write(tmp_path, "SST-2", "train", [_tsv("sentence", "label"), "", _tsv("fine", "1"), "", "broken"])
    with pytest.raises(DataError, match=f"{path}:5: expected at least 2"):
        read_glue("sst2", tmp_path, "train")


def test_cola_short_row_line_number(tmp_path):
    path = _write(tmp_path, "CoLA", "train", [_tsv("gj04", "1", "", "Fine."), _tsv("gj04", "1")])
    with pytest.raises(DataError, match=f"{path}:2: expected at least 4"):
        read_glue("cola", tmp_path, "train")


@pytest.mark.parametrize(("task", "directory", "lines", "bad"), [
    ("sst2", "SST-2", [_tsv("sentence", "label"), _tsv("fine", "1"), _tsv("odd", "2")], "'2'"),
    ("rte", "RTE", [_tsv("index", "sentence1", "sentence2", "label"), _tsv("0", "a", "b", "entailment"),
                    _tsv("1", "a", "b", "neutral")], "'neutral'"),
])
def test_unknown_label(tmp_path, task, directory, lines, bad):
    path = _write(tmp_path, directory, "train", lines)
    with pytest.raises(DataError, match=f"{path}:3: label {bad} is not one of"):
        read_glue(task, tmp_path, "train")


def test_non_numeric_score(tmp_path):
    directory, split, lines, _ = CASES["stsb"]
    path = _write(tmp_path, directory, split, [*lines, lines[1].rsplit("\t", 1)[0] + "\thigh"])
    with pytest.raises(DataError, match=f"{path}:4: score 'high' is not a number"):
        read_glue("stsb", tmp_path, split)


def test_header_lacking_a_column(tmp_path):
    path = _write(tmp_path, "QQP", "dev", [_tsv("id", "qid1", "qid2", "question1", "q2", "is_duplicate"),
                                            _tsv("0", "1", "2", "a?", "b?", "0")])
    with pytest.raises(DataError, match=rf"{path}: header lacks column\(s\) \['question2'\]"):
        read_glue("qqp", tmp_path, "dev")


def test_empty_file(tmp_path):
    _write(tmp_path, "WNLI", "dev", ["", "  "])
    with pytest.raises(DataError, match="is empty"):
        read_glue("wnli", tmp_path, "dev")


def test_a_header_without_rows_is_one_line(tmp_path):
    path = _write(tmp_path, "SST-2", "dev", [_tsv("sentence", "label")])
    with pytest.raises(DataError, match=rf"{path} has a header but no rows"):
        read_glue("sst2", tmp_path, "dev")


def test_a_byte_order_mark_is_accepted(tmp_path):
    path = tmp_path / "SST-2" / "dev.tsv"
    path.parent.mkdir()
    path.write_bytes("\ufeffsentence\tlabel\ngood film\t1\n".encode())
    assert read_glue("sst2", tmp_path, "dev") == [{"idx": 0, "sentence": "good film", "label": 1}]


def test_not_utf8(tmp_path):
    path = tmp_path / "SST-2" / "dev.tsv"
    path.parent.mkdir()
    path.write_bytes(b"sentence\tlabel\n\xff\xfe\t1\n")
    with pytest.raises(DataError, match="is not UTF-8 text"):
        read_glue("sst2", tmp_path, "dev")
