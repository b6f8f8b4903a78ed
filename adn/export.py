"""Static exports of ADN sub-networks: one skip configuration as a plain torchvision network.

An ADN skip configuration is a fixed network (paper Sec. 3: the depth is chosen from outside, nothing depends on
the input): the skippable blocks of a skipped stage are gone and the mandatory layers of that stage use their
skip-aware norms. :func:`to_static` builds that network as torchvision's own class with a smaller depth and
copies the tensors into it, so a ResNet-ADN base-net becomes ``torchvision.models.ResNet(Bottleneck, [2, 2, 3,
2])``, a MobileNetV2-ADN configuration a ``MobileNetV2`` whose inverted-residual setting has fewer blocks per
stage, a Swin(-V2)-ADN one a ``SwinTransformer`` with fewer blocks per stage, a ViT-ADN one a
``VisionTransformer`` with fewer layers. Their state dicts load into those classes built with the same depths.

Where torchvision has no class for the architecture the export is still a torchvision class, with the module
that differs swapped in: the ResNet-D shortcut of ``resnet50vd`` / ``resnet101vd`` (average pool, then a stride-1
1x1 convolution), and the 3x3 stem and width of the proxy's ``resnet_adn_cifar``.

Which layers run, and with which norms, is read off one probe forward of the ADN model in that configuration
(forward pre-hooks record the ``skip`` flag every block and norm-switching layer receives), so the export follows
the model's own forward logic: the skippable blocks it omits, the flag each MobileNetV2 outer layer and each Swin
patch merging follows. The tensors are then paired in state-dict order with the torchvision model's, each pair
checked for shape and parameter name.
"""

from __future__ import annotations

import copy

import torch
import torchvision
from torch import nn
from torchvision.models.resnet import Bottleneck as TorchvisionBottleneck

from adn.models.convert import is_skip_norm_key
from adn.models.mobilenetv2 import MobileNetV2ADN
from adn.models.resnet import ResNetADN
from adn.models.skip import parse_skip_cfg
from adn.models.swin_transformer import SwinTransformerADN
from adn.models.vision_transformer import VisionTransformerADN
from common.configurations import ConfigurationError, check_exportable, fold_batchnorm

__all__ = ["to_static"]


def _skip_twin(key: str) -> str:
    """``layer1.0.bn1.weight`` -> ``layer1.0.bn1_skip.weight`` (the skip-aware norm standing in for that norm);
    a top-level entry (ViT's ``class_token``) has none."""
    owner, _, name = key.rpartition(".")
    return f"{owner}_skip.{name}" if owner else ""


def _probe_input(model: nn.Module) -> torch.Tensor:
    size = model.image_size if isinstance(model, VisionTransformerADN) else 32
    param = next(model.parameters())
    return torch.zeros(1, 3, size, size, dtype=param.dtype, device=param.device)


def _flags_of_units(model: nn.Module, cfg: tuple[bool, ...]) -> dict[str, bool]:
    """The ``skip`` flag every block / norm-switching layer ran with in ``cfg``; a layer that did not run is
    absent. One probe forward with pre-hooks (every such layer is called as ``layer(x, skip)``)."""
    flags: dict[str, bool] = {}
    hooks = [module.register_forward_pre_hook(lambda mod, args, name=name: flags.__setitem__(name, bool(args[1])))
             for name, module in model.named_modules()
             if hasattr(module, "skippable") or hasattr(module, "has_skip_norms")]
    try:
        with torch.no_grad():
            model(_probe_input(model), cfg)
    finally:
        for hook in hooks:
            hook.remove()
    return flags


def _executed_tensors(model: nn.Module, cfg: tuple[bool, ...]) -> list[tuple[str, torch.Tensor]]:
    """The state-dict entries configuration ``cfg`` uses, in state-dict order: entries of layers that do not run
    are left out, and a norm in skip mode contributes its ``*_skip`` twin's tensors at its own position."""
    flags = _flags_of_units(model, cfg)
    units = {name for name, module in model.named_modules()
             if hasattr(module, "skippable") or hasattr(module, "has_skip_norms")}
    state = model.state_dict()
    kept = []
    for key, value in state.items():
        if is_skip_norm_key(key):
            continue
        enclosing = [u for u in units if key.startswith(u + ".")]
        if any(u not in flags for u in enclosing):  # inside a layer that did not run
            continue
        innermost = max(enclosing, key=len, default=None)
        twin = _skip_twin(key)
        use_twin = innermost is not None and flags[innermost] and twin in state
        kept.append((twin if use_twin else key, state[twin] if use_twin else value))
    return kept


def _load_in_order(static: nn.Module, tensors: list[tuple[str, torch.Tensor]]) -> nn.Module:
    """Copy ``tensors`` into ``static``'s state dict entry by entry (same order, shapes and parameter names)."""
    target = static.state_dict()
    if len(target) != len(tensors):
        raise RuntimeError(f"the static {type(static).__name__} has {len(target)} state-dict entries but the "
                           f"configuration uses {len(tensors)}")
    state = {}
    for (key, value), (ours, tensor) in zip(target.items(), tensors, strict=True):
        if key.rsplit(".", 1)[-1] != ours.rsplit(".", 1)[-1] or value.shape != tensor.shape:
            raise RuntimeError(f"cannot pair '{ours}' {list(tensor.shape)} with '{key}' {list(value.shape)}")
        state[key] = tensor.detach().clone()
    static.load_state_dict(state, strict=True)
    return static


def _kept_blocks(stage: nn.Module, skip: bool) -> list[nn.Module]:
    return [block for block in stage if not (skip and block.skippable)]


def _resnet(model: ResNetADN, cfg: tuple[bool, ...]) -> nn.Module:
    """A torchvision ``ResNet`` with the kept Bottlenecks of every stage (stem, shortcut and width as in
    ``model``)."""
    stages = [_kept_blocks(stage, skip) for stage, skip in zip(model.stages, cfg, strict=True)]
    static = torchvision.models.ResNet(TorchvisionBottleneck, [len(blocks) for blocks in stages],
                                       num_classes=model.fc.out_features)
    static.conv1, static.bn1, static.maxpool = (copy.deepcopy(m) for m in (model.conv1, model.bn1, model.maxpool))
    for i, blocks in enumerate(stages):
        setattr(static, f"layer{i + 1}", nn.Sequential(*(
            TorchvisionBottleneck(b.conv1.in_channels, b.bn1.num_features, b.stride, copy.deepcopy(b.downsample))
            for b in blocks)))
    static.fc = copy.deepcopy(model.fc)
    return static


def _mobilenet_v2(model: MobileNetV2ADN, cfg: tuple[bool, ...]) -> nn.Module:
    """A torchvision ``MobileNetV2`` whose inverted-residual setting keeps the blocks that run."""
    setting, stage = [], 0
    for (t, c, n, s), module in zip(model.arch["inverted_residual_setting"], model.features[1:-1], strict=True):
        if n >= 2:
            n = len(_kept_blocks(module, cfg[stage]))
            stage += 1
        setting.append([t, c, n, s])
    return torchvision.models.MobileNetV2(num_classes=model.classifier[1].out_features,
                                          width_mult=model.arch["width_mult"], inverted_residual_setting=setting,
                                          dropout=model.arch["dropout"])


def _swin(model: SwinTransformerADN, cfg: tuple[bool, ...]) -> nn.Module:
    """A torchvision ``SwinTransformer`` (V1 or V2 blocks) with the kept blocks of every stage: the mandatory ones
    come first in each stage, so the kept blocks keep their (shifted-)window pattern."""
    arch = model.arch
    depths = [len(_kept_blocks(model.features[2 * i], skip)) for i, skip in enumerate(cfg)]
    swin = torchvision.models.swin_transformer
    block, merge = ((swin.SwinTransformerBlock, swin.PatchMerging) if arch["version"] == 1
                    else (swin.SwinTransformerBlockV2, swin.PatchMergingV2))
    return swin.SwinTransformer(patch_size=[arch["patch_size"]] * 2, embed_dim=arch["embed_dim"], depths=depths,
                                num_heads=arch["num_heads"], window_size=[arch["window_size"]] * 2,
                                mlp_ratio=arch["mlp_ratio"], stochastic_depth_prob=0.0,
                                num_classes=model.head.out_features, block=block, downsample_layer=merge)


def _vit(model: VisionTransformerADN, cfg: tuple[bool, ...]) -> nn.Module:
    """A torchvision ``VisionTransformer`` with the kept encoder blocks, renumbered ``encoder_layer_0..``."""
    layers = model.encoder.layers
    kept = [block for i, block in enumerate(layers)
            if not (cfg[i // model.encoder.blocks_per_stage] and block.skippable)]
    first = layers[0]
    return torchvision.models.VisionTransformer(
        image_size=model.image_size, patch_size=model.patch_size, num_layers=len(kept),
        num_heads=first.num_heads, hidden_dim=model.hidden_dim, mlp_dim=first.mlp[0].out_features,
        num_classes=model.heads.head.out_features)


BUILDERS = ((ResNetADN, _resnet), (MobileNetV2ADN, _mobilenet_v2), (SwinTransformerADN, _swin),
            (VisionTransformerADN, _vit))


def to_static(model: nn.Module, configuration: str, *, fold_bn: bool = False) -> nn.Module:
    """Skip configuration ``configuration`` (e.g. ``"TTTT"``) of the ADN ``model`` as a plain torchvision network
    in evaluation mode (module docstring); ``model`` is not modified. ``fold_bn`` folds every BatchNorm into the
    convolution before it (``common.configurations.fold_batchnorm``). Every configuration of an ADN model is
    static, so every one can be exported."""
    check_exportable(model, configuration)
    builder = next((build for cls, build in BUILDERS if isinstance(model, cls)), None)
    if builder is None:
        raise ConfigurationError(f"no static export for {type(model).__name__}; ADN exports ResNet, MobileNetV2, "
                                 "Swin and ViT models")
    cfg = parse_skip_cfg(configuration, model.num_skippable_stages)
    with torch.device("meta"):  # no initialisation: every entry is copied from the model below
        static = builder(model, cfg)
    static = static.to_empty(device=next(model.parameters()).device)
    static = _load_in_order(static, _executed_tensors(model, cfg)).eval()
    return fold_batchnorm(static) if fold_bn else static
