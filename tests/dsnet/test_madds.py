"""MAdds with the original's convention (spec Sec. 9): the 16 figures of manifest_madds.json, exactly."""

from __future__ import annotations

import json

import pytest
import torch

from dsnet.madds import dynamic_madds, executed_macs, madds, mode_widths
from dsnet.models import Route, create_model

README_M = [133, 153, 175, 200, 226, 255, 286, 319, 355, 393, 433, 475, 519, 565]


@pytest.fixture(scope="module")
def full():
    return create_model("slimmable_mbnet_v1_bn_uniform")


def _mode(row: dict) -> tuple[str, int | None]:
    name = row["mode"]
    return ("uniform", int(name.split("_")[1])) if name.startswith("uniform_") else (name, None)


def test_all_sixteen_rows_exact(full, reference_dir):
    rows = json.loads((reference_dir / "manifest_madds.json").read_text())["rows"]
    assert len(rows) == 16
    for row in rows:
        widths = mode_widths(full, *_mode(row))
        assert widths == row["widths[conv_stem,blocks0..4]"]
        assert madds(full, widths) == row["madds_add_flops"], row["mode"]
        assert madds(full, widths, include_pools=False) == row["of_which_conv_linear_macs"], row["mode"]
    assert madds(full, mode_widths(full, "largest")) == 819_883_136


def test_readme_values_round_to_the_table(full):
    ours = [madds(full, mode_widths(full, "uniform", c)) for c in range(14)]
    assert [round(m / 1e6) for m in ours] == README_M


@pytest.mark.parametrize("mode,choice", [("smallest", None), ("uniform", 6), ("largest", None)])
def test_executed_macs_equal_the_conv_linear_part(full, mode, choice):
    assert executed_macs(full, mode, choice) == madds(full, mode_widths(full, mode, choice), include_pools=False)


def _route(k: int, batch: int = 1, requires_grad: bool = False) -> Route:
    y_soft = torch.full((batch, 4), 0.1).requires_grad_(requires_grad)
    hard = torch.nn.functional.one_hot(torch.full((batch,), k), 4).float()
    st = hard - y_soft.detach() + y_soft
    return Route(st=st, index=torch.full((batch,), k), y_soft=y_soft, scores=y_soft, choices=(0, 1, 2, 3))


def test_dynamic_madds_is_the_routed_sub_network_plus_the_gate_head(full):
    for k in range(4):
        assert dynamic_madds(full, _route(k)).item() == madds(full, mode_widths(full, "uniform", k)) + 4 * 66


def test_dynamic_madds_original_depthwise_overcount(full):
    """Route 1 (blocks.3 at 256, blocks.4 at 768): the routed depthwise convs counted w * w / w_slimmest."""
    exact = dynamic_madds(full, _route(1)).item()
    original = dynamic_madds(full, _route(1), original_dw_groups=True).item()
    extra = 5 * (256 * 256 / 224 - 256) * 9 * 14 * 14 + (256 * 256 / 224 - 256) * 9 * 7 * 7 \
        + (768 * 768 / 736 - 768) * 9 * 7 * 7
    assert original - exact == pytest.approx(extra)
    assert original == pytest.approx(153_270_864, rel=1e-7)  # manifest: dynamic path, route 1


def test_dynamic_madds_is_differentiable(full):
    route = _route(2, batch=3, requires_grad=True)
    dynamic_madds(full, route).mean().backward()
    grad = route.y_soft.grad
    assert grad is not None and torch.all(grad[:, 3] > grad[:, 0])  # wider routes cost more
