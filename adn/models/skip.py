"""Skip configurations and the pieces every ADN model shares (Sec. 3 of the paper).

A skip configuration has one flag per skippable stage, ``True`` = skip that stage's skippable sub-path. It is
written as a string of ``T``/``F`` letters in stage order (``"TFFF"`` skips the sub-path of stage 1 only), the
key used by the original repository's README and by ``../shared/reference/adn/manifest_*.json``.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence

import torch
from torch import nn

from common.configurations import check_configuration

SkipCfg = tuple[bool, ...]

_TRUE = {"true", "t", "1"}
_FALSE = {"false", "f", "0"}


def _tokens(value: str | Iterable[str | bool]) -> list[str | bool]:
    tokens = value.split() if isinstance(value, str) else list(value)
    if len(tokens) == 1 and isinstance(tokens[0], str) and len(tokens[0]) > 1 and set(tokens[0]) <= set("TFtf01"):
        return list(tokens[0])  # the compact form: --skip-cfg TFTF
    return tokens


def parse_skip_cfg(value: str | Iterable[str | bool] | None, num_stages: int) -> SkipCfg:
    """Read a skip configuration from ``"TFTF"``, ``"T F T F"``, ``["True", "false", "T", "0"]`` or booleans.

    Tokens are case-insensitive ``true/false/t/f/1/0``; ``None`` is the super-net. Raises ``ValueError``
    naming the bad token or the wrong count (the original read every token but the literal ``True`` as
    ``False``, and a wrong count failed only later, or silently).
    """
    if value is None:
        return (False,) * num_stages
    flags = []
    for token in _tokens(value):
        word = str(token).strip().lower()
        if isinstance(token, bool) or word in _TRUE | _FALSE:
            flags.append(token if isinstance(token, bool) else word in _TRUE)
        else:
            raise ValueError(f"skip flag {token!r} is not one of True/False/T/F/1/0")
    if len(flags) != num_stages:
        raise ValueError(f"this model has {num_stages} skippable stages, so the skip configuration needs "
                         f"{num_stages} flags (e.g. {'T' * num_stages} for the base-net), got {len(flags)}")
    return tuple(flags)


def skip_cfg_name(cfg: Sequence[bool]) -> str:
    """``(True, False, False, False)`` -> ``"TFFF"``."""
    return "".join("T" if flag else "F" for flag in cfg)


def all_skip_cfgs(num_stages: int) -> list[SkipCfg]:
    """All 2^S configurations, super-net (all F) first, in the manifests' order (``itertools.product``)."""
    return [tuple(cfg) for cfg in itertools.product((False, True), repeat=num_stages)]


class SkippableSequential(nn.Sequential):
    """A stage: runs every block, except that skippable blocks are not executed when the stage is skipped.

    Each block is called as ``block(x, skip)`` so that a mandatory block can switch to its skip-aware norms.
    """

    def forward(self, x: torch.Tensor, skip: bool = False) -> torch.Tensor:
        for block in self:
            if not (skip and block.skippable):
                x = block(x, skip)
        return x


class AdaptiveDepthMixin:
    """The configuration vocabulary of an ADN model: ``skip_cfg`` default, names, and parsing.

    ``model.skip_cfg`` is the configuration ``forward`` uses when called without one (the super-net unless
    set: ``model.skip_cfg = "TTTT"``); ``model.configurations()`` lists all 2^S names and
    ``model.set_configuration(name)`` selects one of them (the repository's configuration protocol,
    ``common.configurations``), after which a plain ``model(x)`` runs it.
    """

    num_skippable_stages: int
    classifier_name: str  # the attribute holding the classification head (what --freeze_params leaves trainable)
    _skip_cfg: SkipCfg

    @property
    def skip_cfg(self) -> SkipCfg:
        return self._skip_cfg

    @skip_cfg.setter
    def skip_cfg(self, value: str | Iterable[str | bool] | None) -> None:
        self._skip_cfg = parse_skip_cfg(value, self.num_skippable_stages)

    def resolve_skip_cfg(self, value: str | Iterable[str | bool] | None) -> SkipCfg:
        """The configuration to run: ``value`` if given, else the model's default."""
        return self._skip_cfg if value is None else parse_skip_cfg(value, self.num_skippable_stages)

    def configurations(self) -> list[str]:
        """All skip configuration names, super-net first (``FFFF``, ``FFFT``, ..., ``TTTT``)."""
        return [skip_cfg_name(cfg) for cfg in all_skip_cfgs(self.num_skippable_stages)]

    def set_configuration(self, name: str) -> None:
        """Run skip configuration ``name`` (e.g. ``"TTFF"``) by default; an unknown name is a
        ``ConfigurationError`` listing the valid ones."""
        self._skip_cfg = parse_skip_cfg(check_configuration(self, name), self.num_skippable_stages)
