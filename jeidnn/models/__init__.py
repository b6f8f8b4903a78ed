"""JEI-DNN models by name: ``create_model("t2t_vit_7", num_classes=10, img_size=224, gate="unc")`` (spec Sec. c)."""

from __future__ import annotations

from collections.abc import Callable

from jeidnn.models.gates import GATE_TYPES, IdentityGate, LearnableUncGate, build_gate, uncertainty_features
from jeidnn.models.t2t_vit import T2TViT, sinusoid_table, t2t_vit_7, t2t_vit_14

MODELS: dict[str, Callable[..., T2TViT]] = {
    "t2t_vit_7": t2t_vit_7,
    "t2t_vit_14": t2t_vit_14,
}


def create_model(arch: str, num_classes: int = 10, img_size: int = 224, drop_path_rate: float = 0.1,
                 gate: str = "unc", **kwargs) -> T2TViT:
    """Build a T2T-ViT with its ICs and gates, as ``train_dynn.py`` does (drop-path 0.1, dropout 0).

    ``ValueError`` lists the valid names of ``arch`` and ``gate``.
    """
    if arch not in MODELS:
        raise ValueError(f"unknown JEI-DNN model {arch!r}; choose one of: {', '.join(MODELS)}")
    if gate not in GATE_TYPES:
        raise ValueError(f"unknown gate {gate!r}; choose one of: {', '.join(GATE_TYPES)}")
    return MODELS[arch](num_classes=num_classes, img_size=img_size, drop_path_rate=drop_path_rate, gate=gate,
                        **kwargs)


__all__ = ["GATE_TYPES", "MODELS", "IdentityGate", "LearnableUncGate", "T2TViT", "build_gate", "create_model",
           "sinusoid_table", "t2t_vit_7", "t2t_vit_14", "uncertainty_features"]
