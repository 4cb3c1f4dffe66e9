"""One parameters budget spent across several dimensions of a model, split by search.

Where should 20% of a transformer's parameters come from: its hidden size, its attention
heads, its MLP neurons, whole layers, or some of each (Minitron and Puzzle search this)?
``pk.allocate`` tries every split of the budget on a grid (shares of ``step``), prunes a
copy of the model by each, dimension after dimension, and scores the copy on held-out
batches against the unpruned model (the KL divergence of its next-token or class
distribution, or the relative squared error of other outputs). The best copy and its plan
come back; the model passed in is left as it was.

A dimension is a function ``(model as pruned so far, parameters to remove) -> method``;
``decoder_dimensions()`` gives those of a Hugging Face decoder with prunekit's best
method for each (``benchmarks/results/llm.md``).
"""

from __future__ import annotations

import copy
import itertools
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch
from torch import nn

from ..api import prune
from ..candidates.layers import find_block_stack
from ..core.arguments import check_number
from ..core.batches import split_batch
from ..core.calls import call_model, evaluating
from ..core.progress import ProgressOption, Step, finish, reporter
from ..core.tables import ResultTable
from ..errors import ConfigError, PruneError
from ..measure.model import count_params
from ..methods import ChannelPruning, HeadPruning, HiddenPruning, LayerPruning, WidthPruning
from ..methods.base import PruningMethod
from ..plan import Plan
from ..recover.losses import pick_output

Dimension = Callable[[nn.Module, int], "PruningMethod | None"]
SHORT = 0.02  # a split that removes less than the target by more than this is not eligible


@dataclass
class AllocationRow:
    shares: dict[str, float]
    removed: float  # of the counted parameters (0 where the split failed)
    score: float  # lower is better
    seconds: float
    error: str = ""


@dataclass
class Allocation:
    """Every split tried and the best one: ``model`` (pruned by it) and ``plan`` (one plan
    for all its steps, for ``pk.save(allocation.model, folder, allocation.plan)``)."""

    rows: list[AllocationRow]
    best: int
    model: nn.Module | None
    plan: Plan | None
    score_name: str = "KL"
    methods: list[str] = field(default_factory=list)  # the best split's steps

    def table(self) -> ResultTable:
        names = list(self.rows[0].shares) if self.rows else []
        cells = [[*(f"{row.shares[n]:.0%}" for n in names), f"{row.removed:.1%}",
                  _short(row.error) or f"{row.score:.4g}", f"{row.seconds:.0f} s",
                  "best" if index == self.best else ""]
                 for index, row in enumerate(self.rows)]
        table = ResultTable("splits of the budget tried",
                            [*(f"{n} share" for n in names), "removed",
                             f"held-out {self.score_name}", "time", ""],
                            cells, align="r" * (len(names) + 3) + "l")
        table.notes += [f"best: {step}" for step in self.methods]
        return table

    def __str__(self) -> str:
        return self.table().to_text()


def _short(text: str, width: int = 40) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"


def decoder_dimensions(depth_criterion: str = "angular",
                       count: Callable[[nn.Module], int] = count_params
                       ) -> dict[str, Dimension]:
    """A Hugging Face decoder's hidden size (by rotation), attention heads, MLP neurons
    (the re-fit criterion, with its re-fit), heads and MLP neurons ranked together
    (``"width"``: FLAP's adaptive structure with its bias compensation, ``WidthPruning``)
    and layers, in that order: the rotation reads the unpruned norms, and layers are scored
    last, on the model as it will be. Name the ones to search: ``"width"`` covers what
    ``"heads"`` and ``"mlp"`` do, ranked on one scale."""
    def by_target(make: Callable[..., PruningMethod]) -> Dimension:
        def dimension(model: nn.Module, amount: int) -> PruningMethod:
            # methods' params_target counts every parameter; a count that leaves the
            # embeddings out removes the same amount, since these leave them alone
            return make(params_target=min(amount / count_params(model), 0.9))
        return dimension

    def hidden(model: nn.Module, amount: int) -> PruningMethod:
        if count is count_params:  # the untied output layer counted as the plan measures it
            return HiddenPruning(params_target=min(amount / count_params(model), 0.9),
                                 rotate=True, round_to=8)
        # every counted matrix reads or writes the hidden states: it narrows as they do
        return HiddenPruning(min(amount / count(model), 0.9), rotate=True, round_to=8)

    def depth(model: nn.Module, amount: int) -> PruningMethod | None:
        stack = find_block_stack(model)
        if stack is None:
            raise ConfigError("decoder_dimensions: the model has no stack of blocks to remove")
        blocks = model.get_submodule(stack)
        each = sum(p.numel() for p in blocks[0].parameters())
        n = min(round(amount / each), len(blocks) - 1)
        return LayerPruning(n, depth_criterion) if n else None

    return {"hidden": hidden,
            "heads": by_target(lambda **target: HeadPruning(criterion="taylor", **target)),
            "mlp": by_target(lambda **target: ChannelPruning(
                criterion="reconstruction", reconstruct=True, round_to=8, **target)),
            "width": by_target(lambda **target: WidthPruning(bias_compensation=True,
                                                             **target)),
            "depth": depth}


def splits(names: list[str], step: float) -> list[dict[str, float]]:
    """Every way to give each name a multiple of ``step`` that sums to 1."""
    parts = round(1 / step)
    if abs(parts * step - 1) > 1e-9:
        raise ConfigError(f"step must divide 1 (0.5, 0.25, 0.2 …), got {step!r}")
    found = []
    for cut in itertools.product(range(parts + 1), repeat=len(names)):
        if sum(cut) == parts:
            found.append({name: c / parts for name, c in zip(names, cut)})
    return found


def allocate(model: nn.Module, example_inputs: Any, dimensions: dict[str, Dimension], *,
             params_target: float, data: Iterable, held_out: Iterable, step: float = 0.25,
             count: Callable[[nn.Module], int] = count_params,
             progress: ProgressOption = None) -> Allocation:
    """Remove ``params_target`` of the model's parameters (as ``count`` counts them),
    split across ``dimensions`` in the way that leaves the lowest held-out loss.

    Args:
        model: the unpruned model; left as it was (each split prunes a copy).
        example_inputs: as for ``pk.prune``.
        dimensions: ``{name: dimension}`` in the order they are pruned; a dimension is
            ``(model as pruned so far, parameters to remove) -> method`` (or None for
            nothing), e.g. ``pk.decoder_dimensions()``.
        params_target: the fraction of the counted parameters to remove.
        data: calibration batches every method reads.
        held_out: batches the splits are scored on (never calibrated on).
        step: each dimension's share of the budget is a multiple of this; the number of
            splits tried grows fast with the dimensions (4 dimensions at 0.25: 35 splits).
        count: what counts as a parameter (every one, by default).
        progress: ``True`` shows each split as it is tried; a callable gets a ``pk.Step``.

    Returns:
        An ``Allocation``: every split's removal and score, and the best split's model and
        plan.
    """
    check_number(params_target, "params_target", below=1)
    if not dimensions:
        raise ConfigError("dimensions: give at least one, e.g. pk.decoder_dimensions()")
    data, held_out = list(data), [split_batch(b)[0] for b in held_out]
    if not held_out:
        raise ConfigError("held_out: give at least one batch to score the splits on")
    report = reporter(progress)
    base = count(model)
    reference = _outputs(model, held_out)
    tried = splits(list(dimensions), step)
    rows: list[AllocationRow] = []
    best: tuple[int, nn.Module, Plan, list[str]] | None = None
    for index, shares in enumerate(tried):
        label = ", ".join(f"{n} {s:.0%}" for n, s in shares.items() if s)
        report(Step("trying splits of the budget", index, len(tried), label))
        started = time.perf_counter()
        candidate = copy.deepcopy(model)
        try:
            plan, steps = _prune_by(candidate, example_inputs, dimensions, shares,
                                    params_target * base, data)
        except PruneError as error:
            rows.append(AllocationRow(shares, 0.0, float("inf"),
                                      time.perf_counter() - started, str(error)))
            continue
        removed = 1 - count(candidate) / base
        if removed < params_target - SHORT:  # rounding, or a dimension that cannot give more
            rows.append(AllocationRow(shares, removed, float("inf"),
                                      time.perf_counter() - started,
                                      f"removes {removed:.1%}: short of the target"))
            continue
        score = _score(candidate, held_out, reference)
        rows.append(AllocationRow(shares, removed, score, time.perf_counter() - started))
        if best is None or score < rows[best[0]].score:
            best = (index, candidate, plan, steps)
        del candidate
    report(Step("trying splits of the budget", len(tried), len(tried)))
    finish(report)
    score_name = "KL" if reference[0][1] == "logits" else "relative error"
    if best is None:
        return Allocation(rows, -1, None, None, score_name)
    return Allocation(rows, best[0], best[1], best[2], score_name, best[3])


def _prune_by(model: nn.Module, example_inputs: Any, dimensions: dict[str, Dimension],
              shares: dict[str, float], budget: float, data: list) -> tuple[Plan, list[str]]:
    """Prune each dimension by its share of ``budget`` (parameters), in order; one plan."""
    plan: Plan | None = None
    steps = []
    for name, dimension in dimensions.items():
        if not shares[name]:
            continue
        method = dimension(model, int(shares[name] * budget))
        if method is None:
            continue
        result = prune(model, example_inputs, method, data=data)
        plan = result.plan if plan is None else plan.then(result.plan)
        steps.append(method.summary())
    return plan or Plan(), steps


@torch.no_grad()
def _outputs(model: nn.Module, batches: list) -> list[tuple[torch.Tensor, str]]:
    with evaluating(model):
        return [pick_output(call_model(model, b), b, "auto") for b in batches]


def _score(model: nn.Module, batches: list, reference: list[tuple[torch.Tensor, str]]) -> float:
    """The mean KL divergence from the reference's distribution (logits), or the squared
    error relative to the reference's energy (other outputs)."""
    total = 0.0
    for (want, kind), (got, _) in zip(reference, _outputs(model, batches)):
        if got.shape != want.shape:
            raise ConfigError(f"held_out: the pruned model's output is {tuple(got.shape)}, "
                              f"the unpruned model's {tuple(want.shape)}; a split is scored "
                              f"on outputs of one shape (logits, say)")
        want, got = want.double(), got.double()
        if kind == "logits":
            p = want.log_softmax(-1)
            total += float((p.exp() * (p - got.log_softmax(-1))).sum(-1).mean())
        else:
            total += float((got - want).pow(2).sum() / want.pow(2).sum().clamp_min(1e-12))
    return total / len(batches)
