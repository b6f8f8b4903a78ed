"""adn.weights: released plain state dicts and train_adn.py checkpoints for --test-only --weights."""

from __future__ import annotations

import pytest
import torch

from adn.models import create_model
from adn.optim import ExponentialMovingAverage
from adn.weights import load_weights, released_state_dict
from common.checkpoint import CheckpointError, save_checkpoint, training_state


def _model(seed=0):
    torch.manual_seed(seed)
    return create_model("resnet_adn_cifar", num_classes=10, width=8)


def test_training_checkpoint_to_released_format(tmp_path):
    model = _model()
    ema = ExponentialMovingAverage(model, decay=0.5)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ckpt = training_state(model, ema=ema, epoch=3)
    plain = released_state_dict(ckpt)
    assert list(plain) == list(model.state_dict())
    from_ema = released_state_dict(ckpt, use_ema=True)
    assert list(from_ema) == list(model.state_dict())  # "module." stripped, "n_averaged" dropped
    assert not torch.equal(from_ema["fc.weight"], plain["fc.weight"])
    assert released_state_dict(plain) == plain  # the released format passes through

    path = save_checkpoint(ckpt, tmp_path / "checkpoint.pth")
    fresh = _model(seed=1)
    load_weights(fresh, path, use_ema=True)
    torch.testing.assert_close(fresh.state_dict()["fc.weight"], from_ema["fc.weight"])
    torch.save(plain, tmp_path / "released.pth")
    load_weights(fresh, tmp_path / "released.pth")
    torch.testing.assert_close(fresh.state_dict()["fc.weight"], model.state_dict()["fc.weight"])


def test_bad_weights_are_checkpoint_errors(tmp_path):
    model = _model()
    with pytest.raises(CheckpointError, match="model_ema"):
        released_state_dict(training_state(model, epoch=0), use_ema=True)
    other = tmp_path / "mobilenet.pth"
    torch.save(create_model("mobilenet_v2", num_classes=10).state_dict(), other)
    with pytest.raises(CheckpointError, match="does not fit"):
        load_weights(model, other)
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_weights(model, corrupt)
