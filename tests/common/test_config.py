"""common.config: YAML files as argparse defaults, explicit flags win, bad keys and values rejected."""

from __future__ import annotations

import argparse

import pytest

from common.config import ConfigError, finite_float, non_negative_float, parse_args_with_config, positive_float
from common.errors import ArgumentParser, UserError


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="train.py")
    parser.add_argument("data", nargs="?", default=None)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("-b", "--batch-size", type=int, default=32)
    parser.add_argument("--sched", default="step", choices=["step", "cosine"])
    parser.add_argument("--amp", action="store_true")
    parser.add_argument("--mean", type=float, nargs="+", default=None)
    parser.add_argument("--drop-path", type=float, default=0.0)
    parser.add_argument("--resume", default="")
    return parser


def write(tmp_path, text: str):
    path = tmp_path / "cfg.yml"
    path.write_text(text)
    return path


def test_file_values_become_defaults(tmp_path):
    cfg = write(tmp_path, "lr: 0.08\nbatch_size: 64\nsched: cosine\namp: true\nmean: [0.5, 0.5, 0.5]\n")
    args = parse_args_with_config(make_parser(), ["/data", "-c", str(cfg)])
    assert (args.lr, args.batch_size, args.sched, args.amp, args.mean) == (0.08, 64, "cosine", True, [0.5] * 3)
    assert args.data == "/data" and args.config == str(cfg)


def test_explicit_flags_win_over_the_file(tmp_path):
    cfg = write(tmp_path, "lr: 0.08\nbatch_size: 64\n")
    args = parse_args_with_config(make_parser(), ["--lr", "0.1", "-c", str(cfg), "-b", "16"])
    assert (args.lr, args.batch_size) == (0.1, 16)


def test_without_config_the_parser_defaults_stand():
    args = parse_args_with_config(make_parser(), [])
    assert (args.lr, args.batch_size, args.config) == (0.01, 32, "")


def test_hyphenated_keys_and_yaml_strings_are_converted(tmp_path):
    # PyYAML reads '1e-5' (no dot) as a string; it must be converted like a command-line value.
    cfg = write(tmp_path, "drop-path: 0.1\nlr: 1e-5\n")
    args = parse_args_with_config(make_parser(), ["-c", str(cfg)])
    assert args.drop_path == 0.1 and args.lr == 1e-5 and isinstance(args.lr, float)


def test_extra_keys_land_on_the_namespace(tmp_path):
    cfg = write(tmp_path, "num_choice: 14\ntrain_mode: gate\n")
    args = parse_args_with_config(make_parser(), ["-c", str(cfg)], extra_keys=["num_choice", "train_mode"])
    assert (args.num_choice, args.train_mode) == (14, "gate")


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("lr_rate: 0.1\n", "'lr_rate': unknown key"),
        ("batch_size: 6.5\n", "'batch_size': expected an integer"),
        ("batch_size: sixty\n", "'batch_size': 'sixty' is not a valid int"),
        ("amp: yes please\n", "'amp': expected true or false"),
        ("sched: linear\n", "'sched': 'linear' is not one of"),
        ("lr: true\n", "'lr': expected a value of type float"),
        ("resume: 3\n", "'resume': expected a string"),
        ("- lr\n- 0.1\n", "must hold a mapping"),
        ("lr: [0.1\n", "is not valid YAML"),
    ],
)
def test_bad_files_are_rejected_with_key_and_file(tmp_path, text, fragment):
    cfg = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        parse_args_with_config(make_parser(), ["-c", str(cfg)])
    assert fragment in str(err.value)
    assert str(cfg) in str(err.value)


def test_unknown_key_suggests_the_closest_flag(tmp_path):
    cfg = write(tmp_path, "bach_size: 64\n")
    with pytest.raises(ConfigError, match="did you mean 'batch_size'"):
        parse_args_with_config(make_parser(), ["-c", str(cfg)])


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        parse_args_with_config(make_parser(), ["-c", str(tmp_path / "nope.yml")])


def test_empty_file_changes_nothing(tmp_path):
    args = parse_args_with_config(make_parser(), ["-c", str(write(tmp_path, ""))])
    assert args.lr == 0.01


@pytest.mark.parametrize("kind, text, message", [
    (positive_float, "nan", "is not a finite number"), (positive_float, "inf", "is not a finite number"),
    (positive_float, "0", "must be > 0"), (positive_float, "-0.1", "must be > 0"),
    (non_negative_float, "-1e-4", "is negative"), (finite_float, "-inf", "is not a finite number"),
    (finite_float, "ten", "is not a number"),
])
def test_float_flag_types_refuse_nan_inf_and_out_of_range(kind, text, message):
    parser = ArgumentParser(prog="x")
    parser.add_argument("--lr", type=kind, default=1.0)
    with pytest.raises(UserError, match=f"argument --lr: '{text}' {message}"):
        parser.parse_args([f"--lr={text}"])


def test_float_flag_types_accept_good_values_from_the_command_line_and_a_config(tmp_path):
    parser = ArgumentParser(prog="x")
    parser.add_argument("--lr", type=positive_float, default=1.0)
    parser.add_argument("--wd", type=non_negative_float, default=1.0)
    assert parser.parse_args(["--lr", "1e-3", "--wd", "0"]).lr == 1e-3
    cfg = tmp_path / "c.yml"
    cfg.write_text("lr: 0.05\nwd: 0\n")
    args = parse_args_with_config(parser, ["-c", str(cfg)])
    assert (args.lr, args.wd) == (0.05, 0.0)
    cfg.write_text("lr: .nan\n")
    with pytest.raises(ConfigError, match="key 'lr': 'nan' is not a valid positive_float"):
        parse_args_with_config(parser, ["-c", str(cfg)])
