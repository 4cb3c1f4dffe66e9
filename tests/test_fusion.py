"""pk.fuse: BatchNorm folded into the layer before it, checked equal to the unfused model."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn
from typer.testing import CliRunner

import prunekit as pk
from prunekit.cli.commands import app

from .zoo import resnet_basic


def outputs(model, x):
    with torch.no_grad():
        return model(x)


@pytest.mark.parametrize("build", [resnet_basic,
                                   lambda: torchvision.models.mobilenet_v3_small(),
                                   lambda: torchvision.models.resnet18()],
                         ids=["resnet_basic", "mobilenet_v3_small", "resnet18"])
def test_every_batchnorm_after_a_convolution_is_folded_and_outputs_stay(build):
    torch.manual_seed(0)
    model = build().eval()
    for m in model.modules():  # statistics that are not the identity
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    x = torch.randn(2, 3, 32, 32)
    before = outputs(model, x)
    norms = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    report = pk.fuse(model, x)
    assert len(report.fused) == norms and not report.left
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert torch.allclose(outputs(model, x), before, rtol=1e-4, atol=1e-5)
    assert "fused" in str(report)


class ReadTwice(nn.Module):
    """The convolution's output goes to the norm and, unnormalised, to the output too."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.other = nn.Conv2d(3, 4, 3)
        self.bn2 = nn.BatchNorm2d(4)

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y, self.bn2(self.other(x))


def test_a_layer_whose_output_is_read_elsewhere_is_left_as_it_was():
    torch.manual_seed(0)
    model = ReadTwice().eval()
    model.bn.running_mean.fill_(0.5)
    x = torch.randn(2, 3, 8, 8)
    before = outputs(model, x)
    report = pk.fuse(model, x)
    assert report.fused == [("other", "bn2")]
    assert report.left and report.left[0][:2] == ("conv", "bn")
    assert isinstance(model.bn, nn.BatchNorm2d)
    for a, b in zip(outputs(model, x), before):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)


def test_a_linear_layer_absorbs_the_norm_after_it():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 2)).eval()
    model[1].running_var.fill_(3.0)
    x = torch.randn(4, 6)
    before = outputs(model, x)
    assert pk.fuse(model, x).fused == [("0", "1")]
    assert torch.allclose(outputs(model, x), before, atol=1e-6)


def test_a_model_in_training_mode_is_refused():
    with pytest.raises(pk.ConfigError, match="model.eval"):
        pk.fuse(resnet_basic().train(), torch.randn(2, 3, 16, 16))


def test_a_pruned_and_fused_model_exports_from_the_command_line(tmp_path):
    runner = CliRunner()
    out = tmp_path / "pruned"
    assert runner.invoke(app, ["prune", "--model", "torchvision:resnet18", "--input-shape",
                               "1,3,32,32", "--no-latency", "--out", str(out)]).exit_code == 0
    result = runner.invoke(app, ["export", "--model", "torchvision:resnet18", "--pruned",
                                 str(out), "--input-shape", "1,3,32,32", "--fuse", "--out",
                                 str(tmp_path / "m.onnx")])
    assert result.exit_code == 0, result.output
    assert "fused 20 BatchNorm layers" in result.output and (tmp_path / "m.onnx").is_file()
