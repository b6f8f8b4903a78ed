"""A JEI-DNN exit as a static network: the T2T-ViT backbone cut after the exit's block, with its classifier.

Forcing every sample out at exit ``l`` (configuration ``exit l``) computes the T2T module, blocks ``0..l``, the shared
final norm on the CLS token and the intermediate classifier ``l`` (Sec. 3.1): an ordinary T2T-ViT of depth
``l + 1`` whose head is that classifier. :func:`to_static` builds it as a :class:`StaticT2TViT` (no gates, no other
exits) and copies the weights; ``final`` is the whole backbone with the final head, the static full model.
``gated`` sends each sample to its own exit and has no static form.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from common.configurations import ConfigurationError, check_exportable
from jeidnn.models.t2t_vit import Block, T2TModule, T2TViT, sinusoid_table

__all__ = ["StaticT2TViT", "exportable", "to_static"]


class StaticT2TViT(nn.Module):
    """The plain T2T-ViT (Yuan et al., ICCV 2021) of ``depth`` blocks with one head: ``tokens_to_token``,
    ``cls_token``, ``pos_embed``, ``blocks``, ``norm``, ``head`` (the JEI-DNN model's key names)."""

    def __init__(self, img_size: int = 224, in_chans: int = 3, num_classes: int = 1000, embed_dim: int = 768,
                 depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0, qkv_bias: bool = False,
                 token_dim: int = 64):
        super().__init__()
        self.tokens_to_token = T2TModule(img_size, in_chans, embed_dim, token_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(sinusoid_table(self.tokens_to_token.num_patches + 1, embed_dim),
                                      requires_grad=False)
        self.blocks = nn.Sequential(*[Block(embed_dim, num_heads, mlp_ratio, qkv_bias) for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.tokens_to_token(x)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1) + self.pos_embed
        return self.head(self.norm(self.blocks(x)[:, 0]))


def exportable(model: T2TViT) -> list[str]:
    """The configurations with one static form: the forced exits and ``final``."""
    return [name for name in model.configurations() if name != "gated"]


def to_static(model: T2TViT, configuration: str, *, fold_bn: bool = False) -> StaticT2TViT:
    """Forced exit ``configuration`` (``exit l`` or ``final``) of ``model`` as a :class:`StaticT2TViT` of depth
    ``l + 1`` holding copies of its weights. T2T-ViT has no batch norm, so ``fold_bn`` changes nothing."""
    check_exportable(model, configuration)
    if configuration not in exportable(model):
        raise ConfigurationError(f"JEI-DNN configuration {configuration!r} lets the gates pick each sample's exit "
                                 f"(Sec. 3.3) and has no static form; export one of {', '.join(exportable(model))}")
    level = model.num_exits if configuration == "final" else int(configuration.removeprefix("exit "))
    static = StaticT2TViT(model.img_size, model.in_chans, model.num_classes, model.embed_dim, level + 1,
                          model.num_heads, model.mlp_ratio, model.qkv_bias, model.token_dim)
    head = "head." if level == model.num_exits else f"intermediate_heads.{level}."
    keep = ("tokens_to_token.", "cls_token", "pos_embed", "norm.", *(f"blocks.{i}." for i in range(level + 1)))
    state = {}
    for key, value in model.state_dict().items():
        if key.startswith(head):
            state["head." + key.removeprefix(head)] = value
        elif key.startswith(keep):
            state[key] = value
    static.load_state_dict(state)  # strict: every weight of the export comes from the model
    return static.to(model.head.weight.device).eval()
