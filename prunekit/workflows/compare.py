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
from typing import Any, Iterable

import torch
from torch import nn

from ..api import prune
from ..core.arguments import check_whole, keyword_only
from ..core.progress import ProgressOption, Step, finish, reporter
from ..core.tables import ResultTable
from ..measure.latency import Speedup, Timing, measure_latency, speedup_cell, speedups_over_first
from ..measure.model import count_flops, count_params
from ..methods import ChannelPruning, FilterPruning, LayerPruning
from ..recover import evaluate_accuracy, recalibrate_norms, train_classifier
from .plots import new_figure, save


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
    latency: Timing | None  # median and quartiles, ms
    accuracy_one_shot: float
    accuracy_fine_tuned: float | None
    verified: bool | None  # None: pruned by an outside function, not checkable
    accuracy_as_pruned: float | None = None  # one-shot before BatchNorm re-estimation
    speedup: Speedup | None = None  # against the unpruned model, timed in the same rounds
    checked: str = ""  # what the method's check checked ("equivalent", "blocks bypassed")
    fine_tuned_runs: list[float] = field(default_factory=list)  # one per seed

    @property
    def fine_tuned_range(self) -> tuple[float, float] | None:
        """The lowest and highest fine-tuned accuracy over the seeds (None for one run)."""
        runs = self.fine_tuned_runs
        return (min(runs), max(runs)) if len(runs) > 1 else None

    @property
    def latency_ms(self) -> float | None:
        return None if self.latency is None else self.latency.median_ms


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

    def table(self) -> ResultTable:
        """Every method's row: what ``print``, ``to_markdown`` and the command line show."""
        base = self.baseline
        one_shot = ("one-shot: BatchNorm statistics re-estimated on calibration data, no "
                    "training (as pruned: before that)" if self.recalibrated
                    else "one-shot: no change after pruning")
        table = ResultTable(
            f"FLOPs budget: remove {self.flops_target:.0%}; fine-tuning: "
            f"{self.finetune_epochs} epochs for every method{self._seeds_text()}; {one_shot}; "
            f"latency: "
            f"median (quartiles) ms, {self.timing}; speed-up: against the unpruned model "
            f"in the same rounds, with its 95% confidence interval ('≈ 1' where that "
            f"interval holds 1)",
            ["method", "params", "FLOPs removed", "latency (ms)", "speed-up",
             "accuracy as pruned", "accuracy one-shot", "accuracy fine-tuned", "verified"])

        def percent(value: float | None) -> str:
            return "—" if value is None else f"{value:.1%}"

        def tuned(row: ComparisonRow) -> str:
            spread = row.fine_tuned_range
            return percent(row.accuracy_fine_tuned) + (
                f" ({spread[0]:.1%}–{spread[1]:.1%})" if spread else "")

        for r in self.rows:
            table.rows.append([r.method, f"{r.params:,}", f"{1 - r.flops / base.flops:.1%}",
                               str(r.latency), speedup_text(r.speedup),
                               percent(r.accuracy_as_pruned), f"{r.accuracy_one_shot:.1%}",
                               tuned(r), verdict(r.verified, r.checked)])
        return table

    def _seeds_text(self) -> str:
        seeds = max((len(r.fine_tuned_runs) for r in self.rows), default=1)
        return (f", {seeds} seeds (the mean, and the lowest–highest)" if seeds > 1 else "")

    def to_markdown(self) -> str:
        return self.table().to_markdown()

    def __str__(self) -> str:
        return self.table().to_text()

    def plot(self, path: str | Path) -> Path:
        """Accuracy per method (as pruned, one-shot, fine-tuned) beside its measured speed-up."""
        figure = self.figure()
        return save(figure, path)

    def figure(self):
        """The plot as a matplotlib ``Figure`` (not attached to pyplot): one row per method;
        left, its accuracy at each stage as bars; right, its speed-up over the unpruned model
        with the 95% interval, and the FLOPs it removed."""
        rows = self.rows
        figure = new_figure(11, 0.42 * len(rows) + 2.0)
        accuracy_axes, speed_axes = figure.subplots(
            1, 2, sharey=True, gridspec_kw={"width_ratios": [3, 2]})
        positions = list(range(len(rows)))[::-1]  # the first row on top
        stages = [("as pruned", "accuracy_as_pruned", "#c6dbef"),
                  ("one-shot", "accuracy_one_shot", "#6baed6"),
                  ("fine-tuned", "accuracy_fine_tuned", "#08519c")]
        height = 0.8 / len(stages)
        for offset, (label, name, colour) in enumerate(stages):
            values = [getattr(r, name) for r in rows]
            shifted = [y + (1 - offset) * height for y in positions]
            spread = ([[0 if r.fine_tuned_range is None else (v - r.fine_tuned_range[0]) * 100
                        for r, v in zip(rows, values)],
                       [0 if r.fine_tuned_range is None else (r.fine_tuned_range[1] - v) * 100
                        for r, v in zip(rows, values)]]
                      if name == "accuracy_fine_tuned" else None)
            accuracy_axes.barh(shifted, [0 if v is None else v * 100 for v in values], height,
                               color=colour, label=label, xerr=spread, capsize=2)
        accuracy_axes.set_yticks(positions, [r.method for r in rows])
        accuracy_axes.set_xlim(0, 100)
        accuracy_axes.set_xlabel("test accuracy (%)")
        # an empty band below the last method holds the legend, clear of every bar
        accuracy_axes.set_ylim(-1.6, len(rows) - 0.4)
        accuracy_axes.legend(loc="lower center", fontsize=8, ncol=3, frameon=False)
        base = self.baseline
        reach = max([r.speedup.high for r in rows if r.speedup is not None] or [1.0])
        for y, r in zip(positions, rows):
            speed = r.speedup
            value = 1.0 if speed is None else speed.speedup
            error = ([[0], [0]] if speed is None
                     else [[value - speed.low], [speed.high - value]])
            colour = "#999999" if speed is None or speed.within_noise else "#31a354"
            speed_axes.barh(y, value, 0.6, color=colour, xerr=error, capsize=3)
            removed = 1 - r.flops / base.flops
            # the table's own words ("≈ 1 (0.97–1.05)"), right of the longest error bar
            note = "unpruned" if speed is None else (
                f"{speedup_text(speed)}, FLOPs −{removed:.0%}")
            speed_axes.text(reach * 1.04, y, note, va="center", fontsize=8, color="black")
        speed_axes.set_xlim(0, reach * 2.1)
        speed_axes.axvline(1.0, color="black", linestyle=":", linewidth=1)
        speed_axes.set_xlabel("measured speed-up over unpruned (95% CI)")
        speed_axes.set_title(self.timing, fontsize=8)
        accuracy_axes.set_title(f"FLOPs budget: remove {self.flops_target:.0%} (each row: what "
                                f"it removed); {self.finetune_epochs} fine-tuning epochs",
                                fontsize=9)
        return figure


def speedup_text(speedup: Speedup | None) -> str:
    """``1.84× (1.80–1.88)``, ``≈ 1 (0.97–1.05)`` within the noise, ``—`` for none."""
    if speedup is None:
        return "—"
    return speedup_cell(speedup.speedup, speedup.low, speedup.high)


def verdict(verified: bool | None, checked: str = "") -> str:
    """A check's outcome with what it checked: ``yes (equivalent)``, ``yes (blocks
    bypassed)``, ``NO (…)``, or ``n/a`` for a prune no check could judge."""
    if verified is None:
        return "n/a"
    return ("yes" if verified else "NO") + (f" ({checked})" if checked else "")


@keyword_only
def compare(model: nn.Module, example_inputs: Any, train_data: Iterable, eval_data: Iterable,
            *, flops_target: float = 0.5, finetune_epochs: int = 5, lr: float = 1e-3,
            methods: dict[str, Any] | None = None, data: Iterable | None = None,
            timing_inputs: Any = None, threads: int | None = None, seed: int = 0,
            seeds: int = 1, recalibrate: bool = True,
            progress: ProgressOption = None) -> Comparison:
    """Run every method on its own copy of ``model``; the model itself is not changed.

    Args:
        model: a trained classifier.
        example_inputs: inputs for tracing and FLOP counting.
        train_data: ``(inputs, labels)`` batches for fine-tuning.
        eval_data: ``(inputs, labels)`` batches for accuracy.
        flops_target: the fraction of FLOPs every method removes.
        finetune_epochs: the same fine-tuning budget for every method (0: one-shot only).
        methods: ``{label: method}``; by default ``default_methods(flops_target)``. A method
            may also be your own function ``prune(model, example_inputs, data)`` that prunes
            in place (another library, say); its rows are marked as not verified.
        data: calibration batches for data-driven criteria (default: ``train_data``).
        timing_inputs: the batch latency is measured on (default: ``example_inputs``).
        threads: the threads latency is measured with (default: as set now).
        seed: the seed of the first fine-tuning run (its data order).
        seeds: fine-tune each pruned model this many times, from the same pruned weights
            with seeds ``seed``, ``seed + 1`` … (a loader with its own generator draws its
            next orders instead): the row shows the mean accuracy and the lowest and
            highest (the first run's model is the one timed).
        recalibrate: re-estimate BatchNorm statistics on ``data`` after pruning, before the
            one-shot evaluation (no weights change).

    Example:
        >>> table = pk.compare(model, x, train, test, flops_target=0.5, finetune_epochs=5)
        >>> print(table.to_markdown()); table.plot("comparison.png")
    """
    check_whole(seeds, "seeds")
    methods = methods if methods is not None else default_methods(flops_target)
    data = data if data is not None else train_data
    timing_inputs = timing_inputs if timing_inputs is not None else example_inputs
    model.eval()

    result = Comparison(flops_target, finetune_epochs, recalibrate)
    unpruned = evaluate_accuracy(model, eval_data)
    rows = [ComparisonRow("unpruned", count_params(model), count_flops(model, example_inputs),
                          None, unpruned, None, None, unpruned)]  # nothing to check
    pruned_models = []
    report = reporter(progress)
    for index, (label, method) in enumerate(methods.items()):
        report(Step("comparing methods", index, len(methods),
                    f"{label}: prune to {flops_target:.0%} fewer FLOPs"))
        pruned = copy.deepcopy(model)
        if callable(method):
            method(pruned, example_inputs, data)
            verified, checked = None, ""  # nothing to check it against
        else:
            outcome = prune(pruned, example_inputs, method, data=data)
            # the method's own check: equivalence, or for layers "blocks bypassed"
            verified = outcome.report.ok if outcome.report is not None else None
            checked = getattr(outcome.report, "checked", "")
        as_pruned = one_shot = evaluate_accuracy(pruned, eval_data)
        if recalibrate:
            recalibrate_norms(pruned, data)
            one_shot = evaluate_accuracy(pruned, eval_data)
        runs = []
        if finetune_epochs > 0:
            report(Step("comparing methods", index, len(methods),
                        f"{label}: fine-tune {finetune_epochs} epochs"
                        + (f", {seeds} seeds" if seeds > 1 else "")))
            starts = [pruned] + [copy.deepcopy(pruned) for _ in range(seeds - 1)]
            for offset, start in enumerate(starts):
                torch.manual_seed(seed + offset)
                train_classifier(start, train_data, epochs=finetune_epochs, lr=lr)
                runs.append(evaluate_accuracy(start, eval_data))
            del starts
        pruned.eval()
        rows.append(ComparisonRow(label, count_params(pruned),
                                  count_flops(pruned, example_inputs), None, one_shot,
                                  sum(runs) / len(runs) if runs else None, verified,
                                  as_pruned, checked=checked, fine_tuned_runs=runs))
        pruned_models.append(pruned)
    report(Step("comparing methods", len(methods), len(methods)))
    report(Step("timing", detail=f"all {len(rows)} models interleaved"))
    # one set of rounds for the whole table: every model runs once per round, so each
    # row's speed-up is against the unpruned model in the very same rounds
    speeds = speedups_over_first([model] + pruned_models, timing_inputs, threads=threads,
                                 min_time=2.0, min_rounds=20)
    rows[0].latency = (speeds[0].before if speeds else
                       measure_latency(model, timing_inputs, threads=threads))
    for row, speed in zip(rows[1:], speeds):
        row.latency, row.speedup = speed.after, speed
    result.timing = speeds[0].conditions() if speeds else ""
    result.rows = rows
    finish(report)
    return result
