"""Reference outputs of the original ADN models that ``../shared/reference`` does not cover.

Run from a checkout of ``wchkang/depth`` at HEAD ``7a51ea1`` (its ``models`` package), with this repository
importable::

    cd depth && PYTHONPATH=. OMP_NUM_THREADS=1 python /path/to/tests/adn/data/make_original_reference.py OUT.pt

For ``swin_v2_t``, ``resnet50vd`` and ``resnet101vd`` it records the state-dict keys and shapes, the parameter
count, the skippable blocks, and the eval-mode outputs of every skip configuration on one 1x3x32x32 input, with
the weights of :func:`fill_state_dict` (seeded, so ``tests/adn/test_reference.py`` rebuilds them). The original
construction RNG is not used: its initialisation differs from ours, the filled state dict does not.
"""

from __future__ import annotations

import itertools
import math
import sys

import torch

MODELS = ("swin_v2_t", "resnet50vd", "resnet101vd")
SEED = 0


def fill_state_dict(state: dict[str, torch.Tensor], seed: int = SEED) -> dict[str, torch.Tensor]:
    """Seeded values for every parameter and BatchNorm statistic, in key order; other buffers (Swin's position
    indices and coordinate tables, ``num_batches_tracked``) are kept. Weights are scaled by 1/sqrt(fan-in) and
    norms stay near 1 so that the outputs of deep nets stay finite."""
    gen = torch.Generator().manual_seed(seed)
    filled = {}
    for key, value in state.items():
        name = key.rsplit(".", 1)[-1]
        noise = torch.randn(value.shape, generator=gen) if value.is_floating_point() else None
        if noise is None or name in ("relative_coords_table", "relative_position_index"):
            filled[key] = value.clone()
        elif name == "running_var":
            filled[key] = 1.0 + 0.2 * noise.abs()
        elif name == "logit_scale":
            filled[key] = math.log(10.0) + 0.1 * noise
        elif value.dim() >= 2:
            filled[key] = noise / math.sqrt(value[0].numel())
        elif name == "weight":
            filled[key] = 1.0 + 0.1 * noise
        else:  # biases, running means
            filled[key] = 0.1 * noise
    return filled


def main(path: str) -> None:
    import models  # the original's package

    gen = torch.Generator().manual_seed(SEED)
    x = torch.randn(1, 3, 32, 32, generator=gen)
    reference: dict = {"input": x}
    for name in MODELS:
        model = models.__dict__[name]()
        model.load_state_dict(fill_state_dict(model.state_dict()))
        model.eval()
        outputs = {}
        with torch.no_grad():
            for cfg in itertools.product((False, True), repeat=model.num_skippable_stages):
                outputs["".join("T" if f else "F" for f in cfg)] = model(x, list(cfg))
        reference[name] = {
            "state_dict": [[k, list(v.shape)] for k, v in model.state_dict().items()],
            "num_params": sum(p.numel() for p in model.parameters()),
            "skippable_blocks": [n for n, m in model.named_modules() if getattr(m, "skippable", False)],
            "outputs": outputs,
        }
    torch.save(reference, path)


if __name__ == "__main__":
    main(sys.argv[1])
