"""The one configuration protocol of the dynamic models, and what their static exports share.

Every dynamic model class of the repository exposes

* ``configurations() -> list[str]``: the named operating points a user can pick (ADN skip configurations,
  DS-Net sub-networks and ``dynamic``, JEI-DNN forced exits and the gated policy, DyT activation rates, PAD-Net
  training / deployed forms), cheapest-to-most-expensive where the model has such an order, and
* ``set_configuration(name)``: puts the model in that operating point (an unknown name is a
  :class:`ConfigurationError` naming the valid ones).

Each subproject's ``export.to_static(model, configuration)`` returns a plain inference module for one such
configuration, with no dynamic machinery, whose outputs equal the dynamic model's there. :func:`fold_batchnorm`
is the optional last step of every export; :func:`check_exportable` the check each export makes first.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch
from torch import nn

from common.errors import UserError


class ConfigurationError(UserError):
    """A configuration name the model does not have."""


@runtime_checkable
class Configurable(Protocol):
    """A dynamic model with named operating points."""

    def configurations(self) -> list[str]: ...

    def set_configuration(self, name: str) -> None: ...


def check_configuration(model: Configurable, name: str) -> str:
    """``name`` if it is one of ``model.configurations()``, else a :class:`ConfigurationError` listing them."""
    names: Sequence[str] = model.configurations()
    if name not in names:
        shown = ", ".join(names[:20]) + (f", ... ({len(names)} in all)" if len(names) > 20 else "")
        raise ConfigurationError(f"{type(model).__name__} has no configuration {name!r}; choose one of {shown}")
    return name


def check_exportable(model: nn.Module, name: str) -> None:
    """A static export is of an inference model: refuse a model in training mode or a missing configuration."""
    check_configuration(model, name)  # type: ignore[arg-type]
    if model.training:
        raise ConfigurationError(f"export {type(model).__name__} in evaluation mode: call model.eval() first "
                                 "(BatchNorm statistics and dropout differ in training mode)")


def fold_batchnorm(module: nn.Module) -> nn.Module:
    """The module with every BatchNorm that follows a convolution folded into that convolution's weight and
    bias (:func:`torch.fx.experimental.optimization.fuse`); returns a ``torch.fx.GraphModule``."""
    from torch.fx.experimental.optimization import fuse

    if module.training:
        raise ConfigurationError("fold BatchNorm in evaluation mode: call .eval() first")
    with torch.no_grad():
        return fuse(module, inplace=False)
