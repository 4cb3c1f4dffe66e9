"""The main demo: train a small ResNet on digits, compare pruning methods, measure.

Everything runs offline on a laptop CPU in a minute or two: scikit-learn's digits are the
data, and every number in the table is measured on this machine.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from torch import nn

from ..core.progress import ProgressOption, Step, finish, reporter
from ..measure.latency import speedup_cell
from ..methods import FilterPruning
from ..recover import train_classifier
from ..workflows.compare import Comparison, compare
from ..workflows.iterative import iterative_prune
from ..workflows.sensitivity import sensitivity
from .data import Digits, load_digits


class ResidualBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu1, self.relu2 = nn.ReLU(), nn.ReLU()  # modules, so activations can be read
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.relu1(self.bn1(self.conv1(x)))
        return self.relu2(self.bn2(self.conv2(out)) + self.shortcut(x))


def digits_resnet(width: int = 32, classes: int = 10) -> nn.Module:
    """A ResNet-style CNN for 1×8×8 digit images (about 0.2M parameters at width 32)."""
    return nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
        ResidualBlock(width, width), ResidualBlock(width, width),
        ResidualBlock(width, 2 * width, stride=2), ResidualBlock(2 * width, 2 * width),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, classes))


def trained_digits_resnet(epochs: int = 20, seed: int = 0) -> tuple[nn.Module, Digits]:
    """The digits data split by ``seed`` and a digits ResNet trained on it (eval mode)."""
    torch.manual_seed(seed)
    digits = load_digits(seed=seed)
    model = digits_resnet()
    train_classifier(model, digits.train, epochs=epochs, lr=3e-3)
    return model.eval(), digits


def trained_digits_model() -> nn.Module:
    """The digits ResNet trained for 20 epochs on ``digits_loaders()``'s training split; a
    model factory for the command line (``--model prunekit.cli.demo:trained_digits_model``)."""
    return trained_digits_resnet()[0]


def run_demo(out_dir: str | Path = "demo_output", epochs: int = 20, finetune_epochs: int = 5,
             flops_target: float = 0.5, steps: int = 3, seed: int = 0,
             progress: ProgressOption = None) -> Comparison:
    """Train the digits ResNet, then compare every method at one FLOPs budget, prune
    iteratively, and run a sensitivity analysis.

    Writes ``report.md``, ``results.json`` and three PNG plots to ``out_dir``; ``progress``
    as for ``pk.prune``.
    """
    report = reporter(progress)
    report(Step("training the digits ResNet", detail=f"{epochs} epochs"))
    model, digits = trained_digits_resnet(epochs, seed)
    x = digits.example_inputs
    timing_batch = next(iter(digits.test))[0]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    comparison = compare(model, x, digits.train, digits.test, flops_target=flops_target,
                         finetune_epochs=finetune_epochs, data=digits.calibration,
                         timing_inputs=timing_batch, seed=seed, seeds=3, progress=report)
    comparison.plot(out / "comparison.png")


    iterated = copy.deepcopy(model)
    torch.manual_seed(seed)
    history = iterative_prune(iterated, x, FilterPruning(criterion="taylor",
                                                         flops_target=flops_target),
                              steps, train_data=digits.train, eval_data=digits.test,
                              finetune_epochs=max(1, finetune_epochs // steps + 1),
                              data=digits.calibration, timing_inputs=timing_batch,
                              progress=report)
    history.plot(out / "iterative.png")

    table = sensitivity(model, x, digits.test, progress=report)
    table.plot(out / "sensitivity.png")

    (out / "results.json").write_text(json.dumps(
        {"comparison": comparison.to_dict(), "iterative": history.to_dict(),
         "sensitivity": table.to_dict()}, indent=1))
    lines = ["# prunekit demo: a ResNet on scikit-learn digits", "",
             "Every number below was measured in this run on this machine.", "",
             "## Methods compared at one FLOPs budget", "", comparison.to_markdown(),
             "![accuracy against FLOPs](comparison.png)", "",
             f"## Iterative pruning ({steps} steps, fine-tuning between)", "",
             "Speed-up: against the unpruned model, timed interleaved in the same rounds "
             f"on a test batch of {timing_batch.shape[0]}, with its 95% interval ('≈ 1' "
             "where that interval holds 1).", "",
             "| step | params removed | FLOPs removed | accuracy | speed-up |",
             "|---|---|---|---|---|"]
    lines += [f"| {r.step} | {r.sparsity:.1%} | {r.flop_reduction:.1%} | {r.accuracy:.1%} | "
              + speedup_cell(r.speedup, r.speedup_low, r.speedup_high) + " |"
              for r in history.records]
    lines += ["", "![iterative pruning](iterative.png)", "", "## Sensitivity", "",
              table.to_markdown(), "![sensitivity](sensitivity.png)", ""]
    (out / "report.md").write_text("\n".join(lines))
    finish(report)
    return comparison
