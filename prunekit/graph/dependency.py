"""The dependency graph: groups of parameter dims that must be pruned together.

A *group* is one leaf axis class from the trace (see ``axes.py``): every parameter or buffer
dim that contains it is a *member*, and pruning the group removes the same channel indices,
mapped through each member's layout (offsets for concatenations, blocks for flatten, repeats
for grouped convolutions and attention heads), from every member at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

import torch
from torch import nn

from ..errors import ConfigError
from .axes import AxisTable, NotRepresentable, Spec
from .rules import FUSED_PER_HEAD, HEAD_COUNT, HEAD_SIZES, is_layer_norm
from .trace import AttributeSlot, ModuleOutput, TensorSlot, TraceResult, trace


@dataclass
class Member:
    """One dim of one parameter or buffer that belongs to a group."""

    slot: TensorSlot
    dim: int
    role: str | None  # "out" (a layer's output filters), "in" (input channels), "norm", None
    segments: Spec  # the dim's layout in leaf axes

    @property
    def name(self) -> str:
        return self.slot.name

    def __str__(self) -> str:
        tag = self.role or f"dim{self.dim}"
        return f"{self.slot.name}[{tag}]"


@dataclass
class Group:
    """Channels coupled across the model: pruned all at once with one set of indices."""

    id: int
    axis: int
    size: int
    members: list[Member]
    structural: bool = False  # an outer factor (groups, heads) whose inner factor is prunable
    attributes: list[AttributeSlot] = field(default_factory=list)

    def modules(self) -> list[str]:
        seen: dict[str, None] = {}
        for member in self.members:
            seen.setdefault(member.name.rsplit(".", 1)[0] if "." in member.name else "", None)
        return list(seen)

    def __str__(self) -> str:
        chain = " => ".join(str(m) for m in self.members)
        kind = " (structural)" if self.structural else ""
        return f"group {self.id}: {self.size} channels{kind}: {chain}"


class DependencyGraph:
    """Trace ``model`` on ``example_inputs`` and find every group of coupled channels.

    Args:
        model: any ``nn.Module``; it is run once in eval mode and not changed.
        example_inputs: a tensor (``model(x)``), a tuple (``model(*x)``) or a dict
            (``model(**x)``).
        ignore: modules whose dims must stay as they are (their submodules too).
        strict: raise on an op the engine has no rule for, instead of marking its dims fixed.

    Example:
        >>> graph = DependencyGraph(model, torch.randn(1, 3, 32, 32))
        >>> for group in graph.groups: print(group)
    """

    def __init__(self, model: nn.Module, example_inputs: Any,
                 ignore: Iterable[nn.Module] = (), strict: bool = False,
                 normalised_prunable: bool = False) -> None:
        self.model = model
        ignored = resolve_ignored(model, ignore)
        self.trace: TraceResult = trace(model, example_inputs, strict=strict,
                                        normalised_prunable=normalised_prunable)
        self.axes: AxisTable = self.trace.axes
        for slot in self.trace.slots:
            if any(_owner(name) in ignored for name in slot.names):
                for spec in slot.specs:
                    self.axes.fix_spec(spec, "module is ignored")
        self.attributes: list[AttributeSlot] = list(self.trace.attributes)
        self.layouts: dict[tuple[int, int], Spec] = {}  # (id(slot), dim) -> leaf layout
        self.all_groups: list[Group] = self._build_groups()
        self.groups: list[Group] = [g for g in self.all_groups if not g.structural]

    @property
    def unknown_ops(self):
        return self.trace.unknown_ops

    def _member_layouts(self) -> list[tuple[TensorSlot, int, Spec]]:
        # first make every layout expressible, then read them; when nothing had to be made
        # expressible (most models), the first reading is the layouts already
        layouts: list[tuple[TensorSlot, int, Spec]] | None = []
        for slot in self.trace.slots:
            for dim, spec in enumerate(slot.specs):
                try:
                    expanded = self.axes.expand(spec)
                except NotRepresentable:
                    self.axes.atomise_inner_cuts(spec, f"an inner factor of {slot.names[0]} "
                                                       f"is cut in parts")
                    layouts = None  # atomising changes the axes earlier layouts were read from
                    continue
                if layouts is not None:
                    layouts.append((slot, dim, expanded))
        if layouts is None:
            layouts = []
            for slot in self.trace.slots:
                for dim, spec in enumerate(slot.specs):
                    try:
                        layouts.append((slot, dim, self.axes.expand(spec)))
                    except NotRepresentable:
                        self.axes.fix_spec(spec, "layout cannot be expressed")
        self.layouts = {(id(slot), dim): segments for slot, dim, segments in layouts}
        return layouts

    def _build_groups(self) -> list[Group]:
        layouts = self._member_layouts()
        members: dict[int, list[Member]] = {}
        has_parameter: set[int] = set()
        for slot, dim, segments in layouts:
            for leaf in {a for segment in segments for a in segment}:
                members.setdefault(leaf, []).append(
                    Member(slot, dim, slot.roles.get(dim), segments))
                if slot.kind == "parameter":
                    has_parameter.add(leaf)
        eligible = {leaf for leaf in members
                    if leaf in has_parameter and self.axes.size(leaf) > 1
                    and self.axes.fixed_reason(leaf) is None}
        structural = self._structural(eligible)
        self._resolve_attribute_candidates(eligible)
        groups = []
        position = {id(slot): i for i, (slot, _, _) in enumerate(layouts)}
        first_seen = {leaf: min(position[id(m.slot)] for m in members[leaf]) for leaf in eligible}
        attribute_leaves = [(a, self._leaves(a.spec)) for a in self.attributes]
        for leaf in sorted(eligible, key=first_seen.__getitem__):
            ordered = sorted(members[leaf], key=_member_order)
            attributes = [a for a, leaves in attribute_leaves if leaf in leaves]
            groups.append(Group(len(groups), leaf, self.axes.size(leaf), ordered,
                                leaf in structural, attributes))
        return groups

    def _leaves(self, spec: Spec) -> set[int]:
        try:
            return {a for segment in self.axes.expand(spec) for a in segment}
        except NotRepresentable:
            return set()

    def _resolve_attribute_candidates(self, eligible: set[int]) -> None:
        """Bind each attribute to the one prunable dim it was seen sizing, across every
        view of every call; an attribute that sized several prunable dims stays unbound.
        An attribute that sized a view is judged by its views alone: a size read equal to
        it (``x.shape[-1] // 2`` beside ``head_dim``) is weaker evidence."""
        known = {(a.module, a.attribute) for a in self.attributes}
        in_views = {(c.module, c.attribute) for c in self.trace.attribute_candidates
                    if c.seen_in == "view"}
        prunable: dict[tuple[str, str], dict[frozenset[int], Spec]] = {}
        for candidates in self.trace.attribute_candidates:
            key = (candidates.module, candidates.attribute)
            if candidates.seen_in == FUSED_PER_HEAD:  # marks heads; sizes a multiple of it
                continue
            if key in known or (candidates.seen_in != "view" and key in in_views):
                continue
            found = prunable.setdefault(key, {})
            for spec in candidates.specs:
                leaves = self._leaves(spec) & eligible
                if leaves:
                    found.setdefault(frozenset(leaves), spec)
        for (module, attribute), specs in prunable.items():
            if len(specs) == 1:
                self.attributes.append(AttributeSlot(module, attribute,
                                                     next(iter(specs.values()))))

    def _structural(self, eligible: set[int]) -> set[int]:
        """Outer factors whose inner factor can be pruned: prune within groups/heads first."""
        structural: set[int] = set()
        for outer, inner in self.axes.factorisations:
            if self._leaves(inner) & eligible:
                structural |= self._leaves(outer) & eligible
        return structural

    def head_groups(self) -> list[Group]:
        """The groups that are attention heads: counted by a module attribute (``num_heads``,
        ``num_attention_heads``, ``n_heads`` …), or the outer factor of a view whose inner
        factor is a head size (``head_dim``, ``attention_head_size``), as in Llama, whose
        attention keeps no head count of its own."""
        heads = self._head_axes()
        return [g for g in self.all_groups if g.axis in heads]

    def attention_groups(self) -> list[Group]:
        """Head groups and the groups inside heads (the dims of each head's q/k/v)."""
        heads = self._head_axes()
        inside = {leaf for outer, inner in self.axes.factorisations
                  if self._leaves(outer) & heads for leaf in self._leaves(inner)}
        return [g for g in self.all_groups if g.axis in heads | inside]

    def hidden_groups(self) -> list[Group]:
        """The residual stream of a transformer: groups that a layer or RMS norm scales
        (outside attention heads). Only a graph traced with ``normalised_prunable`` has them."""
        attention = {g.axis for g in self.attention_groups()}
        modules = dict(self.model.named_modules())

        def normalised(group: Group) -> bool:  # a norm's own scale is one of its members
            return any(is_layer_norm(modules.get(m.name.rsplit(".", 1)[0]))
                       for m in group.members)

        return [g for g in self.groups if g.axis not in attention and normalised(g)]

    def _head_axes(self) -> set[int]:
        counted = {leaf for a in self.attributes if HEAD_COUNT.match(a.attribute)
                   for leaf in self._leaves(a.spec)}
        # a head size that is not pruned stays an unresolved candidate when another dim of
        # the view has the same size (16 tokens of head_dim 16): any of its dims may match
        head_sizes = [self._leaves(a.spec) for a in self.attributes
                      if a.attribute in HEAD_SIZES]
        head_sizes += [self._leaves(spec) for c in self.trace.attribute_candidates
                       if c.attribute in HEAD_SIZES and c.seen_in in ("view", FUSED_PER_HEAD)
                       for spec in c.specs]
        for outer, inner in self.axes.factorisations:
            if self._leaves(inner) in head_sizes:
                counted |= self._leaves(outer)
        return counted

    def activation_sites(self, group: Group) -> list[tuple[ModuleOutput, int]]:
        """Leaf-module outputs with a dim that carries exactly this group's channels.

        Outputs of parameter-free modules (activations, pooling) are preferred, so that data-
        driven criteria read post-activation values; otherwise the producing layers' outputs.
        """
        modules = dict(self.model.named_modules())
        sites = []
        for output in self.trace.module_outputs:
            module = modules.get(output.module)
            if module is None or next(module.children(), None) is not None:
                continue
            for dim, spec in enumerate(output.specs):
                try:
                    segments = self.axes.expand(spec)
                except NotRepresentable:
                    continue
                if [list(segment) for segment in segments] == [[group.axis]]:
                    sites.append((output, dim))
                    break
        parameter_free = [(o, d) for o, d in sites
                          if next(modules[o.module].parameters(recurse=False), None) is None]
        return parameter_free or sites

    def channel_matrix(self, member: Member, axis: int) -> torch.Tensor:
        """The member's tensor as a (channels of this group, everything else) matrix."""
        return channel_matrix(self.axes, member.slot.tensor.detach(), member.dim,
                              member.segments, axis)

    def __str__(self) -> str:
        return "\n".join(str(g) for g in self.groups)


def layout_indices(axes: AxisTable, segments: Spec, keep: dict[int, torch.Tensor]) -> torch.Tensor:
    parts, offset = [], 0
    for segment in segments:
        index = torch.zeros(1, dtype=torch.long)
        for axis in segment:  # row-major: ((i1 * s2 + i2) * s3 + i3) …
            size = axes.size(axis)
            kept = keep.get(axis)
            kept = torch.arange(size) if kept is None else kept
            index = (index[:, None] * size + kept[None, :]).reshape(-1)
        parts.append(index + offset)
        offset += axes.segment_size(segment)
    return torch.cat(parts)


def channel_matrix(axes: AxisTable, tensor: torch.Tensor, dim: int, segments: Spec,
                   axis: int) -> torch.Tensor:
    columns, offset = [], 0
    for segment in segments:
        size = axes.segment_size(segment)
        if axis in segment:
            part = tensor.narrow(dim, offset, size).movedim(dim, 0)
            part = part.reshape([axes.size(a) for a in segment] + [-1])
            part = part.movedim(segment.index(axis), 0)
            columns.append(part.reshape(axes.size(axis), -1))
        offset += size
    return columns[0] if len(columns) == 1 else torch.cat(columns, dim=1)  # cat would copy


def _owner(name: str) -> str:
    return name.rsplit(".", 1)[0] if "." in name else ""


def resolve_ignored(model: nn.Module, ignore: Iterable[nn.Module]) -> set[str]:
    """The names of the ignored modules and of every module inside them."""
    names = {id(m): n for n, m in model.named_modules()}
    ignored: set[str] = set()
    for module in ignore or ():
        if not isinstance(module, nn.Module):
            raise ConfigError(f"ignore= takes modules, got {type(module).__name__}")
        if id(module) not in names:
            raise ConfigError(f"ignore= names a {type(module).__name__} that is not part of the model")
        prefix = names[id(module)]
        ignored |= {n for n in names.values()
                    if n == prefix or not prefix or n.startswith(prefix + ".")}
    return ignored


def _member_order(member: Member) -> tuple:
    return member_sort_key(member.role, member.slot.name, member.dim)


def member_sort_key(role: str | None, name: str, dim: int) -> tuple:
    """The order of a group's members (and so of the sums over them): outputs, norms, the
    rest, inputs; then by name and dim."""
    order = {"out": 0, "norm": 1, None: 2, "in": 3}
    return (order.get(role, 2), name, dim)
