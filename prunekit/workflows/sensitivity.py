"""Sensitivity analysis (Li et al. 2017): prune each group alone at several ratios and measure.

Layers whose accuracy collapses when pruned alone should be spared (given an override ratio
of 0); the rest can take more. Every trial is applied in place and rolled back, so the model
is never changed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch import nn

from ..core.arguments import keyword_only
from ..core.calls import evaluating
from ..core.progress import ProgressOption, Step, finish, reporter
from ..core.tables import ResultTable
from ..methods import FilterPruning, PruneContext, PruningMethod
from ..recover import evaluate_accuracy
from ..recover.norms import recalibrate_norms
from ..surgery.apply import evaluate_applied
from .plots import new_figure, save


@dataclass
class SensitivityRow:
    group: str  # the first module of the group
    channels: int
    ratio: float
    accuracy: float


@dataclass
class Sensitivity:
    baseline: float
    rows: list[SensitivityRow] = field(default_factory=list)
    # whether each pruned model's BatchNorm statistics were re-estimated on the calibration
    # data before it was evaluated (without, a group can look fragile only because its
    # later norms still hold the unpruned model's statistics)
    recalibrated: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"baseline": self.baseline, "recalibrated": self.recalibrated,
                "rows": [asdict(r) for r in self.rows]}

    def by_group(self) -> dict[str, list[SensitivityRow]]:
        """Each group's rows in the order tried (groups in model order)."""
        groups: dict[str, list[SensitivityRow]] = {}
        for row in self.rows:
            groups.setdefault(row.group, []).append(row)
        return groups

    def table(self) -> ResultTable:
        """Accuracy per group and ratio: what ``print``, ``to_markdown`` and the command line
        show."""
        ratios = sorted({r.ratio for r in self.rows})
        norms = ("BatchNorm statistics re-estimated on the calibration data after each "
                 "prune" if self.recalibrated else "BatchNorm statistics NOT re-estimated "
                 "(no calibration data): a low figure may recover with recalibrate_norms")
        table = ResultTable(f"Accuracy with one group pruned (unpruned: {self.baseline:.1%}; "
                            f"{norms})", ["group", "channels", *(f"ratio {r:g}" for r in ratios)])
        for group, rows in self.by_group().items():
            cells = {r.ratio: r for r in rows}
            table.rows.append([group, str(rows[0].channels),
                               *(f"{cells[r].accuracy:.1%}" for r in ratios)])
        return table

    def to_markdown(self) -> str:
        return self.table().to_markdown()

    def __str__(self) -> str:
        return self.table().to_text()

    def plot(self, path: str | Path) -> Path:
        figure = self.figure()
        return save(figure, path)

    def figure(self):
        """The plot as a matplotlib ``Figure`` (not attached to pyplot)."""
        figure = new_figure(9, 4)
        axes = figure.subplots()
        ratios = sorted({row.ratio for row in self.rows})
        for group, rows in self.by_group().items():
            axes.plot([r.ratio for r in rows], [r.accuracy * 100 for r in rows], "o-",
                      label=group)
        axes.axhline(self.baseline * 100, color="black", linestyle=":", label="unpruned")
        axes.set_xticks(ratios)  # the ratios tried, nothing between
        axes.set_xlabel("fraction of the group's channels removed")
        axes.set_ylabel("accuracy (%)")
        axes.set_title("each group pruned alone; a group is named by its first module",
                       fontsize=9)
        # beside the plot, not over the lines
        axes.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        return figure


@keyword_only
def sensitivity(model: nn.Module, example_inputs: Any, eval_data: Iterable | None = None, *,
                ratios: tuple[float, ...] = (0.25, 0.5, 0.75),
                method: PruningMethod | None = None,
                evaluate: Callable[[nn.Module], float] | None = None,
                data: Iterable | None = None, loss_fn=None,
                progress: ProgressOption = None,
                recalibrate: bool = True) -> Sensitivity:
    """Accuracy (or ``evaluate(model)``) with each of the method's candidates alone pruned at
    each ratio (for ``LayerPruning``: each candidate layer removed); the model is not changed.
    With ``data`` and ``recalibrate``, each pruned model's BatchNorm statistics are
    re-estimated on ``data`` before it is evaluated (``pk.recalibrate_norms``), as they would
    be after pruning; ``result.recalibrated`` says whether they were.

    Example:
        >>> table = pk.sensitivity(model, x, test_batches)
        >>> print(table.to_markdown()); table.plot("sensitivity.png")
    """
    method = method or FilterPruning(criterion="l1")
    report = reporter(progress)
    if evaluate is None:
        def evaluate(candidate: nn.Module) -> float:
            return evaluate_accuracy(candidate, eval_data)
    context = PruneContext(data=list(data) if data is not None else None, loss_fn=loss_fn)
    calibration = context.data if recalibrate else None
    score = evaluate if not calibration else _recalibrated(evaluate, calibration)
    with evaluating(model):
        result = Sensitivity(evaluate(model), recalibrated=bool(calibration) and _has_norms(model))
        trials = list(method.trials(model, example_inputs, ratios, context))
        for index, trial in enumerate(trials, 1):
            report(Step("sensitivity trials", index - 1, len(trials),
                        f"{trial.label} at {trial.ratio:g}"))
            # nothing removed, nothing to re-estimate: the unpruned model's own accuracy
            accuracy = evaluate_applied(model, trial.plan,
                                        evaluate if _removes_nothing(trial.plan) else score)
            result.rows.append(SensitivityRow(trial.label, trial.size, trial.ratio, accuracy))
        report(Step("sensitivity trials", len(trials), len(trials)))
    finish(report)
    return result


def _removes_nothing(plan) -> bool:
    """Every tensor keeps every index (a ratio of 0), and no layer goes."""
    return not plan.layers and all(
        dim < len(plan.shapes.get(name, [])) and len(kept) == plan.shapes[name][dim]
        for name, dims in plan.tensors.items() for dim, kept in dims.items())


def _norms(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


def _has_norms(model: nn.Module) -> bool:
    return bool(_norms(model))


def _recalibrated(evaluate: Callable[[nn.Module], float], data: list
                  ) -> Callable[[nn.Module], float]:
    """``evaluate`` after the norms' statistics are re-estimated on ``data``; the statistics
    are put back afterwards, since a norm the trial did not prune is the model's own."""
    def score(candidate: nn.Module) -> float:
        saved = [(b, b.clone()) for m in _norms(candidate) for b in m.buffers()]
        try:
            recalibrate_norms(candidate, data)
            return evaluate(candidate)
        finally:
            with torch.no_grad():
                for buffer, value in saved:
                    buffer.copy_(value)
    return score
