"""Methods that remove channels of coupled groups: ``GroupPruning`` (their shared settings
and steps), ``FilterPruning`` and ``ChannelPruning``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterable

import torch
from torch import nn

from ..core.arguments import check_whole
from ..errors import ConfigError, PruneError, did_you_mean
from ..graph.dependency import DependencyGraph, Group, Member
from ..importance import ChannelView, get_criterion, streaming_names
from ..measure.latency import LatencyReached
from ..plan import Plan
from ..selection import channels as selection
from ..selection.budgets import ratio_for_budget, ratio_for_latency
from ..selection.group_plans import plan_from_keep
from ..selection.widths import LayerCall, WidthTable, layer_calls
from .base import Preview, PreviewRow, Proposal, PruningMethod, Trial, check_ratio
from .recovery import recovery_for


def _within(module: str, name: str) -> bool:
    return module == name or not name or module.startswith(name + ".")


# Widths a latency target keeps by default: a multiple of 8 channels. ResNet-50 pruned to half its
# FLOPs ran 1.45x faster at the widths the budget picked and 1.64x with them rounded to 8
# (eager, batch 1; 1.44x and 1.88x in ONNX Runtime): benchmarks/results/speed.md.
LATENCY_ROUND_TO = 8
MEASURED = "measured"  # round_to that times each layer shape for its fast widths


def check_module_names(model: nn.Module, names: Iterable[str], who: str) -> None:
    """Every name is a module of ``model``; a ``ConfigError`` with close matches otherwise."""
    modules = [name for name, _ in model.named_modules() if name]
    known = set(modules)
    for name in names:
        if name not in known and name != "":
            # (module paths share long prefixes: a stricter cutoff than for option values)
            raise ConfigError(f"{who}: the model has no module {name!r}"
                              + did_you_mean(name, modules, cutoff=0.6))


SHOWN_MEMBERS = 4  # a skipped group's members named in its one-line description


@dataclass
class GroupProposal(Proposal):
    """Kept channels per group of a traced graph; a piece is one group."""

    graph: DependencyGraph
    keep: dict[int, torch.Tensor]
    method: dict[str, Any]
    latency: LatencyReached | None = None  # what a latency target reached, as timed
    untied: list[str] = field(default_factory=list)  # tied names the plan gives own tensors

    @property
    def pieces(self) -> list[int]:
        return list(self.keep)

    def describe(self, piece: int) -> str:
        """The group in a line: its size and its first members (a group can couple dozens of
        tensors; ``result.skipped`` is read in a terminal)."""
        group = next((g for g in self.graph.all_groups if g.axis == piece), None)
        if group is None:
            return "?"
        shown = " => ".join(str(m) for m in group.members[:SHOWN_MEMBERS])
        more = len(group.members) - SHOWN_MEMBERS
        return (f"group {group.id}: {group.size} channels"
                f"{' (structural)' if group.structural else ''}: {shown}"
                + (f" (+{more} more)" if more > 0 else ""))

    def plan(self, pieces: list[int]) -> Plan:
        plan = plan_from_keep(self.graph, {a: self.keep[a] for a in pieces}, self.method)
        if plan.tensors:
            plan.untied = list(self.untied)
        return plan

    @property
    def unknown_ops(self) -> list:
        return list(self.graph.unknown_ops)

    @property
    def selections(self) -> list[str]:
        return list(self.graph.trace.selections)


@dataclass
class GroupPruning(PruningMethod):
    """Remove channels from groups of coupled channels: the shared settings and steps of
    ``FilterPruning``, ``ChannelPruning``, ``HeadPruning`` and ``HiddenPruning``, and the base
    of your own group method (override ``candidates`` to choose other groups, or
    ``scored_members`` to show the criterion other members).

    Args:
        ratio: fraction of each group's channels to remove, in [0, 1).
        criterion: how channels are ranked; a name registered for ``target``
            (``pk.criterion_names("channels")``).
        round_to: the number of channels kept in each group is a multiple of this; or
            ``"measured"``: each group keeps the widest width, from what the ratio asks up
            to 15 channels more, that its convolutions and linear layers run as fast as the
            narrowest, timed per layer shape on this machine and cached on disk
            (``prunekit.selection.widths``; ``benchmarks/results/fast_widths.md`` measures
            what it gives).
        overrides: ``{module name: ratio}`` for groups that touch that module or a module
            inside it (``{"layer4": 0.2}`` covers every group touching ``layer4``); the
            largest override among a group's modules wins (with ``global_ranking`` too: the
            other groups are ranked together). A name the model does not have is a
            ``ConfigError`` listing close matches.
        seed: seed for the ``"random"`` criterion.
        global_ranking: rank channels across the whole model (scores normalised by their
            group's mean, except a criterion whose scores share one scale, such as the heads'
            ``"output"``) instead of removing ``ratio`` from every group.
        max_ratio: the most any one group loses under global ranking or a budget.
        flops_target: remove this fraction of the model's FLOPs (``ratio`` is then searched
            for, within ``max_ratio``); met within 2 percentage points.
        params_target: the same for parameters.
        latency_target: run in this fraction of the unpruned model's time (0.5: twice as
            fast), measured on this machine with the example inputs and torch's thread
            count; ``ratio`` is searched for, each candidate timed interleaved with a copy
            of the unpruned model, until within 5% of the target (``result.latency`` says
            what was reached). Kept widths are multiples of 8 unless ``round_to`` says
            otherwise (see ``LATENCY_ROUND_TO``). One-shot only.
        bias_compensation: after pruning, add to each linear layer's bias the mean of what
            the inputs it lost gave it on ``data`` (FLAP; ``prunekit.recover.compensate``);
            a layer without a bias gets one. Pairs with the ``"fluctuation"`` criterion,
            which scores what it cannot give back. With ``reconstruct=True``, the re-fit
            fits the biases instead, a layer without one given one to fit.

    Example:
        >>> @dataclass
        ... class Only3x3(pk.FilterPruning):
        ...     def candidates(self, graph):
        ...         return [g for g in super().candidates(graph) if is_3x3(g)]
    """

    ratio: float = 0.5
    criterion: str = "l1"
    round_to: int | str = 1
    overrides: dict[str, float] = field(default_factory=dict)
    seed: int = 0
    global_ranking: bool = False
    max_ratio: float = 0.9
    flops_target: float | None = None
    params_target: float | None = None
    latency_target: float | None = None
    bias_compensation: bool = False

    target: ClassVar[str] = "channels"  # what its criteria score

    def __post_init__(self) -> None:
        name = type(self).__name__
        check_ratio(self.ratio, f"{name}.ratio")
        if not isinstance(self.overrides, dict) or not all(
                isinstance(key, str) for key in self.overrides):
            raise ConfigError(f"{name}.overrides must be a dict {{module name: ratio}}, such "
                              f"as {{'layer4': 0.2}}; got {self.overrides!r}")
        for module, ratio in self.overrides.items():
            check_ratio(ratio, f"{name}.overrides[{module!r}]")
        get_criterion(self.criterion, self.target, f"{name}.criterion")
        check_ratio(self.max_ratio, f"{name}.max_ratio")
        for target in ("flops_target", "params_target"):
            if getattr(self, target) is not None:
                check_ratio(getattr(self, target), f"{name}.{target}")
        targets = [t for t in ("flops_target", "params_target", "latency_target")
                   if getattr(self, t) is not None]
        if len(targets) > 1:
            raise ConfigError(f"{name}: give one of flops_target, params_target and "
                              f"latency_target, not {' and '.join(targets)}")
        if self.latency_target is not None and (
                isinstance(self.latency_target, bool)
                or not isinstance(self.latency_target, (int, float))
                or not 0 < self.latency_target < 1):
            raise ConfigError(f"{name}.latency_target is the fraction of the unpruned "
                              f"latency to reach, in (0, 1) (0.5: twice as fast); got "
                              f"{self.latency_target!r}")
        if self.round_to != MEASURED and (isinstance(self.round_to, bool)
                                          or not isinstance(self.round_to, int)
                                          or self.round_to < 1):
            raise ConfigError(f"{name}.round_to must be a positive integer or "
                              f"{MEASURED!r} (widths timed on this machine), got "
                              f"{self.round_to!r}")

    # -- the steps of propose, each one a method to override ------------------------------------
    def graph(self, model: nn.Module, example_inputs: Any, ignore: Iterable[nn.Module] = (),
              strict: bool = False) -> DependencyGraph:
        """The dependency graph this method reads."""
        return DependencyGraph(model, example_inputs, ignore=ignore, strict=strict)

    def candidates(self, graph: DependencyGraph) -> list[Group]:
        """The groups this method prunes: the channel groups outside attention (a
        transformer's MLP neurons); heads and the dims inside them are head pruning's."""
        attention = {g.axis for g in graph.attention_groups()}
        return [g for g in graph.groups if g.axis not in attention]

    def recovery(self, model, context):
        return recovery_for(self, model, context)  # with reconstruct= or bias_compensation=

    def untied(self, graph: DependencyGraph) -> list[str]:
        """Names of tied tensors the plan gives tensors of their own (none, unless the
        method writes different values under them: a rotated hidden size)."""
        return []

    def nothing_to_prune(self) -> str | None:
        """The error when a model has no candidate at all; None: an empty result is fine."""
        return None

    def traced_candidates(self, model: nn.Module, example_inputs: Any,
                          ignore: Iterable[nn.Module] = (), strict: bool = False
                          ) -> tuple[DependencyGraph, list[Group]]:
        """This method's graph and candidates: what proposing, trials, previews and score
        tables all start from (an error when the method finds nothing it could prune)."""
        check_module_names(model, self.overrides, f"{type(self).__name__}.overrides")
        graph = self.graph(model, example_inputs, ignore, strict)
        groups = self.candidates(graph)
        if not groups and self.nothing_to_prune():
            raise PruneError(self.nothing_to_prune())
        return graph, groups

    def scored_members(self, group: Group, role: str | None) -> list[Member]:
        """The members a weight criterion sees: those with ``role`` (the criterion's wish,
        if it has one and a member has it), else every parameter member."""
        members = [m for m in group.members if m.slot.kind == "parameter"]
        return [m for m in members if role is not None and m.role == role] or members

    def score(self, graph: DependencyGraph, groups: list[Group], data: Iterable | None = None,
              loss_fn=None) -> dict[int, torch.Tensor]:
        """Every group's channel scores (higher = keep). A data criterion scores the groups
        it can read; the rest are ranked by their weights' L1 norm."""
        who = f"{type(self).__name__}.criterion"
        entry = get_criterion(self.criterion, self.target, who)
        weights = entry.criterion
        scores: dict[int, torch.Tensor] = {}
        if entry.needs_data:
            if data is None:
                raise ConfigError(f"{type(self).__name__}: criterion {self.criterion!r} reads "
                                  f"activations; pass data=, an iterable of batches")
            scores = entry.criterion.score_groups(graph, groups, data, loss_fn)
            weights = get_criterion("l1", "channels", who).criterion
        generator = torch.Generator().manual_seed(self.seed)
        for group in groups:
            if group.axis not in scores:
                members = self.scored_members(group, weights.reads_role)
                views = [ChannelView(str(m), m.role, graph.channel_matrix(m, group.axis))
                         for m in members]
                scores[group.axis] = weights.score(views, generator)
        return scores

    def group_ratio(self, group: Group, ratio: float | None = None) -> float:
        """The ratio a group loses: the largest override for a module it touches or one
        containing it (``"layer4"`` covers ``layer4.0.conv1``), else ``ratio``."""
        override = self.override(group)
        return override if override is not None else (self.ratio if ratio is None else ratio)

    def override(self, group: Group) -> float | None:
        """The largest override for a module the group touches (or one containing it)."""
        modules = group.modules()
        overrides = [r for name, r in self.overrides.items()
                     if any(_within(module, name) for module in modules)]
        return max(overrides) if overrides else None

    def channels_to_keep(self, size: int, ratio: float) -> int:
        """Before ``round_to="measured"`` widens it (``select``)."""
        round_to = 1 if self.round_to == MEASURED else self.round_to
        return selection.channels_to_keep(size, ratio, round_to)

    def select(self, graph: DependencyGraph, groups: list[Group],
               scores: dict[int, torch.Tensor], ratio: float | None = None,
               dither: bool = False, widths: Callable[[Group, int], int] | None = None
               ) -> dict[int, torch.Tensor]:
        """``{group axis: kept indices}`` removing ``ratio`` (default ``self.ratio``) per
        group, dithered (see ``selection.dithered_ratios``) or ranked model-wide;
        ``widths(group, n)`` turns the number of channels a group would keep into the number
        it keeps."""
        ratio = self.ratio if ratio is None else ratio
        if self.global_ranking:
            # a group with an override loses what it says; the rest are ranked together
            fixed = {g.axis: r for g in groups if (r := self.override(g)) is not None}
            ranked = [g for g in groups if g.axis not in fixed]
            comparable = get_criterion(self.criterion, self.target, "").comparable
            ratios = {**selection.global_ratios(ranked, scores, ratio, self.max_ratio,
                                                comparable), **fixed}
        else:
            ratios = {g.axis: self.group_ratio(g, ratio) for g in groups}
            if dither:
                ratios = selection.dithered_ratios(groups, ratios)
        keep: dict[int, torch.Tensor] = {}
        for group in groups:
            n_keep = self.channels_to_keep(group.size, ratios[group.axis])
            if widths is not None:
                n_keep = widths(group, n_keep)
            if n_keep < group.size:
                keep[group.axis] = selection.highest(scores[group.axis], n_keep)
        return keep

    def budget(self) -> tuple[str, float] | None:
        """``("flops" | "params", fraction to remove)``, or None for a plain ratio."""
        if self.flops_target is not None:
            return "flops", self.flops_target
        if self.params_target is not None:
            return "params", self.params_target
        if self.latency_target is not None:
            return "latency", self.latency_target
        return None

    def propose(self, model, example_inputs, context):
        graph, groups = self.traced_candidates(model, example_inputs, context.ignore,
                                               context.strict)
        scores = self.score(graph, groups, context.data, context.loss_fn)
        ratio, budget, latency = None, self.budget(), None
        table, widths, chooser = None, None, self
        if self.round_to == MEASURED:
            table = WidthTable()
            widths = self._fast_widths(table, layer_calls(model, example_inputs, graph, groups))
        elif budget is not None and budget[0] == "latency" and self.round_to == 1:
            # a latency target keeps widths the CPU kernels run fast, unless told otherwise
            chooser = dataclasses.replace(self, round_to=LATENCY_ROUND_TO)
        if budget is not None:
            def plan_at(r: float) -> Plan:  # measured as the proposal's plan will be
                plan = plan_from_keep(graph, chooser.select(graph, groups, scores, r,
                                                            dither=True, widths=widths), {})
                plan.untied = self.untied(graph) if plan.tensors else []
                return plan
            if budget[0] == "latency":
                ratio, speed = ratio_for_latency(model, example_inputs, plan_at, budget[1],
                                                 self.max_ratio, type(self).__name__)
                latency = LatencyReached(budget[1], speed, "" if table is None else (
                    f"kept widths timed on this machine for {len(table.used)} layer shapes "
                    f"({len(table.measured)} timed now, the rest read from {table.path})"))
            else:
                ratio = ratio_for_budget(model, example_inputs, plan_at, *budget,
                                         self.max_ratio, type(self).__name__)
        keep = chooser.select(graph, groups, scores, ratio, dither=ratio is not None,
                              widths=widths)
        if table is not None:
            table.save()
        return GroupProposal(graph, keep, self.to_dict(), latency, self.untied(graph))

    @staticmethod
    def _fast_widths(table: WidthTable, calls: dict[int, list[LayerCall]]
                     ) -> Callable[[Group, int], int]:
        def width(group: Group, wanted: int) -> int:  # nothing to time: as the ratio asks
            return table.fast_width(calls.get(group.axis, []), wanted, group.size)
        return width

    # -- workflows -------------------------------------------------------------------------------
    def step(self, step, steps, removed):
        """A channel ratio r becomes 1 − (1 − r)^(1/steps) per step, compounding to r. A budget
        of t of the original is t·step/steps after this step, restated relative to the model
        the step starts from, so it makes up for earlier steps that over- or undershot (small
        layers cannot be cut finely)."""
        check_whole(steps, "steps")
        budget = self.budget()
        if budget is None:
            if "units" not in removed:
                return dataclasses.replace(self, ratio=1 - (1 - self.ratio) ** (1 / steps))
            # the channels left after this step, as a fraction of the original, restated
            # relative to those left now: rounding in earlier steps is made up for, and the
            # last step ends where one shot would (each step rounding its own ratio down
            # had 5 steps of 0.5 end at 7 of 10 channels)
            goal, done = 1 - (1 - self.ratio) ** (step / steps), removed["units"]
            if goal <= done:
                return None
            return dataclasses.replace(self, ratio=1 - (1 - goal) / (1 - done))
        if budget[0] == "latency":
            raise ConfigError(f"{type(self).__name__}.latency_target is reached in one step "
                              f"(each step would need its own timing); prune iteratively "
                              f"with flops_target, then check the latency")
        quantity, target = budget
        goal, done = target * step / steps, removed.get(quantity, 0.0)
        if goal <= done:
            return None
        return dataclasses.replace(self, **{f"{quantity}_target": 1 - (1 - goal) / (1 - done)})

    def prunable_size(self, model, example_inputs):
        try:
            return sum(group.size for group in self.traced_candidates(model, example_inputs)[1])
        except PruneError:  # nothing left to prune
            return 0

    def trials(self, model, example_inputs, ratios, context):
        graph, groups = self.traced_candidates(model, example_inputs, context.ignore,
                                               context.strict)
        scores = self.score(graph, groups, context.data, context.loss_fn)
        for group in groups:
            label = _group_label(model, group.modules())
            for ratio in ratios:
                n_keep = self.channels_to_keep(group.size, ratio)
                keep = {group.axis: selection.highest(scores[group.axis], n_keep)}
                yield Trial(label, group.size, ratio, plan_from_keep(graph, keep, {}))

    def preview(self, model, example_inputs):
        graph, groups = self.traced_candidates(model, example_inputs)
        rows = []
        for group in groups:
            removed = group.size - self.channels_to_keep(group.size, self.group_ratio(group))
            members = " => ".join(str(m) for m in group.members[:6])
            more = len(group.members) - 6
            rows.append(PreviewRow(f"group {group.id}", group.size, removed,
                                   members + (f" (+{more} more)" if more > 0 else "")))
        return Preview(rows, list(graph.unknown_ops))

    def streamed_stage(self):
        name = type(self).__name__
        if self.bias_compensation:
            raise ConfigError(f"streamed {name}(bias_compensation=True) is not built: it "
                              f"reads every linear layer's mean input in the unpruned "
                              f"model; prune in memory with pk.prune")
        if getattr(self, "reconstruct", False):
            raise ConfigError(f"streamed {name}(reconstruct=True): the re-fit reads each "
                              f"layer's inputs in the pruned model, blocks above it pruned, "
                              f"which a stream of unpruned hidden states does not give; "
                              f"prune in memory with pk.prune")
        streams = streaming_names(self.target)
        if self.criterion not in streams:
            raise ConfigError(f"streamed {name}.criterion {self.criterion!r} reads the "
                              f"whole model's loss or outputs, which one block does not "
                              f"give; choose one of {sorted(streams)}")
        if self.budget() is not None or self.overrides:
            raise ConfigError(f"streamed {name} removes ratio= of the heads or neurons, of "
                              f"every block or (global_ranking=True) model-wide; budgets "
                              f"and overrides need every block at once (prune in memory with "
                              f"pk.prune)")
        return "width"

    def summary(self):
        budget = self.budget()
        target = f"{budget[0]}_target={budget[1]}" if budget else f"ratio={self.ratio}"
        return f"{type(self).__name__}({target}, criterion={self.criterion!r})"


@dataclass
class FilterPruning(GroupPruning):
    """Remove output filters, ranked by the producers' filters (conv/linear output rows).

    Example:
        >>> pk.prune(model, x, pk.FilterPruning(ratio=0.5, criterion="l1"))
    """

    streams: ClassVar[bool] = True

    cli_name: ClassVar[str] = "filter"

    def scored_members(self, group, role):
        return super().scored_members(group, role or "out")


@dataclass
class ChannelPruning(GroupPruning):
    """Remove input channels, ranked by the consumers' weights over those channels.

    The score of an input channel is the norm of the consumer's weights that read it, summed
    over output filters and kernel (the classic input-channel criterion). Removing it removes
    the whole coupled group, producers included.

    With ``reconstruct=True`` (and calibration batches as ``data=``), every layer that lost
    input channels is then re-fitted by least squares to reproduce its original output
    (``prunekit.recover.reconstruct``), inside the transaction that prunes the model: Conv2d,
    Linear, and the input weights of one-layer LSTM, GRU and RNN layers. The criterion made
    for it is ``"reconstruction"``: it removes the channels that re-fit can best make up for
    (``prunekit.importance.reconstruction``).

    Example:
        >>> pk.prune(model, x, pk.ChannelPruning(ratio=0.5, criterion="l2"))
    """

    streams: ClassVar[bool] = True

    reconstruct: bool = False

    cli_name: ClassVar[str] = "channel"

    def scored_members(self, group, role):
        return super().scored_members(group, role or "in")


def _group_label(model: nn.Module, modules: list[str]) -> str:
    """A group by its first module's path and kind, and how many more it couples:
    ``0 (Conv2d) + 8 coupled``; a bare index such as ``0`` (a Sequential's first child) says
    nothing on its own, and a residual stream is more than its first conv."""
    name = modules[0]
    try:
        label = f"{name} ({type(model.get_submodule(name)).__name__})"
    except AttributeError:  # a parameter or a function's output, not a module
        label = name
    return label + (f" + {len(modules) - 1} coupled" if len(modules) > 1 else "")
