"""The models :mod:`benchmarks.speed` times: for each paper, how to build its dynamic models and their full static
counterpart. Nothing here configures a model: configurations come from the model's own ``configurations()`` /
``set_configuration()``, static exports from the subproject's ``export.to_static``, and the preparation of an
untrained model (gate calibration, a partition by IMP) from a function of the subproject.

Every model is built with random weights (speed does not depend on them) in evaluation mode. A :class:`Group` is
timed in one interleaved run: its full static model and every configuration of each of its dynamic models, each
next to its static export.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class Dynamic:
    """One dynamic model: ``build()`` makes it; ``export(model, name)`` is its subproject's ``to_static``;
    ``prepare(model, x)``, if given, sets an untrained model up on the timed images before any timing."""

    label: str
    build: Callable[[], nn.Module]
    export: Callable[[nn.Module, str], nn.Module]
    prepare: Callable[[nn.Module, torch.Tensor], None] | None = None


@dataclass
class Group:
    """A full static model (``static_label``, built by ``build_static``) and the dynamic models timed against it."""

    paper: str
    name: str
    img_size: int
    static_label: str
    build_static: Callable[[], nn.Module]
    dynamic: list[Dynamic] = field(default_factory=list)


def _eval(build: Callable[..., nn.Module], *args, **kwargs) -> Callable[[], nn.Module]:
    def make() -> nn.Module:
        torch.manual_seed(0)
        return build(*args, **kwargs).eval()
    return make


def _super_net(build: Callable[[], nn.Module], export: Callable[[nn.Module, str], nn.Module]) -> nn.Module:
    """The static export of an ADN model's first configuration, its super-net (all sub-paths run)."""
    model = build()
    return export(model, model.configurations()[0])


def adn_groups(size: str) -> list[Group]:
    """ADN (Sec. 3): every skip configuration against torchvision's static network of the same family."""
    import torchvision

    from adn.export import to_static
    from adn.models import create_model

    archs = {"tiny": ["resnet_adn_cifar"], "quick": ["mobilenet_v2"], "full": ["resnet50", "mobilenet_v2"]}[size]
    groups = []
    for arch in archs:
        build = _eval(create_model, arch)
        if size == "tiny":
            static_label, static = "super-net (static export)", functools.partial(_super_net, build, to_static)
        else:
            static_label, static = "torchvision static", _eval(torchvision.models.get_model, arch)
        groups.append(Group("adn", f"{arch}-ADN", 32 if size == "tiny" else 224, static_label, static,
                            [Dynamic(f"{arch}-ADN", build, to_static)]))
    return groups


def dsnet_groups(size: str) -> list[Group]:
    """DS-Net (Sec. 3): every sub-network and the gate-routed model against the supernet's largest widths."""
    from dsnet.export import to_static
    from dsnet.models import create_model

    name = "slimmable_mbnet_v1_bn_uniform" + ("_tiny" if size == "tiny" else "")
    build = _eval(create_model, name, num_classes=10 if size == "tiny" else 1000)
    return [Group("dsnet", name, 32 if size == "tiny" else 224, "largest (static export)",
                  lambda: to_static(build(), "largest"), [Dynamic(name, build, to_static)])]


def jeidnn_groups(size: str) -> list[Group]:
    """JEI-DNN (Sec. 3): forced early exits and the gated policy against the backbone with its final head."""
    from jeidnn.dynn import calibrate_gates
    from jeidnn.export import to_static
    from jeidnn.models import create_model

    img = 32 if size == "tiny" else 224
    build = _eval(create_model, "t2t_vit_7", num_classes=10, img_size=img, drop_path_rate=0.0)
    return [Group("jeidnn", "t2t_vit_7", img, "final head (static export)", lambda: to_static(build(), "final"),
                  [Dynamic("t2t_vit_7 with exits", build, to_static, calibrate_gates)])]


def dyt_groups(size: str) -> list[Group]:
    """DyT (Sec. 3.1): the token dispatcher's operating points against the same ViT and adapters without it."""
    from dyt.export import to_static
    from dyt.models import build_model, set_dispatch_rate

    name, img = {"tiny": ("vit_digits", 32), "quick": ("vit_tiny_d4_e192", 224),
                 "full": ("vit_base_patch16_224_in21k", 224)}[size]
    build = _eval(build_model, name, num_classes=100, ffn_num=64, dispatch="mlp")
    return [Group("dyt", name, img, "all tokens (static export)", lambda: to_static(build(), "all tokens"),
                  [Dynamic(f"{name} DyT", build, to_static, set_dispatch_rate)])]


def padnet_groups(size: str) -> list[Group]:
    """PAD-Net (Sec. 3): DY-Conv and PAD-Net partitioned by IMP at kappa 0.3 and 0.5 against the static network."""
    from padnet.dyconv.deploy import partition
    from padnet.dyconv.models import build_model
    from padnet.export import to_static

    static, prefix, kwargs = {"tiny": ("resnet10", "DyResNet10", {}),
                              "quick": ("mobilenetv2", "Dymobilenetv2", {"width_multiplier": 1.0}),
                              "full": ("resnet50", "DyResNet50", {})}[size]
    dynamic = [Dynamic(f"{prefix} (DY-Conv)", _eval(build_model, prefix, **kwargs), to_static)]
    for kappa in (0.3, 0.5):
        dynamic.append(Dynamic(f"{prefix}_PAD kappa={kappa}", _eval(build_model, f"{prefix}_PAD", **kwargs),
                               to_static, lambda model, x, kappa=kappa: partition(model, kappa, x[:4])))
    return [Group("padnet", prefix, 32 if size == "tiny" else 224, "static network",
                  _eval(build_model, static, **kwargs), dynamic)]


GROUPS: dict[str, Callable[[str], list[Group]]] = {
    "adn": adn_groups, "dsnet": dsnet_groups, "jeidnn": jeidnn_groups, "dyt": dyt_groups, "padnet": padnet_groups}
