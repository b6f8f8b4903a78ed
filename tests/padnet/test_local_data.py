"""padnet.moe.local_data: a user's own csv / tsv / json(l) text-classification files, as HF run_glue.py reads them."""

from __future__ import annotations

import json

import pytest

from padnet.moe.local_data import LocalDataError, load_local_task

ALL = ("train", "validation", "test")


def _write(path, text: str):
    path.write_text(text)
    return str(path)


def test_csv_with_a_header_string_labels_and_three_classes(tmp_path):
    train = _write(tmp_path / "train.csv", 'text,label\n"good, really",pos\nbad,neg\nso-so,neutral\nfine,pos\n')
    dev = _write(tmp_path / "dev.csv", "text,label\nawful,neg\n")
    test = _write(tmp_path / "test.csv", "text\nunseen\n")
    task = load_local_task(train, dev, test, ALL)
    assert task.text_keys == ("text", None) and task.label_list == ["neg", "neutral", "pos"]
    assert task.splits["train"][0] == {"idx": 0, "text": "good, really", "label": 2}
    assert task.splits["validation"] == [{"idx": 0, "text": "awful", "label": 0}]
    assert task.splits["test"] == [{"idx": 0, "text": "unseen", "label": None}]


def test_glue_style_tsv_without_a_header_and_two_texts(tmp_path):
    train = _write(tmp_path / "train.tsv", "a cat\ta dog\tcontradiction\nit \"rains\"\tit is wet\tentailment\n")
    task = load_local_task(train, None, None, ("train",))
    assert task.text_keys == ("sentence1", "sentence2") and task.label_list == ["contradiction", "entailment"]
    assert task.splits["train"][1] == {"idx": 1, "sentence1": 'it "rains"', "sentence2": "it is wet", "label": 1}


def test_header_prefers_sentence1_and_sentence2_then_the_first_two_columns(tmp_path):
    train = _write(tmp_path / "t.tsv", "id\tsentence2\tlabel\tsentence1\n1\tb\tx\ta\n")
    assert load_local_task(train, None, None, ("train",)).text_keys == ("sentence1", "sentence2")
    train = _write(tmp_path / "u.tsv", "Label\tquestion\tpassage\nyes\tq\tp\n")  # any case of 'label'
    assert load_local_task(train, None, None, ("train",)).text_keys == ("question", "passage")


@pytest.mark.parametrize("lines", [True, False])
def test_json_lines_and_json_arrays(tmp_path, lines):
    rows = [{"sentence": "fine", "label": 10}, {"sentence": "meh", "label": 2}, {"sentence": "ok", "label": 10}]
    text = "\n".join(json.dumps(r) for r in rows) if lines else json.dumps(rows)
    train = _write(tmp_path / ("train.jsonl" if lines else "train.json"), text)
    task = load_local_task(train, None, None, ("train",))
    assert task.label_list == ["2", "10"]  # integer labels are classes, sorted numerically
    assert [r["label"] for r in task.splits["train"]] == [1, 0, 1]


def test_float_labels_make_a_regression_task(tmp_path):
    train = _write(tmp_path / "train.csv", "sentence1,sentence2,label\na,b,0.5\nc,d,4.25\n")
    dev = _write(tmp_path / "dev.csv", "sentence1,sentence2,label\ne,f,3\n")
    task = load_local_task(train, dev, None, ("train", "validation"))
    assert task.label_list is None and task.splits["validation"][0]["label"] == 3.0


def test_a_byte_order_mark_is_accepted(tmp_path):
    train = tmp_path / "train.csv"
    train.write_bytes("\ufefftext,label\nok,a\nno,b\n".encode())
    assert load_local_task(str(train), None, None, ("train",)).label_list == ["a", "b"]


@pytest.mark.parametrize("files, message", [
    ({"train.csv": "text,label\nok,a\n", "dev.csv": "text,label\nhm,c\n"}, "label 'c' is not in the training file's"),
    ({"train.csv": "text,label\n"}, "has a header but no rows"),
    ({"train.csv": ""}, "is empty"),
    ({"train.csv": "a,b,c,d\n1,2,3,4\n"}, "no header row with a 'label' column, and 4 columns"),
    ({"train.csv": "text,label\nok,a,extra\n"}, "train.csv:2: 3 columns, the header has 2"),
    ({"train.xlsx": "x"}, "unknown format .xlsx"),
    ({"train.jsonl": '{"text": "a", "label": 1}\nnot json\n'}, "not JSON lines or a JSON array"),
    ({"train.csv": "text,label\nok,a\n", "dev.csv": "words,label\nhm,a\n"}, "no column 'text'"),
    ({"train.csv": "label\na\n"}, "no text column besides 'label'"),
    ({"train.csv": "text,label\nok,1.5\n", "dev.csv": "text,label\nhm,high\n"}, "'high' is not a number"),
])
def test_bad_files_are_one_line_errors(tmp_path, files, message):
    paths = {name.split(".")[0]: _write(tmp_path / name, text) for name, text in files.items()}
    with pytest.raises(LocalDataError, match=message) as err:
        load_local_task(paths.get("train"), paths.get("dev"), None, ("train", "validation"))
    assert "\n" not in str(err.value)


def test_missing_files_and_flags(tmp_path):
    with pytest.raises(LocalDataError, match="need --train_file"):
        load_local_task(None, str(tmp_path / "dev.csv"), None, ("validation",))
    with pytest.raises(LocalDataError, match="does not exist"):
        load_local_task(str(tmp_path / "nope.csv"), None, None, ("train",))
    train = _write(tmp_path / "train.csv", "text,label\nok,a\n")
    with pytest.raises(LocalDataError, match="--do_eval with --train_file needs --validation_file"):
        load_local_task(train, None, None, ("train", "validation"))


def test_headerless_dev_and_test_files_take_the_training_files_columns(tmp_path):
    train = _write(tmp_path / "train.tsv", "great\t1\npoor\t0\n")
    dev = _write(tmp_path / "dev.tsv", "fine\t1\n")
    test = _write(tmp_path / "test.tsv", "unlabelled text\n")
    task = load_local_task(train, dev, test, ALL)
    assert task.text_keys == ("sentence", None) and task.label_list == ["0", "1"]
    assert task.splits["validation"] == [{"idx": 0, "sentence": "fine", "label": 1}]
    assert task.splits["test"] == [{"idx": 0, "sentence": "unlabelled text", "label": None}]
