"""The main demo: train a small ResNet on digits, prune it two ways, fine-tune, measure.

Everything runs offline on a laptop CPU in a minute or two: scikit-learn's digits are the
data, and every number in the table is measured on this machine.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .api import prune
from .data import load_digits
from .measure import count_flops, count_params, measure_latency
from .methods import ChannelPruning, FilterPruning
from .recover import evaluate_accuracy, train_classifier
from .verify import verify


class ResidualBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


def digits_resnet(width: int = 32, classes: int = 10) -> nn.Module:
    """A ResNet-style CNN for 1×8×8 digit images (about 0.2M parameters at width 32)."""
    return nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
        ResidualBlock(width, width), ResidualBlock(width, width),
        ResidualBlock(width, 2 * width, stride=2), ResidualBlock(2 * width, 2 * width),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, classes))


@dataclass
class DemoRow:
    method: str
    ratio: float
    params: int
    flops: int
    latency_ms: float
    accuracy_one_shot: float
    accuracy_fine_tuned: float
    equivalence_error: float


def run_demo(out_dir: str | Path = "demo_output", epochs: int = 20, finetune_epochs: int = 5,
             ratios: tuple[float, ...] = (0.25, 0.5, 0.75), seed: int = 0,
             progress: Callable[[str], None] = lambda message: None) -> list[DemoRow]:
    """Train, prune with FilterPruning(l1) and ChannelPruning(l2) at each ratio, fine-tune.

    Writes ``report.md`` and ``results.json`` to ``out_dir`` and returns the rows.
    """
    torch.manual_seed(seed)
    digits = load_digits(seed=seed)
    model = digits_resnet()
    progress(f"training the digits ResNet for {epochs} epochs")
    train_classifier(model, digits.train, epochs=epochs, lr=3e-3)
    model.eval()
    x = digits.example_inputs
    timing_batch = next(iter(digits.test))[0]

    def row(method: str, ratio: float, pruned: nn.Module, one_shot: float, tuned: float,
            error: float) -> DemoRow:
        return DemoRow(method, ratio, count_params(pruned), count_flops(pruned, x),
                       measure_latency(pruned, timing_batch, min_run_time=0.3),
                       one_shot, tuned, error)

    baseline = evaluate_accuracy(model, digits.test)
    rows = [row("unpruned", 0.0, model, baseline, baseline, 0.0)]
    for label, make in (("filter (l1)", lambda r: FilterPruning(r, "l1")),
                        ("channel (l2)", lambda r: ChannelPruning(r, "l2"))):
        for ratio in ratios:
            progress(f"{label} at ratio {ratio}: prune, verify, fine-tune {finetune_epochs} epochs")
            pruned = copy.deepcopy(model)
            result = prune(pruned, x, make(ratio))
            report = verify(model, x, result.plan)
            if not report.ok:
                raise AssertionError(f"{label} at {ratio}: {report}")
            one_shot = evaluate_accuracy(pruned, digits.test)
            torch.manual_seed(seed)
            train_classifier(pruned, digits.train, epochs=finetune_epochs, lr=1e-3)
            tuned = evaluate_accuracy(pruned, digits.test)
            rows.append(row(label, ratio, pruned.eval(), one_shot, tuned, report.relative_diff))
    write_report(rows, Path(out_dir))
    return rows


def write_report(rows: list[DemoRow], out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps([asdict(r) for r in rows], indent=1))
    base = rows[0]
    lines = ["# prunekit demo: a ResNet on scikit-learn digits", "",
             "| method | ratio | params | FLOPs | latency (ms, batch 256) | acc. one-shot | "
             "acc. fine-tuned | masked vs pruned |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.method} | {r.ratio:.2f} | {r.params:,} ({r.params / base.params:.0%}) | "
                     f"{r.flops:,} ({r.flops / base.flops:.0%}) | {r.latency_ms:.2f} | "
                     f"{r.accuracy_one_shot:.1%} | {r.accuracy_fine_tuned:.1%} | "
                     f"{r.equivalence_error:.1e} |")
    path = out_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
