"""Compare pruning methods on one trained model, one dataset and one FLOPs budget.

Each method prunes its own copy of the model to the same fraction of FLOPs removed, is
verified, measured (params, FLOPs, and CPU latency timed interleaved with the unpruned
model, so each row's speed-up is measured in the same rounds) and evaluated one-shot — by default after
re-estimating BatchNorm statistics on the calibration data, which changes no weight — then
fine-tuned with the same budget of epochs and evaluated again.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch import nn

from ..api import prune
from ..latency import Speedup, Timing, compare_latency, measure_latency
from ..measure import count_flops, count_params
from ..methods import ChannelPruning, FilterPruning, LayerPruning
from ..recover import evaluate_accuracy, recalibrate_norms, train_classifier
from .plots import new_figure, save, series_colour


def default_methods(flops_target: float) -> dict[str, Any]:
    """Filter pruning by several criteria, channel pruning with and without reconstruction,
    layer pruning, and random filters as the baseline."""
    methods: dict[str, Any] = {
        f"filter ({c})": FilterPruning(criterion=c, flops_target=flops_target)
        for c in ("l1", "l2", "fpgm", "bn_scale", "apoz", "mean_activation", "taylor")}
    methods["channel (l2)"] = ChannelPruning(criterion="l2", flops_target=flops_target)
    methods["channel (l2) + reconstruction"] = ChannelPruning(
        criterion="l2", flops_target=flops_target, reconstruct=True)
    methods["layers (loss)"] = LayerPruning(criterion="loss", flops_target=flops_target)
    methods["layers (influence)"] = LayerPruning(criterion="influence", flops_target=flops_target)
    methods["filter (random)"] = FilterPruning(criterion="random", flops_target=flops_target)
    return methods


@dataclass
class ComparisonRow:
    method: str
    params: int
    flops: int
    latency: Timing  # median and quartiles, ms
    accuracy_one_shot: float
    accuracy_fine_tuned: float | None
    verified: bool | None  # None: pruned by an outside function, not checkable
    accuracy_as_pruned: float | None = None  # one-shot before BatchNorm re-estimation
    speedup: Speedup | None = None  # against the unpruned model, timed in the same rounds

    @property
    def latency_ms(self) -> float:
        return self.latency.median_ms


@dataclass
class Comparison:
    flops_target: float
    finetune_epochs: int
    recalibrated: bool = True
    rows: list[ComparisonRow] = field(default_factory=list)
    timing: str = ""  # how latency was measured (batch, threads, rounds)

    @property
    def baseline(self) -> ComparisonRow:
        return self.rows[0]

    def to_dict(self) -> dict[str, Any]:
        return {"flops_target": self.flops_target, "finetune_epochs": self.finetune_epochs,
                "recalibrated": self.recalibrated, "timing": self.timing,
                "rows": [{**asdict(r), "speedup": r.speedup and r.speedup.to_dict()}
                         for r in self.rows]}

    def to_markdown(self) -> str:
        base = self.baseline
        one_shot = ("one-shot: BatchNorm statistics re-estimated on calibration data, no "
                    "training (as pruned: before that)" if self.recalibrated
                    else "one-shot: no change after pruning")
        lines = [f"FLOPs budget: remove {self.flops_target:.0%}; fine-tuning: "
                 f"{self.finetune_epochs} epochs for every method; {one_shot}; latency: "
                 f"median (quartiles) ms, {self.timing}; speed-up: against the unpruned model "
                 f"in the same rounds, with its 95% confidence interval ('≈ 1' where that "
                 f"interval holds 1)", "",
                 "| method | params | FLOPs removed | latency (ms) | speed-up | "
                 "accuracy as pruned | accuracy one-shot | accuracy fine-tuned | verified |",
                 "|---|---|---|---|---|---|---|---|---|"]

        def percent(value: float | None) -> str:
            return "—" if value is None else f"{value:.1%}"

        for r in self.rows:
            lines.append(f"| {r.method} | {r.params:,} | {1 - r.flops / base.flops:.1%} | "
                         f"{r.latency} | {speedup_text(r.speedup)} | "
                         f"{percent(r.accuracy_as_pruned)} | "
                         f"{r.accuracy_one_shot:.1%} | {percent(r.accuracy_fine_tuned)} | "
                         f"{verdict(r.verified)} |")
        return "\n".join(lines) + "\n"

    def plot(self, path: str | Path) -> Path:
        """Accuracy against FLOPs, one-shot and fine-tuned, one colour per method."""
        figure = self.figure()
        return save(figure, path)

    def figure(self):
        """The plot as a matplotlib ``Figure`` (not attached to pyplot)."""
        figure = new_figure(7, 4.5)
        axes = figure.subplots()
        base = self.baseline
        for index, r in enumerate(self.rows):
            colour = series_colour(index)
            x = r.flops / base.flops * 100
            axes.scatter(x, r.accuracy_one_shot * 100, marker="o", color=colour,
                         facecolors="none", label=f"{r.method}")
            if r.accuracy_fine_tuned is not None:
                axes.scatter(x, r.accuracy_fine_tuned * 100, marker="*", s=90, color=colour)
        axes.set_xlabel("FLOPs kept (% of unpruned)")
        axes.set_ylabel("test accuracy (%)  ○ one-shot  ★ fine-tuned")
        axes.legend(fontsize=7, loc="lower right")
        return figure


def speedup_text(speedup: Speedup | None) -> str:
    """``1.84× (1.80–1.88)``, ``≈ 1 (0.97–1.05)`` within the noise, ``—`` for none."""
    if speedup is None:
        return "—"
    value = "≈ 1" if speedup.within_noise else f"{speedup.speedup:.2f}×"
    return f"{value} ({speedup.low:.2f}–{speedup.high:.2f})"


def verdict(verified: bool | None) -> str:
    return "n/a" if verified is None else "yes" if verified else "NO"


def compare(model: nn.Module, example_inputs: Any, train_data: Iterable, eval_data: Iterable,
            flops_target: float = 0.5, finetune_epochs: int = 5, lr: float = 1e-3,
            methods: dict[str, Any] | None = None, data: Iterable | None = None,
            timing_inputs: Any = None, threads: int | None = None, seed: int = 0,
            recalibrate: bool = True, progress: Callable[[str], None] = lambda message: None) -> Comparison:
    """Run every method on its own copy of ``model``; the model itself is not changed.

    Args:
        model: a trained classifier.
        example_inputs: inputs for tracing and FLOP counting.
        train_data, eval_data: ``(inputs, labels)`` batches for fine-tuning and accuracy.
        flops_target: the fraction of FLOPs every method removes.
        finetune_epochs: the same fine-tuning budget for every method (0: one-shot only).
        methods: ``{label: method}``; by default ``default_methods(flops_target)``. A method
            may also be your own function ``prune(model, example_inputs, data)`` that prunes
            in place (another library, say); its rows are marked as not verified.
        data: calibration batches for data-driven criteria (default: ``train_data``).
        timing_inputs: the batch latency is measured on (default: ``example_inputs``).
        threads: the threads latency is measured with (default: as set now).
        recalibrate: re-estimate BatchNorm statistics on ``data`` after pruning, before the
            one-shot evaluation (no weights change).

    Example:
        >>> table = pk.compare(model, x, train, test, flops_target=0.5, finetune_epochs=5)
        >>> print(table.to_markdown()); table.plot("comparison.png")
    """
    methods = methods if methods is not None else default_methods(flops_target)
    data = data if data is not None else train_data
    timing_inputs = timing_inputs if timing_inputs is not None else example_inputs
    model.eval()

    def row(label: str, candidate: nn.Module, one_shot: float, tuned: float | None,
            verified: bool | None, as_pruned: float | None) -> ComparisonRow:
        candidate.eval()
        # timed in the same rounds as the unpruned model: the speed-up is of the models,
        # not of whatever else the machine did between two measurements
        speedup = compare_latency(model, candidate, timing_inputs, threads=threads,
                                  min_time=0.5)
        result.timing = speedup.conditions()
        return ComparisonRow(label, count_params(candidate),
                             count_flops(candidate, example_inputs), speedup.after, one_shot,
                             tuned, verified, as_pruned, speedup)

    result = Comparison(flops_target, finetune_epochs, recalibrate)
    unpruned = evaluate_accuracy(model, eval_data)
    result.rows.append(ComparisonRow(
        "unpruned", count_params(model), count_flops(model, example_inputs),
        measure_latency(model, timing_inputs, threads=threads), unpruned, None, True, unpruned))
    for label, method in methods.items():
        progress(f"{label}: prune to {flops_target:.0%} fewer FLOPs")
        pruned = copy.deepcopy(model)
        if callable(method):
            method(pruned, example_inputs, data)
            verified = None  # nothing to check it against
        else:
            outcome = prune(pruned, example_inputs, method, data=data)
            # the method's own check: equivalence, or for layers "blocks bypassed"
            verified = outcome.report.ok if outcome.report is not None else None
        as_pruned = one_shot = evaluate_accuracy(pruned, eval_data)
        if recalibrate:
            recalibrate_norms(pruned, data)
            one_shot = evaluate_accuracy(pruned, eval_data)
        tuned = None
        if finetune_epochs > 0:
            progress(f"{label}: fine-tune {finetune_epochs} epochs")
            torch.manual_seed(seed)
            train_classifier(pruned, train_data, epochs=finetune_epochs, lr=lr)
            tuned = evaluate_accuracy(pruned, eval_data)
        result.rows.append(row(label, pruned, one_shot, tuned, verified, as_pruned))
    return result
