"""Sensitivity analysis (Li et al. 2017): prune each group alone at several ratios and measure.

Layers whose accuracy collapses when pruned alone should be spared (given an override ratio
of 0); the rest can take more. Every trial is applied in place and rolled back, so the model
is never changed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from torch import nn

from .apply import evaluate_applied
from .graph.dependency import DependencyGraph
from .methods import FilterPruning, _ChannelMethod
from .modes import evaluating
from .planner import plan_from_keep, score_groups
from .recover import evaluate_accuracy


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

    def to_dict(self) -> dict[str, Any]:
        return {"baseline": self.baseline, "rows": [asdict(r) for r in self.rows]}

    def by_group(self) -> dict[str, list[SensitivityRow]]:
        """Each group's rows in the order tried (groups in model order)."""
        groups: dict[str, list[SensitivityRow]] = {}
        for row in self.rows:
            groups.setdefault(row.group, []).append(row)
        return groups

    def to_markdown(self) -> str:
        ratios = sorted({r.ratio for r in self.rows})
        lines = [f"Accuracy with one group pruned (unpruned: {self.baseline:.1%})", "",
                 "| group | channels | " + " | ".join(f"ratio {r:g}" for r in ratios) + " |",
                 "|---|---|" + "---|" * len(ratios)]
        for group, rows in self.by_group().items():
            cells = {r.ratio: r for r in rows}
            lines.append(f"| {group} | {rows[0].channels} | "
                         + " | ".join(f"{cells[r].accuracy:.1%}" for r in ratios) + " |")
        return "\n".join(lines) + "\n"

    def plot(self, path: str | Path) -> Path:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figure, axes = plt.subplots(figsize=(7, 4))
        for group, rows in self.by_group().items():
            axes.plot([r.ratio for r in rows], [r.accuracy * 100 for r in rows], "o-",
                      label=group)
        axes.axhline(self.baseline * 100, color="black", linestyle=":", label="unpruned")
        axes.set_xlabel("fraction of the group's channels removed")
        axes.set_ylabel("accuracy (%)")
        axes.legend(fontsize=7, ncol=2)
        figure.tight_layout()
        path = Path(path)
        figure.savefig(path, dpi=120)
        plt.close(figure)
        return path


def sensitivity(model: nn.Module, example_inputs: Any, eval_data: Iterable | None = None,
                ratios: tuple[float, ...] = (0.25, 0.5, 0.75),
                method: _ChannelMethod | None = None,
                evaluate: Callable[[nn.Module], float] | None = None,
                data: Iterable | None = None,
                progress: Callable[[str], None] = lambda message: None) -> Sensitivity:
    """Accuracy (or ``evaluate(model)``) with each group alone pruned at each ratio.

    Example:
        >>> table = pk.sensitivity(model, x, test_batches)
        >>> print(table.to_markdown()); table.plot("sensitivity.png")
    """
    method = method or FilterPruning(criterion="l1")
    if evaluate is None:
        def evaluate(candidate: nn.Module) -> float:
            return evaluate_accuracy(candidate, eval_data)
    with evaluating(model):
        graph = DependencyGraph(model, example_inputs)
        scores = score_groups(graph, method, data)
        result = Sensitivity(evaluate(model))
        for index, group in enumerate(graph.groups, 1):
            progress(f"group {index}/{len(graph.groups)}: {group.modules()[0]}")
            for ratio in ratios:
                n_keep = method.channels_to_keep(group.size, ratio)
                keep = {group.axis: scores[group.axis].topk(n_keep).indices.sort().values}
                accuracy = evaluate_applied(model, plan_from_keep(graph, keep, {}), evaluate)
                result.rows.append(SensitivityRow(group.modules()[0], group.size, ratio,
                                                  accuracy))
    return result
