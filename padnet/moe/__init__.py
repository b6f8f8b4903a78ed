"""PAD-Net on the MoE side: BERT with Mixture-of-Experts FFNs and partially dynamic PAD-MoE experts (Sec. 4.2)."""

from padnet.moe.layers import MoE, PadMoE, cv_squared
from padnet.moe.modeling import moe_aux_loss, moe_layers, moefy

__all__ = ["MoE", "PadMoE", "cv_squared", "moe_aux_loss", "moe_layers", "moefy"]
