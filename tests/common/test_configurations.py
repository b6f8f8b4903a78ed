"""The configuration protocol's checks and the BatchNorm folding every static export may end with."""

import pytest
import torch
import torchvision
from torch import nn

from common.configurations import (
    Configurable,
    ConfigurationError,
    check_configuration,
    check_exportable,
    fold_batchnorm,
)


class TwoWidths(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.name = "wide"

    def configurations(self) -> list[str]:
        return ["narrow", "wide"]

    def set_configuration(self, name: str) -> None:
        self.name = check_configuration(self, name)


def test_unknown_configuration_names_the_valid_ones():
    model = TwoWidths()
    assert isinstance(model, Configurable)
    model.set_configuration("narrow")
    assert model.name == "narrow"
    with pytest.raises(ConfigurationError, match="no configuration 'medium'; choose one of narrow, wide"):
        model.set_configuration("medium")


def test_export_refuses_a_model_in_training_mode():
    model = TwoWidths()
    with pytest.raises(ConfigurationError, match="evaluation mode"):
        check_exportable(model, "wide")
    check_exportable(model.eval(), "wide")


def test_fold_batchnorm_keeps_outputs_and_removes_the_norms():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    for module in model.modules():  # non-trivial statistics, as after training
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
    model.eval()
    x = torch.randn(2, 3, 64, 64)
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    torch.testing.assert_close(folded(x), model(x), atol=1e-5, rtol=1e-4)
    with pytest.raises(ConfigurationError):
        fold_batchnorm(model.train())
