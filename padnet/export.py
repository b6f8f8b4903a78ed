"""Static export of the PAD-Net DY-Conv models (PAD-Net Sec. 3.1; ``padnet/README.md``, "Configurations and
static export").

:func:`to_static` turns a DY-Conv or PAD model (``padnet.dyconv.models``) at one of its configurations into a
``torch.fx.GraphModule`` of plain modules: the stem, BatchNorms, activations, pooling and classifier are copies of
the model's own; every dynamic layer becomes its :meth:`~padnet.dyconv.layers.DynamicConvBase.static_form`, a
:class:`~padnet.dyconv.layers.PartitionedConv2d` holding the static part of the partition as one constant kernel
(``lambda_s Theta_bar``), the ``K`` dynamic factors ``lambda_d Theta_k`` at the dynamic positions only and the
attention with the temperature folded in, or a plain ``nn.Conv2d`` where no position is dynamic. The dynamic part
stays per-sample by nature (a kernel mixed from the input's attention); this is its minimal form. Both PAD
configurations, ``"training"`` and ``"deployed"``, compute the same function and export to the same module.
"""

from __future__ import annotations

import copy
import operator

import torch
from torch import nn

from common.configurations import check_exportable, fold_batchnorm
from padnet.dyconv.layers import DynamicConvBase
from padnet.dyconv.odconv import ODConv2d

_DYNAMIC_LAYERS = (DynamicConvBase, ODConv2d)  # every layer with a static_form (ODConv: padnet/dyconv/odconv.py)

__all__ = ["to_static"]


class _DynamicLayerTracer(torch.fx.Tracer):
    """Symbolic tracing that keeps every dynamic layer as one call (it is replaced by its static form)."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, _DYNAMIC_LAYERS) or super().is_leaf_module(m, module_qualified_name)


def to_static(model: nn.Module, configuration: str, *, fold_bn: bool = False) -> nn.Module:
    """``model`` (eval mode) at ``configuration`` as a plain inference module with the same outputs (module
    docstring); the model is not changed and shares no tensor with the result. ``fold_bn`` folds every BatchNorm
    that follows a plain convolution into it (:func:`common.configurations.fold_batchnorm`)."""
    check_exportable(model, configuration)
    graph = _DynamicLayerTracer().trace(model)
    modules = dict(model.named_modules())
    root: dict[str, object] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            module = modules[node.target]
            root[node.target] = module.static_form() if isinstance(module, _DYNAMIC_LAYERS) else copy.deepcopy(module)
        elif node.op == "get_attr":
            root[node.target] = operator.attrgetter(node.target)(model).detach().clone()
    exported = torch.fx.GraphModule(root, graph, class_name=f"Static{type(model).__name__}").eval()
    return fold_batchnorm(exported) if fold_bn else exported
