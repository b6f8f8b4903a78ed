"""FLOPs of ADN sub-networks: the count the original README printed, and the MACs that really execute.

The original repository (``wchkang/depth``) ships no FLOPs counter, and the GFLOPs of its README model zoo
come from three different third-party counters, one per architecture (spec ``adn.md`` Sec. e, checked against
every configuration in ``../shared/reference/adn/manifest_*_adn.json``). All three count multiply-adds
("1 MAC = 1 FLOP") but differ in what else they include:

===============  ====================================================  =======================================
model            README counter                                        what it counts besides conv / linear
===============  ====================================================  =======================================
ResNet-50        fvcore ``FlopCountAnalysis``                          BN (1 per element), adaptive avg-pool
MobileNetV2      ptflops ``get_model_complexity_info`` (pytorch)       BN, ReLU6, pooling (1 per element)
Swin-T           ``torch.utils.flop_counter`` (= :func:`count_macs`)   matmuls only, no norms
ViT-B/16         fvcore + a handle for ``scaled_dot_product_attention``  LN; attention ``QK^T`` and ``AV``
===============  ====================================================  =======================================

:func:`count_readme_flops` reproduces that per-model convention, so our numbers can be compared with the
README's to its printed precision. :func:`count_executed_macs` is the repository-wide unit (``common.flops``):
the multiply-adds of the convolutions, matrix products and attention that actually execute, which is what
shows that a skipped sub-path is not run. :func:`active_params` counts the weights a configuration uses.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from math import prod
from typing import Any

import torch
from torch import nn

from common.flops import count_macs


@dataclass(frozen=True)
class Convention:
    """How the original README counted one model family's GFLOPs."""

    counter: str  # "fvcore", "ptflops" or "torch"
    description: str
    manifest_field: str  # the manifests' field holding this counter's figure, in G


FVCORE = Convention("fvcore", "fvcore FlopCountAnalysis + SDPA handle (conv, linear, matmul, attention "
                    "QK^T/AV, BN/LN and adaptive avg-pool per element; 1 MAC = 1 flop)", "fvcore_GFLOPs")
PTFLOPS = Convention("ptflops", "ptflops get_model_complexity_info, pytorch backend (conv/linear MACs plus "
                     "BN, ReLU6 and pooling per element)", "ptflops_GMac")
TORCH = Convention("torch", "torch.utils.flop_counter.FlopCounterMode / 2 (conv, linear and matmul MACs only)",
                   "torch_flop_counter_GMACs")

README_CONVENTIONS: dict[str, Convention] = {
    "resnet50": FVCORE,
    "resnet101": FVCORE,  # not in the README; the ResNet family's counter
    "resnet50vd": FVCORE,  # not in the README (the original's HEAD); the ResNet family's counter
    "resnet101vd": FVCORE,
    "resnet_adn_cifar": FVCORE,  # the proxy model; the ResNet family's counter
    "mobilenet_v2": PTFLOPS,
    "swin_t": TORCH,
    "swin_v2_t": TORCH,  # in the original but not in its README; the Swin family's counter
    "vit_b_16": FVCORE,
    "vit_b_32": FVCORE,  # not in the README; the ViT family's counter
}


def readme_convention(model_name: str) -> Convention:
    """The counter the README used for ``model_name`` (spec Sec. e): fvcore for ResNet and ViT (ViT with the
    attention products counted), ptflops for MobileNetV2, the torch counter's MACs for Swin-T."""
    if model_name not in README_CONVENTIONS:
        raise ValueError(f"no README FLOPs convention for model '{model_name}'; known: {', '.join(README_CONVENTIONS)}")
    return README_CONVENTIONS[model_name]


class _WithSkipCfg(nn.Module):
    """``model`` with its skip configuration bound, so that counters that call ``module(x)`` can run it."""

    def __init__(self, model: nn.Module, skip_cfg: Any):
        super().__init__()
        self.model = model
        self.skip_cfg = skip_cfg

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x, skip_cfg=self.skip_cfg)


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Counts and parameter usage are those of inference (the manifests' setting); restore the mode after."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def _example_input(model: nn.Module, img_size: int, batch_size: int = 1) -> torch.Tensor:
    param = next(model.parameters())
    gen = torch.Generator().manual_seed(0)
    return torch.randn(batch_size, 3, img_size, img_size, generator=gen, dtype=param.dtype).to(param.device)


def _sdpa_fvcore_handle(inputs: list[Any], outputs: list[Any]) -> int:
    """fvcore handle for ``aten::scaled_dot_product_attention``: the two products ``Q K^T`` and ``A V``,
    ``B*H*L*S*(E + Ev)`` MACs (= 2*B*H*L*S*d for ViT), which plain fvcore leaves uncounted."""
    from fvcore.nn.jit_handles import get_shape

    q, k, v = (get_shape(value) for value in inputs[:3])
    batch = prod(q[:-2])
    return batch * q[-2] * k[-2] * (q[-1] + v[-1])


def count_fvcore_flops(model: nn.Module, skip_cfg: Any, img_size: int = 224) -> int:
    """fvcore ``FlopCountAnalysis`` total at batch 1, eval mode, with attention counted (README convention of
    ResNet-50 and ViT-B/16).

    The trace runs with autograd enabled: under ``no_grad`` an eval-mode ``nn.MultiheadAttention`` takes its
    fused inference path (``aten::_native_multi_head_attention``), which fvcore cannot count at all, while with
    grad it traces to linear layers and ``aten::scaled_dot_product_attention``, as the reference run did.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fvcore.nn scripts a focal loss at import (deprecated torch.jit.script)
        from fvcore.nn import FlopCountAnalysis

    with _eval_mode(model), torch.enable_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings; the skip pattern is fixed for a trace
        analysis = FlopCountAnalysis(_WithSkipCfg(model, skip_cfg), (_example_input(model, img_size),))
        analysis.set_op_handle("aten::scaled_dot_product_attention", _sdpa_fvcore_handle)
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        return int(analysis.total())


def count_ptflops_macs(model: nn.Module, skip_cfg: Any, img_size: int = 224) -> int:
    """ptflops ``get_model_complexity_info`` total (pytorch backend) at batch 1, eval mode (README convention of
    MobileNetV2). The model is called through a small wrapper that binds ``skip_cfg``."""
    from ptflops import get_model_complexity_info

    with _eval_mode(model):
        macs, _ = get_model_complexity_info(_WithSkipCfg(model, skip_cfg), (3, img_size, img_size),
                                            as_strings=False, print_per_layer_stat=False, verbose=False,
                                            backend="pytorch")
    if macs is None:  # ptflops prints the exception and returns None
        raise RuntimeError(f"ptflops could not count {type(model).__name__} with skip_cfg {skip_cfg!r}")
    return int(macs)


def count_executed_macs(model: nn.Module, skip_cfg: Any, img_size: int = 224, batch_size: int = 1) -> int:
    """MACs per image that execute in ``skip_cfg`` (``common.flops.count_macs``: convolutions, matrix products
    and attention, no element-wise operations), eval mode.

    This is the repository's own unit, and the README convention of Swin-T. A skipped sub-path is not run, so
    it costs nothing here; the count falls strictly with every stage skipped.
    """
    with _eval_mode(model):
        total = count_macs(model, _example_input(model, img_size, batch_size), skip_cfg=skip_cfg).total
    return total // batch_size


def count_readme_flops(model: nn.Module, model_name: str, skip_cfg: Any, img_size: int = 224) -> int:
    """The GFLOPs figure of the original README model zoo, unrounded, for ``skip_cfg`` (see the module table
    and :func:`readme_convention`): fvcore (+ attention) for ResNet / ViT, ptflops for MobileNetV2, the torch
    counter's MACs for Swin-T. Divide by 1e9 and round to 2 decimals to compare with the README."""
    counter = readme_convention(model_name).counter
    if counter == "fvcore":
        return count_fvcore_flops(model, skip_cfg, img_size)
    if counter == "ptflops":
        return count_ptflops_macs(model, skip_cfg, img_size)
    return count_executed_macs(model, skip_cfg, img_size)


def active_params(model: nn.Module, skip_cfg: Any, img_size: int = 224) -> int:
    """Parameters used by ``skip_cfg``: those that receive a gradient from ``output.pow(2).sum()`` (the manifests'
    ``active_params``), eval mode, batch 1.

    The super-net leaves out the ``*_skip`` norms; the base-net leaves out the skippable blocks and the normal
    norms of the mandatory blocks. A parameter whose gradient is numerically zero (e.g. behind ViT's zero-init
    head) still counts: it is on the graph.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    with _eval_mode(model), torch.enable_grad():
        output = model(_example_input(model, img_size), skip_cfg=skip_cfg)
        grads = torch.autograd.grad(output.pow(2).sum(), params, allow_unused=True)
    return sum(p.numel() for p, g in zip(params, grads, strict=True) if g is not None)


def flops_table(model_name: str, img_size: int = 224, with_params: bool = True) -> list[dict[str, Any]]:
    """Every skip configuration of ``model_name`` (built with seed 0): README-convention FLOPs, executed MACs and,
    optionally, active parameters; super-net first."""
    from adn.models import create_model

    torch.manual_seed(0)
    model = create_model(model_name).eval()
    rows = []
    for cfg in model.configurations():
        row = {"skip_cfg": cfg, "readme_flops": count_readme_flops(model, model_name, cfg, img_size),
               "executed_macs": count_executed_macs(model, cfg, img_size)}
        if with_params:
            row["active_params"] = active_params(model, cfg, img_size)
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> None:
    """``python -m adn.flops --model resnet50``: print the FLOPs of every skip configuration as a Markdown table."""
    import argparse

    parser = argparse.ArgumentParser(description="FLOPs of every skip configuration of an ADN model: the README "
                                     "counter's GFLOPs, the executed GMACs and the active parameters.")
    parser.add_argument("--model", required=True, choices=sorted(README_CONVENTIONS), help="ADN model name")
    parser.add_argument("--img-size", type=int, default=224, help="input resolution (batch 1)")
    parser.add_argument("--no-params", action="store_true", help="skip the active-parameter count (a backward each)")
    args = parser.parse_args(argv)
    convention = readme_convention(args.model)
    print(f"{args.model}, 1x3x{args.img_size}x{args.img_size}; README counter: {convention.description}")
    columns = ["skip-cfg", "README-counter GFLOPs", "executed GMACs"] + ([] if args.no_params else ["active params"])
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in flops_table(args.model, args.img_size, with_params=not args.no_params):
        params = "" if args.no_params else f" {row['active_params']:,} |"
        print(f"| {row['skip_cfg']} | {row['readme_flops'] / 1e9:.4f} | {row['executed_macs'] / 1e9:.4f} |{params}")


if __name__ == "__main__":
    main()
