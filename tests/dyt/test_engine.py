"""dyt/engine.py: the per-iteration schedule, the two-pass training step with the DyT loss, and evaluation (metrics,
activation rates, original-accounting FLOPs) against hand computations."""

from __future__ import annotations

import argparse
import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from dyt.data import ACCURACY, MEAN_PER_CLASS
from dyt.engine import adjust_learning_rate, evaluate, flops_counter, lr_at, make_scaler, train_one_epoch
from dyt.flops import sample_flops
from dyt.losses import DyTLoss
from dyt.models import build_model

CPU = torch.device("cpu")


def _args(**kw) -> argparse.Namespace:
    base = dict(lr=1e-3, min_lr=1e-5, warmup_epochs=1, epochs=2, accum_iter=1)
    return argparse.Namespace(**{**base, **kw})


def _tiny(dispatch="mlp", **kw) -> nn.Module:
    torch.manual_seed(0)
    return build_model("vit_digits", num_classes=4, ffn_num=8, dispatch=dispatch, img_size=16, **kw)


def _loader(n=24, batch=8, seed=0, size=16) -> DataLoader:
    gen = torch.Generator().manual_seed(seed)
    data = TensorDataset(torch.randn(n, 3, size, size, generator=gen), torch.randint(0, 4, (n,), generator=gen))
    return DataLoader(data, batch_size=batch)


def test_schedule_is_linear_warmup_then_half_cosine():
    assert lr_at(0.0, 1.0, 0.1, 10, 100) == 0.0
    assert lr_at(5.0, 1.0, 0.1, 10, 100) == pytest.approx(0.5)
    assert lr_at(10.0, 1.0, 0.1, 10, 100) == pytest.approx(1.0)
    assert lr_at(55.0, 1.0, 0.1, 10, 100) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_at(100.0, 1.0, 0.1, 10, 100) == pytest.approx(0.1)
    assert lr_at(3.0, 1.0, 0.0, 0, 4) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.75)))
    param = nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([{"params": [param], "lr_scale": 0.5}])
    assert adjust_learning_rate(opt, 0.5, _args()) == pytest.approx(5e-4)
    assert opt.param_groups[0]["lr"] == pytest.approx(2.5e-4)


def test_train_one_epoch_runs_both_passes_and_steps_per_iteration():
    model = _tiny()
    calls = []
    model.register_forward_pre_hook(lambda m, args, kwargs: calls.append(kwargs.get("complete_model", False)),
                                    with_kwargs=True)
    trainable = [p for n, p in model.named_parameters() if "adaptmlp" in n or "mlp_token_select" in n or "head" in n]
    before = [p.detach().clone() for p in trainable]
    opt = torch.optim.AdamW(trainable, lr=1e-3, weight_decay=0.0)
    stats = train_one_epoch(model, DyTLoss(), _loader(), opt, CPU, 0, make_scaler(CPU), _args())
    assert calls == [False, True] * 3  # dynamic pass, then the complete pass, per batch
    assert set(stats) == {"loss", "base_loss", "token_loss", "teacher_loss", "distillation_loss", "lr", "img/s"}
    parts = stats["base_loss"] + stats["token_loss"] + stats["teacher_loss"] + stats["distillation_loss"]
    assert stats["loss"] == pytest.approx(parts, rel=1e-5)
    assert stats["teacher_loss"] > 0 and stats["distillation_loss"] >= 0
    assert stats["lr"] == pytest.approx(lr_at(2 / 3, 1e-3, 1e-5, 1, 2))  # the lr of the last of 3 iterations
    assert all(not torch.equal(a, b) for a, b in zip(before, trainable, strict=True))  # adapters, dispatchers, head


def test_without_distillation_the_complete_pass_is_skipped():
    model = _tiny()
    calls = []
    model.register_forward_pre_hook(lambda m, args, kwargs: calls.append(kwargs.get("complete_model", False)),
                                    with_kwargs=True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    stats = train_one_epoch(model, DyTLoss(distill=False), _loader(), opt, CPU, 1, make_scaler(CPU), _args())
    assert calls == [False] * 3
    assert stats["teacher_loss"] == stats["distillation_loss"] == 0.0


def test_adaptformer_has_no_rate_loss():
    model = _tiny(dispatch="none")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    stats = train_one_epoch(model, DyTLoss(), _loader(), opt, CPU, 0, make_scaler(CPU), _args())
    assert stats["token_loss"] == 0.0


def test_gradient_accumulation_steps_every_accum_iter_batches():
    model = _tiny()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    steps = []
    opt.register_step_post_hook(lambda *a: steps.append(1))
    train_one_epoch(model, DyTLoss(), _loader(n=40), opt, CPU, 0, make_scaler(CPU), _args(accum_iter=2))
    assert len(steps) == 3  # 5 batches: after batch 2, 4 and the last one


def test_evaluate_matches_hand_computation_on_the_real_model():
    model = _tiny()
    with torch.no_grad():  # a trained-looking dispatcher: logits spread around 0
        for blk in model.blocks:
            blk.mlp_token_select.mlp_head.weight.normal_(0, 0.5)
    loader = _loader(n=20, batch=8)
    stats = evaluate(model, loader, CPU, 4, ACCURACY, flops_counter(model))
    model.eval()
    x, y = loader.dataset.tensors
    with torch.no_grad():
        logits, aux = model(x)
    mask = aux["token_select"]
    assert stats["samples"] == 20
    assert stats["acc1"] == pytest.approx(100.0 * (logits.argmax(1) == y).float().mean().item())
    assert stats["acc5"] == pytest.approx(100.0)  # 4 classes
    assert stats["loss"] == pytest.approx(nn.functional.cross_entropy(logits, y).item(), rel=1e-5)
    assert stats["activation_rate"] == pytest.approx(mask.mean().item(), abs=1e-6)
    assert 0.05 < stats["activation_rate"] < 0.95
    assert stats["layer_rates"] == pytest.approx(mask.mean(dim=(0, 2, 3)).tolist(), abs=1e-6)
    assert stats["flops"] == pytest.approx(sample_flops(model, aux).mean().item(), rel=1e-9)
    assert stats["metric"] == stats["acc1"]
    model.execution = "masked"
    assert evaluate(model, loader, CPU, 4, ACCURACY)["acc1"] == stats["acc1"]


class _FixedLogits(nn.Module):
    """Returns preset logits batch by batch (and an all-ones mask of 2 layers x 3 tokens)."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits, self.at = logits, 0

    def forward(self, x):
        out = self.logits[self.at:self.at + len(x)]
        self.at += len(x)
        return out, {"token_select": torch.ones(len(x), 2, 3, 1)}


def test_mean_per_class_accuracy_as_the_original():
    targets = torch.tensor([0, 0, 1, 1, 2])
    preds = torch.tensor([0, 1, 1, 1, 0])
    logits = nn.functional.one_hot(preds, 4).float()
    loader = DataLoader(TensorDataset(torch.zeros(5, 1), targets), batch_size=2)
    stats = evaluate(_FixedLogits(logits), loader, CPU, 4, MEAN_PER_CLASS)
    assert stats["acc1"] == pytest.approx(60.0)
    # recall 50 / 100 / 0 for classes 0-2, and 0 for the absent class 3 (the original averages over nb_classes)
    assert stats["mean_per_class_acc"] == pytest.approx((50 + 100 + 0 + 0) / 4)
    assert stats["metric"] == stats["mean_per_class_acc"]
    assert stats["activation_rate"] == 1.0 and stats["layer_rates"] == [1.0, 1.0] and "flops" not in stats
