"""Axis algebra: how the channels of every traced tensor relate to each other.

Every tensor dimension is described by a *dim spec*: a list of segments laid end to end (what
``torch.cat`` builds), each segment a row-major product of axes (what ``view`` builds). An axis
is a node in a union-find: two axes in one class are the same channels, pruned with the same
indices. An axis can later be *refined* into parts, either a concatenation (``split`` cut it)
or a product (``view`` factored it), and every member of its class sees the refinement.

Examples (sizes in brackets)::

    conv out channels            [[a(64)]]
    flatten (C, H, W) -> C*H*W   [[a(64), h(7), w(7)]]
    cat([x(32), y(16)], dim=1)   [[x], [y]]
    view(B, T, 12, 64) of q      [[heads(12)]], [[head_dim(64)]]

A leaf axis class that is never tied to the model's inputs, outputs or to an op that mixes
channels is a candidate *group* for pruning.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

Segment = list[int]  # axis ids, outer to inner (row-major product)
Spec = list[Segment]  # segments, first to last (concatenation)


class NotRepresentable(Exception):
    """The channel structure an op asks for cannot be expressed; the caller fixes the axes."""


@dataclass
class _Refinement:
    kind: str  # "cat" or "prod"
    children: list[int] = field(default_factory=list)


class AxisTable:
    """Union-find over axes, with refinement of a class into concatenated or product parts."""

    def __init__(self) -> None:
        self._parent: list[int] = []
        self._size: list[int] = []
        self._fixed_reason: dict[int, str] = {}
        self._parts: dict[int, _Refinement] = {}
        # (outer, inner) pairs from factorisations such as (groups, channels per group) or
        # (heads, head_dim): the outer axis is pruned only when the inner one cannot be.
        self.factorisations: list[tuple[Spec, Spec]] = []

    # -- nodes -------------------------------------------------------------------------------
    def new(self, size: int, fixed: str | None = None) -> int:
        axis = len(self._parent)
        self._parent.append(axis)
        self._size.append(int(size))
        if fixed:
            self._fixed_reason[axis] = fixed
        return axis

    def find(self, axis: int) -> int:
        parent = self._parent
        root = axis
        while parent[root] != root:
            root = parent[root]
        while parent[axis] != root:  # path compression
            parent[axis], axis = root, parent[axis]
        return root

    def size(self, axis: int) -> int:
        return self._size[self.find(axis)]

    def fixed_reason(self, axis: int) -> str | None:
        return self._fixed_reason.get(self.find(axis))

    # -- fixing ------------------------------------------------------------------------------
    def fix(self, axis: int, reason: str) -> None:
        """Mark an axis class, and every part of it, as not prunable."""
        root = self.find(axis)
        self._fixed_reason.setdefault(root, reason)
        refinement = self._parts.get(root)
        if refinement:
            for child in refinement.children:
                self.fix(child, reason)

    def fix_spec(self, spec: Spec, reason: str) -> None:
        for segment in spec:
            for axis in segment:
                self.fix(axis, reason)

    # -- specs -------------------------------------------------------------------------------
    def fresh_spec(self, size: int, fixed: str | None = None) -> Spec:
        """A new dim of ``size`` channels: one axis, or none for a size-1 dim."""
        return [[]] if size == 1 else [[self.new(size, fixed)]]

    def spec_size(self, spec: Spec) -> int:
        return sum(self.segment_size(s) for s in spec)

    def segment_size(self, segment: Segment) -> int:
        return math.prod(self.size(a) for a in segment)

    def expand(self, spec: Spec) -> Spec:
        """Rewrite a spec in terms of leaf axes only (refinements resolved)."""
        out: Spec = []
        for segment in spec:
            expanded: Spec = [[]]
            for axis in segment:
                expanded = self.product(expanded, self._expand_axis(axis))
            out.extend(expanded)
        return out

    def _expand_axis(self, axis: int) -> Spec:
        root = self.find(axis)
        if self._size[root] == 1:
            return [[]]
        refinement = self._parts.get(root)
        if refinement is None:
            return [[root]]
        if refinement.kind == "cat":
            out: Spec = []
            for child in refinement.children:
                out.extend(self._expand_axis(child))
            return out
        expanded: Spec = [[]]
        for child in refinement.children:
            expanded = self.product(expanded, self._expand_axis(child))
        return expanded

    def product(self, outer: Spec, inner: Spec) -> Spec:
        """Row-major product of two specs, as long as it stays a list of segments."""
        if len(inner) == 1:
            return [segment + inner[0] for segment in outer]
        if len(outer) == 1 and not outer[0]:
            return [list(s) for s in inner]
        raise NotRepresentable("a concatenation inside an inner factor")

    # -- refinement --------------------------------------------------------------------------
    def _refine(self, axis: int, kind: str, sizes: list[int]) -> list[int]:
        root = self.find(axis)
        if root in self._parts:
            raise NotRepresentable("axis already refined")
        reason = self._fixed_reason.get(root)
        children = [self.new(s, reason) for s in sizes]
        self._parts[root] = _Refinement(kind, children)
        return children

    def cut(self, spec: Spec, offsets: list[int]) -> list[Spec]:
        """Cut a spec into pieces at the given channel offsets (split, chunk, slicing)."""
        for offset in sorted(set(offsets)):
            self._make_boundary(spec, offset)
        pieces: list[Spec] = []
        boundaries = sorted(set(offsets))
        current: Spec = []
        position = 0
        for segment in self.expand(spec):
            if boundaries and position == boundaries[0]:
                pieces.append(current)
                current = []
                boundaries.pop(0)
            current.append(segment)
            position += self.segment_size(segment)
        if boundaries and position == boundaries[0]:
            pieces.append(current)
            current = []
        pieces.append(current)
        return [p if p else [[]] for p in pieces]

    def _make_boundary(self, spec: Spec, offset: int) -> None:
        position = 0
        for segment in self.expand(spec):
            size = self.segment_size(segment)
            if position < offset < position + size:
                local = offset - position
                outer = segment[0]
                stride = size // self.size(outer)
                if local % stride:
                    raise NotRepresentable("a cut inside an inner factor")
                split = local // stride
                self._refine(outer, "cat", [split, self.size(outer) - split])
                return
            position += size

    def split_segment(self, segment: Segment, inner_size: int) -> tuple[Segment, Segment]:
        """Split one product segment into (outer, inner) parts with the inner of given size."""
        segment = self.expand([segment])[0]
        stride = 1
        for index in range(len(segment) - 1, -1, -1):
            axis = segment[index]
            size = self.size(axis)
            if stride == inner_size:
                return segment[: index + 1], segment[index + 1 :]
            if stride * size > inner_size:
                factor = inner_size // stride
                if inner_size % stride or size % factor:
                    raise NotRepresentable("a view that does not divide a channel axis")
                outer_part, inner_part = self._refine(axis, "prod", [size // factor, factor])
                self.factorisations.append(([[outer_part]], [[inner_part]]))
                return segment[:index] + [outer_part], [inner_part] + segment[index + 1 :]
            stride *= size
        if stride == inner_size:
            return [], segment
        raise NotRepresentable("inner size larger than the segment")

    def atomise_inner_cuts(self, spec: Spec, reason: str) -> None:
        """Make the cut-up inner factors of a spec whole again, and fixed. ``heads × (half ⊕
        half)`` (RoPE's rotate_half cuts head_dim in two) has no layout as segments; ``heads ×
        head_dim`` with head_dim fixed has one, and the heads stay prunable."""
        for segment in spec:
            for position, axis in enumerate(segment):
                self._atomise(axis, position > 0, reason)

    def _atomise(self, axis: int, inner: bool, reason: str) -> None:
        root = self.find(axis)
        refinement = self._parts.get(root)
        if refinement is None:
            return
        if inner and refinement.kind == "cat":
            self.fix(root, reason)
            del self._parts[root]
            return
        for position, child in enumerate(refinement.children):
            self._atomise(child, inner or (refinement.kind == "prod" and position > 0), reason)

    # -- coupling ----------------------------------------------------------------------------
    def unify(self, a: Spec, b: Spec) -> None:
        """Make two dims the same channels, refining either side as needed."""
        if len(a) == 1 == len(b) and len(a[0]) == 1 == len(b[0]):  # one axis each: most calls
            ra, rb = self.find(a[0][0]), self.find(b[0][0])
            if ra not in self._parts and rb not in self._parts:
                if self._size[ra] != self._size[rb]:
                    raise NotRepresentable("coupled dims differ in size")
                if self._size[ra] != 1:  # a single channel has no axis to share
                    self._union(ra, rb)
                return
        if self.spec_size(a) != self.spec_size(b):
            raise NotRepresentable("coupled dims differ in size")
        for _ in range(64):
            if self._unify_step(a, b):
                return
        raise NotRepresentable("too many refinements")

    def _unify_step(self, a: Spec, b: Spec) -> bool:
        """One round of alignment; returns True when both sides are unified."""
        ea, eb = self.expand(a), self.expand(b)
        bounds_a, bounds_b = self._bounds(ea), self._bounds(eb)
        if bounds_a != bounds_b:
            for offset in bounds_a - bounds_b:
                self._make_boundary(eb, offset)
            for offset in bounds_b - bounds_a:
                self._make_boundary(ea, offset)
            return False
        for seg_a, seg_b in zip(ea, eb):
            strides_a, strides_b = self._strides(seg_a), self._strides(seg_b)
            if strides_a != strides_b:
                for inner in sorted(strides_a - strides_b):
                    self.split_segment(seg_b, inner)
                    return False
                for inner in sorted(strides_b - strides_a):
                    self.split_segment(seg_a, inner)
                    return False
        for seg_a, seg_b in zip(ea, eb):
            for axis_a, axis_b in zip(seg_a, seg_b):
                self._union(axis_a, axis_b)
        return True

    def _bounds(self, spec: Spec) -> set[int]:
        bounds, position = set(), 0
        for segment in spec[:-1]:
            position += self.segment_size(segment)
            bounds.add(position)
        return bounds

    def _strides(self, segment: Segment) -> set[int]:
        strides, stride = set(), 1
        for axis in reversed(segment[1:]):
            stride *= self.size(axis)
            strides.add(stride)
        return strides

    def _union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self._size[ra] != self._size[rb]:
            raise NotRepresentable("axes of different sizes")
        self._parent[rb] = ra
        reason = self._fixed_reason.pop(rb, None)
        if reason:
            self._fixed_reason.setdefault(ra, reason)
