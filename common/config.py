"""YAML config files as argparse defaults: timm's ``-c/--config`` convention.

The values of the file become the parser's defaults, so an explicit command-line flag always wins::

    parser = argparse.ArgumentParser()
    parser.add_argument("--lr", type=float, default=0.01)
    args = parse_args_with_config(parser)          # python train.py -c cfg.yml --lr 0.1

A key of the file may be written as the flag's destination (``drop_path``) or as its long option without the
dashes (``drop-path``). A key that is neither, and not declared in ``extra_keys`` (config-only settings such as
DS-Net's ``num_choice``), is rejected with the key, the file and the closest flag; so is a value whose type
does not fit its flag. Both raise :class:`ConfigError`.
"""

from __future__ import annotations

import argparse
import difflib
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml

from common.errors import UserError

_VALUE_ACTIONS = (argparse._StoreAction, argparse._AppendAction)
_FLAG_ACTIONS = (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse.BooleanOptionalAction)


class ConfigError(UserError):
    """A config file that is missing, unreadable, or has an unknown key or a wrongly typed value."""


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with a :class:`ConfigError` naming the file for every way this can fail."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; pass an existing YAML file to -c/--config")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {' '.join(str(err).split())}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"config file {path} cannot be read: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        kind = type(data).__name__
        raise ConfigError(f"config file {path} must hold a mapping of flag names to values, not a {kind}")
    return data


def _actions_by_key(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Every name a config key may use for an action: its dest and its long options without dashes."""
    keys: dict[str, argparse.Action] = {}
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction) or action.dest == argparse.SUPPRESS:
            continue
        keys[action.dest] = action
        for option in action.option_strings:
            if option.startswith("--"):
                keys[option[2:]] = action
    return keys


def _convert_one(value: Any, action: argparse.Action, where: str) -> Any:
    kind = action.type
    if kind is None or kind is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r} ({type(value).__name__})")
        return value
    if isinstance(value, bool) and kind is not bool:
        raise ConfigError(f"{where}: expected a value of type {getattr(kind, '__name__', kind)}, got {value!r}")
    if kind is int and isinstance(value, float) and not value.is_integer():
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if kind in (int, float) and isinstance(value, (int, float)):
        return kind(value)
    if isinstance(value, (int, float)) and kind in FLOAT_TYPES:
        value = repr(float(value))  # checked below exactly as the same number on the command line
    if not isinstance(value, str):
        raise ConfigError(f"{where}: expected a value readable as {getattr(kind, '__name__', kind)}, got {value!r}")
    try:
        return kind(value)
    except (TypeError, ValueError, argparse.ArgumentTypeError) as err:
        raise ConfigError(f"{where}: {value!r} is not a valid {getattr(kind, '__name__', 'value')} ({err})") from None


def _convert(value: Any, action: argparse.Action, where: str) -> Any:
    """Check ``value`` against what the command line would accept for ``action`` and convert it the same way."""
    if value is None:
        return None
    if isinstance(action, _FLAG_ACTIONS):
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if not isinstance(action, _VALUE_ACTIONS):
        raise ConfigError(f"{where}: this flag cannot be set from a config file")
    if action.nargs in ("+", "*") or isinstance(action.nargs, int):
        items = value if isinstance(value, list) else [value]
        if isinstance(action.nargs, int) and len(items) != action.nargs:
            raise ConfigError(f"{where}: expected a list of {action.nargs} values, got {value!r}")
        converted = [_convert_one(item, action, where) for item in items]
    else:
        converted = _convert_one(value, action, where)
    values = converted if isinstance(converted, list) else [converted]
    if action.choices is not None and any(v not in action.choices for v in values):
        raise ConfigError(f"{where}: {value!r} is not one of {sorted(map(str, action.choices))}")
    return converted


def config_defaults(
    parser: argparse.ArgumentParser, path: str | Path, extra_keys: Iterable[str] = ()
) -> dict[str, Any]:
    """The parser defaults a config file sets, keyed by dest, checked and converted like command-line values."""
    data = load_yaml(path)
    actions = _actions_by_key(parser)
    extra = set(extra_keys)
    defaults: dict[str, Any] = {}
    for key, value in data.items():
        key = str(key)
        where = f"config file {path}, key '{key}'"
        if key in actions:
            action = actions[key]
            defaults[action.dest] = _convert(value, action, where)
        elif key in extra or key.replace("-", "_") in extra:
            defaults[key.replace("-", "_")] = value
        else:
            close = difflib.get_close_matches(key, list(actions) + sorted(extra), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"{where}: unknown key, not a flag of {parser.prog}{hint}")
    return defaults


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``-c/--config FILE`` to ``parser`` so that ``--help`` documents it."""
    parser.add_argument(
        "-c", "--config", default="", metavar="FILE",
        help="YAML file whose keys set the defaults of the flags below; explicit flags still win",
    )


def parse_args_with_config(
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None = None,
    extra_keys: Iterable[str] = (),
) -> argparse.Namespace:
    """Parse ``argv`` with the defaults of an optional ``-c/--config`` YAML file (timm's convention).

    ``extra_keys`` names config-only settings that have no flag; they land on the namespace as they are.
    The returned namespace keeps the file's path in ``args.config``.
    """
    if not any("--config" in action.option_strings for action in parser._actions):
        add_config_argument(parser)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("-c", "--config", default="")
    known, _ = pre.parse_known_args(argv)
    if known.config:
        parser.set_defaults(**config_defaults(parser, known.config, extra_keys))
    return parser.parse_args(argv)


# ------------------------------------------------------------------------------------------ float flag values
def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def finite_float(text: str) -> float:
    """``type=`` for a float flag: NaN and infinities are refused (argparse's ``float`` accepts them)."""
    return _float(text)


def non_negative_float(text: str) -> float:
    """``type=`` for a finite float flag that may be 0 (weight decay, momentum, dropout)."""
    value = _float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is negative; give a value >= 0")
    return value


def positive_float(text: str) -> float:
    """``type=`` for a finite float flag that must be > 0 (learning rate, temperature)."""
    value = _float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be > 0")
    return value


FLOAT_TYPES = (finite_float, non_negative_float, positive_float)
