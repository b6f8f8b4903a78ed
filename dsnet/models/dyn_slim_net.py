"""The DS-Net supernet ``slimmable_mbnet_v1_bn_uniform`` (paper Sec. 3; spec Sec. 1) and its modes.

Modes (spec Sec. 1.1): ``largest`` (every stage at its widest; the only mode with dropout), ``smallest``,
``uniform`` with ``choice`` c (stem and blocks.0-2 at their slimmest, blocks.3/4 at index c: the 14 evaluated
sub-networks) and ``dynamic`` (the gate in ``blocks.3.first_block`` picks, per sample, one route of the routing
space for blocks.3 and blocks.4).

Dynamic inference has two executions with the same result: with gradients enabled (Stage II training) the
original's masked full-width path, through which the straight-through one-hot carries gradients to the gate;
without gradients each group of samples sharing a route runs its *sliced* sub-network, so the computation
really shrinks (what the MAdds of a dynamic model promise).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from itertools import islice

import torch
import torch.nn.functional as F
from torch import nn

from common.configurations import check_configuration
from dsnet.models.blocks import DSStage, MultiHeadGate
from dsnet.models.ops import DSAdaptiveAvgPool2d, DSBatchNorm2d, DSConv2d, DSLinear

__all__ = ["CHOICES_CFGS", "MICRO_BATCH_PIXELS", "MODES", "DSNet", "micro_batched"]

MODES = ("largest", "smallest", "uniform", "dynamic")

# per row: out widths (choice 0 ... last), layers, kernel, first stride, block type, has gate (spec Sec. 1)
CHOICES_CFGS = {
    "slimmable_mbnet_v1_bn_uniform": [
        [[16, 24], 1, 3, 2],
        [[32, 88], 1, 3, 1, "ds", False],
        [[48, 168], 2, 3, 2, "ds", False],
        [[96, 264], 2, 3, 2, "ds", False],
        [list(range(224, 640 + 1, 32)), 6, 3, 2, "ds", True],
        [list(range(736, 1152 + 1, 32)), 2, 3, 2, "ds", False],
    ],
    # the same shape at about 1/8 of the width, for the proxy runs on 32x32 digits here
    "slimmable_mbnet_v1_bn_uniform_tiny": [
        [[8, 12], 1, 3, 1],
        [[8, 16], 1, 3, 1, "ds", False],
        [[12, 24], 2, 3, 2, "ds", False],
        [[16, 32], 2, 3, 2, "ds", False],
        [list(range(24, 76 + 1, 4)), 3, 3, 2, "ds", True],
        [list(range(48, 152 + 1, 8)), 2, 3, 2, "ds", False],
    ],
}


# input pixels per micro-batch of the high-resolution stages in evaluation: 4 images at 224 px (forward_trunk)
MICRO_BATCH_PIXELS = 4 * 224 * 224


def micro_batched(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, pixels: int) -> torch.Tensor:
    """``fn(x)`` computed on micro-batches of images ``x`` ``[B, C, H, W]`` of about ``pixels`` input pixels
    (``pixels // (H W)`` images, at least 1; ``pixels`` 0: the whole batch at once), concatenated.

    Only for per-sample computations (batch norm in evaluation mode). The stem and first stages of the network
    work at 112 to 28 px: at batch 32 their activations (up to 141 MB at the largest widths) overflow the CPU's
    caches, and their memory-bound operators (depthwise convolutions, batch norm, Swish, the SE product) then run
    at the speed of main memory; in micro-batches of 4 images at 224 px they stay in cache. Small images (the
    32 px proxies) fit as a whole batch and are not split (splitting only adds calls).
    """
    size = max(1, pixels // (x.size(-2) * x.size(-1)))
    if pixels <= 0 or x.size(0) <= size:
        return fn(x)
    return torch.cat([fn(part) for part in x.split(size)])


def init_weights(model: nn.Module) -> None:
    """timm's "goog" EfficientNet init (spec Sec. 1): conv N(0, sqrt(2 / fan_out)) with fan_out = k*k*out/groups,
    linear U(+-1/sqrt(out)), zero biases; BN keeps weight 1, bias 0."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
            nn.init.normal_(m.weight, 0, math.sqrt(2.0 / fan_out))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            bound = 1.0 / math.sqrt(m.weight.size(0))
            nn.init.uniform_(m.weight, -bound, bound)
            nn.init.zeros_(m.bias)


class DSNet(nn.Module):
    """Dynamic slimmable MobileNetV1 supernet; state-dict keys as the original's (838 for the full model)."""

    def __init__(self, choices_cfg: Sequence[Sequence], num_classes: int = 1000, in_chans: int = 3,
                 drop_rate: float = 0.0, se_ratio: float = 0.25, act_layer: type[nn.Module] = nn.SiLU):
        super().__init__()
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.choices_cfg = [list(row) for row in choices_cfg]
        self.se_ratio = se_ratio
        stem_list, _, kernel_size, stride = choices_cfg[0]
        self.conv_stem = DSConv2d([in_chans], stem_list, kernel_size, stride=stride, bias=False)
        self.bn1 = DSBatchNorm2d(stem_list)
        self.act1 = act_layer(inplace=True)
        self.blocks = nn.ModuleList()
        in_list = stem_list
        for out_list, layer_num, kernel_size, stride, _block_type, has_gate in choices_cfg[1:]:
            self.blocks.append(DSStage(in_list, out_list, layer_num, kernel_size, stride, act_layer, se_ratio,
                                       has_gate))
            in_list = out_list
        self.num_features = in_list
        self.global_pool = DSAdaptiveAvgPool2d(1, in_list)
        self.classifier = DSLinear(in_list, num_classes)
        with torch.no_grad():
            init_weights(self)
        self.gate_stage = next(i for i, stage in enumerate(self.blocks) if stage.first_block.has_gate)
        self.num_choices = len(self.blocks[self.gate_stage].first_block.out_channels_list)
        self.routing_space = tuple(range(4))
        self.gate_noise = True
        self.micro_batch_pixels = MICRO_BATCH_PIXELS
        self.set_mode("largest")

    # ---------------------------------------------------------------------------------------------- modes
    def set_mode(self, mode: str, choice: int | None = None) -> None:
        """Select a mode (module docstring). ``uniform`` without ``choice`` draws ``random.randint(1, 13)``."""
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
        last = self.num_choices - 1
        if mode == "uniform":
            choice = random.randint(1, last) if choice is None else choice
            if not 0 <= choice <= last:
                raise ValueError(f"uniform choice {choice} is outside 0..{last}")
        self.mode, self.choice = mode, choice
        head = {"largest": -1, "smallest": 0, "uniform": choice, "dynamic": None}[mode]
        trunk = -1 if mode == "largest" else 0
        self.stage_choices = [trunk if i < self.gate_stage else head for i in range(len(self.blocks))]
        self.stem_choice = trunk

    def configurations(self) -> list[str]:
        """The evaluated sub-networks by name, ``'0'`` ... ``'13'`` (the README table), then ``largest`` (the
        whole supernet) and ``dynamic`` (the gate routes each image)."""
        return [str(c) for c in range(self.num_choices)] + ["largest", "dynamic"]

    def set_configuration(self, name: str) -> None:
        """A configuration by name: ``'0'`` ... ``'13'`` = ``uniform`` with that choice, ``largest`` or
        ``dynamic`` with the gate's argmax routes (``gate_noise`` off: deterministic; the original's evaluation
        adds Gumbel noise, ``--gate_eval_noise``); an unknown name is a ``ConfigurationError``."""
        check_configuration(self, name)
        if name.isdigit():
            self.set_mode("uniform", int(name))
            return
        self.set_mode(name)
        if name == "dynamic":
            self.gate_noise = False

    def set_routing_space(self, choices: Sequence[int]) -> None:
        """The sub-networks the gate's four routes select (Stage II; spec Sec. 3). The released model uses the
        four slimmest, ``(0, 1, 2, 3)`` = ``start_chn_idx`` 0; any four choices work here."""
        choices = tuple(int(c) for c in choices)
        routes = self.blocks[self.gate_stage].first_block.gate.gate[0].out_channels
        if len(choices) != routes or any(not 0 <= c < self.num_choices for c in choices):
            raise ValueError(f"the routing space needs {routes} choices in 0..{self.num_choices - 1}, got "
                             f"{list(choices)}")
        self.routing_space = choices

    def widths(self) -> list[int]:
        """Widths of the stem and every stage in the current static mode (``eval_widths`` of the reference)."""
        if self.mode == "dynamic":
            raise ValueError("the dynamic mode has per-sample widths; see DSNet.route")
        stem = self.conv_stem.out_channels_list[self.stem_choice]
        stages = zip(self.blocks, self.stage_choices, strict=True)
        return [stem] + [stage.first_block.out_channels_list[c] for stage, c in stages]

    def get_gate(self) -> nn.ModuleList:
        """The slimming heads: the only parameters Stage II optimises."""
        return nn.ModuleList([m.gate for m in self.modules() if isinstance(m, MultiHeadGate) and m.has_gate])

    # -------------------------------------------------------------------------------------------- forward
    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.act1(self.bn1(self.conv_stem(x, self.conv_stem.out_channels_list[self.stem_choice])))

    def forward_trunk(self, x: torch.Tensor) -> torch.Tensor:
        """The stem and the stages before the gate stage (112 to 28 px), in evaluation mode in micro-batches of
        ``micro_batch_pixels`` input pixels (:func:`micro_batched`)."""
        def trunk(x: torch.Tensor) -> torch.Tensor:
            x = self.forward_stem(x)
            for stage, choice in zip(islice(self.blocks, self.gate_stage), self.stage_choices, strict=False):
                x = stage(x, choice)
            return x
        return micro_batched(trunk, x, 0 if self.training else self.micro_batch_pixels)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Static modes: every stage at its width."""
        x = self.forward_trunk(x)
        for stage, choice in zip(islice(self.blocks, self.gate_stage, None), self.stage_choices[self.gate_stage:],
                                 strict=True):
            x = stage(x, choice)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x).flatten(1)
        if pre_logits:
            return x
        if self.drop_rate > 0.0 and self.mode == "largest":
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "dynamic":
            return self.forward_dynamic(x)
        return self.forward_head(self.forward_features(x))

    def forward_dynamic(self, x: torch.Tensor) -> torch.Tensor:
        """Gate-routed forward (Sec. 3.2). Sets ``self.route``; masked with gradients, sliced per route without."""
        x = self.forward_trunk(x)
        gated = self.blocks[self.gate_stage].first_block
        x, x_reduced = gated.forward_pre_gate(x)
        self.route = route = gated.gate.route(x_reduced, self.routing_space, noise=self.gate_noise)
        if torch.is_grad_enabled():
            x = gated.forward_post_gate(x, route)
            x = self.blocks[self.gate_stage].forward_rest(x, route)
            for stage in islice(self.blocks, self.gate_stage + 1, None):
                x = stage(x, route)
            return self.forward_head(x)
        logits = x.new_empty(x.size(0), self.num_classes)
        for k, choice in enumerate(self.routing_space):
            rows = (route.index == k).nonzero().flatten()
            if rows.numel() == 0:
                continue
            y = gated.forward_post_gate(x[rows], gated.out_channels_list[choice])
            y = self.blocks[self.gate_stage].forward_rest(y, choice)
            for stage in islice(self.blocks, self.gate_stage + 1, None):
                y = stage(y, choice)
            logits[rows] = self.forward_head(y)
        return logits
