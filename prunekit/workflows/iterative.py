"""Iterative pruning: reach a target in several steps, fine-tuning between them.

Pruning a little, letting the network recover, and pruning again keeps more accuracy than
removing everything at once. Each step's plan is chained onto the previous ones, so the
final model saves and reloads with one plan.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from torch import nn

from ..api import prune
from ..core.arguments import check_whole
from ..core.progress import ProgressOption, Step, finish, reporter
from ..core.tables import ResultTable
from ..errors import ConfigError
from ..measure.latency import compare_latency, speedup_cell
from ..measure.model import Measurement, count_flops, count_params
from ..methods import PruningMethod
from ..plan import Plan
from ..recover import evaluate_accuracy, train_classifier
from ..recover.distill import Distillation, run_distillation
from .plots import new_figure, save


@dataclass
class StepRecord:
    """The model after one step (step 0 is the unpruned model)."""

    step: int
    params: int
    flops: int
    sparsity: float  # fraction of the original parameters removed
    flop_reduction: float
    accuracy: float | None
    # against the unpruned model, timed interleaved in the same rounds (with timing_inputs)
    speedup: float | None = None
    speedup_low: float | None = None  # its 95% interval
    speedup_high: float | None = None
    distill_loss: float | None = None  # the last step's loss when the step was distilled


@dataclass
class History:
    """What iterative pruning did: ``records[0]`` is the unpruned model, then one per step."""

    records: list[StepRecord] = field(default_factory=list)
    plan: Plan = field(default_factory=Plan)

    @property
    def steps(self) -> list[StepRecord]:
        return self.records[1:]

    def to_dict(self) -> dict[str, Any]:
        return {"records": [dataclasses.asdict(r) for r in self.records]}

    def table(self) -> ResultTable:
        """One row per step (step 0: the unpruned model): what ``print`` and the command line
        show."""
        timed = any(r.speedup is not None for r in self.records)
        table = ResultTable("iterative pruning, step by step",
                            ["step", "params", "params removed", "FLOPs removed",
                             "test accuracy", "speed-up (95% CI)"],
                            notes=["speed-up: against the unpruned model, timed interleaved"]
                            if timed else [])
        for r in self.records:
            table.rows.append([str(r.step), f"{r.params:,}", f"{r.sparsity:.1%}",
                               f"{r.flop_reduction:.1%}",
                               "—" if r.accuracy is None else f"{r.accuracy:.1%}",
                               speedup_cell(r.speedup, r.speedup_low, r.speedup_high)])
        return table

    def __str__(self) -> str:
        return self.table().to_text()

    def plot(self, path: str | Path) -> Path:
        """Accuracy and sparsity per step, as a PNG."""
        return save(self.figure(), path)

    def figure(self):
        """The plot as a matplotlib ``Figure`` (not attached to pyplot)."""
        steps = [r.step for r in self.records]
        figure = new_figure(6, 4)
        left = figure.subplots()
        left.plot(steps, [r.sparsity * 100 for r in self.records], "o-", label="params removed")
        left.plot(steps, [r.flop_reduction * 100 for r in self.records], "s-", label="FLOPs removed")
        left.set_xlabel("step (0: unpruned)")
        left.set_xticks(steps)  # whole steps only
        left.set_ylabel("% removed")
        left.set_ylim(0, 100)
        if all(r.accuracy is not None for r in self.records):
            right = left.twinx()
            accuracy = [r.accuracy * 100 for r in self.records]
            right.plot(steps, accuracy, "^-", color="tab:red", label="accuracy")
            for step, value in zip(steps, accuracy):
                right.annotate(f"{value:.1f}", (step, value), textcoords="offset points",
                               xytext=(0, -13), ha="center", fontsize=8, color="tab:red")
            # at least 10 points of accuracy on the axis: a 0.4-point wobble stays small
            top = min(100.0, max(accuracy) + 2)
            right.set_ylim(min(min(accuracy) - 2, top - 10), top)
            right.set_ylabel("accuracy (%)", color="tab:red")
            handles = left.get_legend_handles_labels()
            extra = right.get_legend_handles_labels()
            left.legend(handles[0] + extra[0], handles[1] + extra[1], loc="lower right")
        else:
            left.legend(loc="lower right")
        return figure


def iterative_prune(model: nn.Module, example_inputs: Any, method: PruningMethod, steps: int,
                    *, train_data: Iterable | None = None, eval_data: Iterable | None = None,
                    finetune_epochs: int = 1, lr: float = 1e-3,
                    finetune: Callable[[nn.Module, int], None] | None = None,
                    evaluate: Callable[[nn.Module], float] | None = None,
                    data: Iterable | None = None, timing_inputs: Any = None,
                    threads: int | None = None,
                    distill: Distillation | None = None, distill_data: Iterable | None = None,
                    progress: ProgressOption = None) -> History:
    """Prune ``model`` in place to ``method``'s target in ``steps`` steps, fine-tuning after each.

    Args:
        model: the model; pruned and fine-tuned in place.
        example_inputs: as for ``pk.prune``.
        method: the final target: ``ratio``, ``flops_target`` or ``params_target``.
        steps: how many prune/fine-tune rounds.
        train_data: ``(inputs, labels)`` batches for the built-in classification trainer
            (``finetune_epochs`` epochs of Adam at ``lr`` after each step).
        eval_data: ``(inputs, labels)`` batches; accuracy is recorded after every step.
        finetune: your own ``finetune(model, step)`` instead of the built-in trainer.
        evaluate: your own ``evaluate(model) -> float`` instead of accuracy on ``eval_data``.
        data: calibration batches for data-driven criteria.
        distill: recover after each step by distilling from a copy of the unpruned model
            (``pk.Distillation(steps=…, …)``; the chained plan maps the remaining blocks
            to theirs), on ``distill_data`` (unlabelled batches; ``data`` without it).
            Runs before ``finetune`` or the built-in trainer, if those are given too.
        progress: ``True`` shows the step and the time left on stderr; a callable receives
            a ``pk.Step`` after each piece of each step.
        timing_inputs: with these, every step's model is timed against a copy of the
            unpruned model (held for the run), interleaved in the same rounds
            (``pk.compare_latency``), on ``threads`` threads.

    Returns:
        A ``History`` with one record for the unpruned model and one per step, and the
        chained plan (``history.plan``) for ``pk.save``.

    Example:
        >>> history = pk.iterative_prune(model, x, pk.FilterPruning(flops_target=0.5), steps=4,
        ...                              train_data=train, eval_data=test, finetune_epochs=2)
        >>> history.plot("history.png")
    """
    check_whole(steps, "steps")
    if finetune is None and train_data is not None:
        def finetune(pruned: nn.Module, step: int) -> None:
            train_classifier(pruned, train_data, epochs=finetune_epochs, lr=lr)
    if evaluate is None and eval_data is not None:
        def evaluate(pruned: nn.Module) -> float:
            return evaluate_accuracy(pruned, eval_data)

    if distill is not None and not isinstance(distill, Distillation):
        raise ConfigError(f"distill must be a pk.Distillation, got {type(distill).__name__}")
    if distill is not None and distill_data is None and data is None:
        raise ConfigError("distill needs batches: pass distill_data= (or data=)")
    report = reporter(progress)
    base = Measurement(count_params(model), count_flops(model, example_inputs))
    held = timing_inputs is not None or distill is not None
    unpruned = copy.deepcopy(model).eval() if held else None

    def record(step: int, size: Measurement) -> StepRecord:
        row = StepRecord(step, size.params, size.flops, 1 - size.params / base.params,
                         1 - size.flops / max(base.flops, 1),
                         evaluate(model) if evaluate is not None else None)
        if timing_inputs is not None and step > 0:
            report(Step("iterative pruning", step - 1, steps, "timing"))
            speed = compare_latency(unpruned, model, timing_inputs, threads=threads)
            row.speedup, row.speedup_low, row.speedup_high = speed.speedup, speed.low, speed.high
        return row

    history = History([record(0, base)])
    size = base
    units = method.prunable_size(model, example_inputs)
    for step in range(1, steps + 1):
        removed = {"params": 1 - size.params / max(base.params, 1),
                   "flops": 1 - size.flops / max(base.flops, 1)}
        if units:  # the method counts what it prunes: its ratio's steps end on target
            left = units if step == 1 else method.prunable_size(model, example_inputs) or 0
            removed["units"] = 1 - left / units
        this_step = method.step(step, steps, removed)
        if this_step is not None:
            report(Step("iterative pruning", step - 1, steps, "pruning"))
            result = prune(model, example_inputs, this_step, data=data)
            history.plan = result.plan if history.plan.is_empty else history.plan.then(result.plan)
            size = result.after
        recovery = None
        if distill is not None:
            report(Step("iterative pruning", step - 1, steps, "distilling"))
            folder = distill.checkpoint and Path(distill.checkpoint) / f"step-{step}"
            recovery = run_distillation(model, unpruned, distill_data if distill_data is not None
                                        else data, dataclasses.replace(
                                            distill, plan=history.plan, checkpoint=folder))
        if finetune is not None:  # fine-tuning changes weights, not sizes
            report(Step("iterative pruning", step - 1, steps, "fine-tuning"))
            finetune(model, step)
        model.eval()
        history.records.append(record(step, size))
        if recovery is not None:
            history.records[-1].distill_loss = recovery.losses[-1]
        report(Step("iterative pruning", step, steps))
    finish(report)
    return history
