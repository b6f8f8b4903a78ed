"""JEI-DNN's exit policies (configurations) and static export (jeidnn/export.py), and the gate calibration."""

from __future__ import annotations

import io

import pytest
import torch

from common.configurations import ConfigurationError
from jeidnn.dynn import calibrate_gates, exit_decisions
from jeidnn.export import StaticT2TViT, to_static
from jeidnn.models import create_model


@pytest.fixture(scope="module")
def model():
    """T2T-ViT-7 at 32 px with non-trivial (random) LayerNorm affines, in evaluation mode."""
    torch.manual_seed(0)
    model = create_model("t2t_vit_7", num_classes=10, img_size=32, drop_path_rate=0.0)
    with torch.no_grad():
        for norm in model.modules():
            if isinstance(norm, torch.nn.LayerNorm):
                norm.weight.uniform_(0.5, 1.5)
                norm.bias.uniform_(-0.5, 0.5)
    return model.eval()


def test_configurations_and_their_forward(model):
    assert model.configurations() == [f"exit {i}" for i in range(6)] + ["final", "gated"]
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        final, ics = model(x)  # no configuration: the original's all-exits forward
        for name, expected in [("exit 0", ics[0]), ("exit 5", ics[5]), ("final", final)]:
            model.set_configuration(name)
            torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-5)
        model.set_configuration(None)
        assert isinstance(model(x), tuple)
    with pytest.raises(ConfigurationError, match="has no configuration 'exit 6'"):
        model.set_configuration("exit 6")


@pytest.mark.parametrize("name", ["exit 0", "exit 3", "final"])
def test_export_equals_the_forced_exit(model, name):
    x = torch.randn(6, 3, 32, 32)
    exported = to_static(model, name)
    depth = 7 if name == "final" else int(name.split()[1]) + 1
    assert isinstance(exported, StaticT2TViT) and len(exported.blocks) == depth
    assert not hasattr(exported, "gates") and not hasattr(exported, "intermediate_heads")
    model.set_configuration(name)
    try:
        with torch.no_grad():
            torch.testing.assert_close(exported(x), model(x), atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(to_static(model, name, fold_bn=True)(x), model(x), atol=1e-5, rtol=1e-5)
    finally:
        model.set_configuration(None)


def test_export_round_trip_and_torch_export(model):
    exported = to_static(model, "exit 2")
    buffer = io.BytesIO()
    torch.save(exported.state_dict(), buffer)
    buffer.seek(0)
    fresh = StaticT2TViT(img_size=32, num_classes=10, embed_dim=256, depth=3, num_heads=4, mlp_ratio=2.0).eval()
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), exported(x))
        program = torch.export.export(exported, (x,))
        torch.testing.assert_close(program.module()(x), exported(x))


def test_export_refuses_gated_and_unknown(model):
    with pytest.raises(ConfigurationError, match="no static form; export one of exit 0, .*exit 5, final"):
        to_static(model, "gated")
    with pytest.raises(ConfigurationError, match="has no configuration 'exit 9'"):
        to_static(model, "exit 9")


def test_calibrated_gates_send_the_asked_fractions(model):
    """calibrate_gates on 20 images: 5 leave at exit 0, none at 1, 10 at 2, 5 reach the final head, and the
    gated configuration (real early exit) agrees with the exit rule on a full forward."""
    torch.manual_seed(1)
    x = torch.randn(20, 3, 32, 32)
    gates = [(gate.linear.weight.clone(), gate.linear.bias.clone()) for gate in model.gates]
    try:
        calibrate_gates(model, x, [0.25, 0.0, 0.5, 0.0, 0.0, 0.0, 0.25])
        with torch.no_grad():
            final, ics = model(x)
            decisions = exit_decisions(torch.sigmoid(torch.cat(model.gate_logits(ics), dim=1)))
            model.set_configuration("gated")
            logits = model(x)
        assert decisions.counts().tolist() == [5, 0, 10, 0, 0, 0, 5]
        assert torch.equal(model.exit_level, decisions.exit_level)
        torch.testing.assert_close(logits, decisions.gated_logits(ics, final))
        with pytest.raises(ValueError, match="7 non-negative exit fractions summing to 1"):
            calibrate_gates(model, x, [0.5, 0.5])
    finally:
        model.set_configuration(None)
        with torch.no_grad():
            for gate, (weight, bias) in zip(model.gates, gates, strict=True):
                gate.linear.weight.copy_(weight)
                gate.linear.bias.copy_(bias)


def test_micro_batched_tokens_equal_the_whole_batch(model):
    """In evaluation the T2T module runs in micro-batches (here of 4 images): the same tokens as at once."""
    x = torch.randn(9, 3, 32, 32)
    t2t = model.tokens_to_token
    calls = []
    handle = t2t.attention1.register_forward_hook(lambda module, args, out: calls.append(out.size(0)))
    try:
        with torch.no_grad():
            whole = t2t(x)  # 32 px: not split by default
            t2t.micro_batch_pixels = 4 * 32 * 32
            chunked = t2t(x)
        torch.testing.assert_close(chunked, whole, atol=1e-6, rtol=1e-6)
        assert calls == [9, 4, 4, 1]
    finally:
        t2t.micro_batch_pixels = 4 * 224 * 224
        handle.remove()


def test_calibrated_gates_default_to_equal_shares(model):
    x = torch.randn(14, 3, 32, 32)
    gates = [(gate.linear.weight.clone(), gate.linear.bias.clone()) for gate in model.gates]
    try:
        calibrate_gates(model, x)
        model.set_configuration("gated")
        with torch.no_grad():
            model(x)
        assert torch.bincount(model.exit_level, minlength=7).tolist() == [2] * 7
    finally:
        model.set_configuration(None)
        with torch.no_grad():
            for gate, (weight, bias) in zip(model.gates, gates, strict=True):
                gate.linear.weight.copy_(weight)
                gate.linear.bias.copy_(bias)
