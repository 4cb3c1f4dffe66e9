"""Turn kept indices per group into a plan for every member tensor and counted attribute."""

from __future__ import annotations

import torch

from ..graph.axes import NotRepresentable
from ..graph.dependency import DependencyGraph, layout_indices
from ..plan import Plan


def plan_from_keep(graph: DependencyGraph, keep: dict[int, torch.Tensor], method: dict) -> Plan:
    """Map kept indices per group onto every member tensor and counted attribute."""
    plan = Plan(method=method)
    # a group's members share a layout: its indices are computed once (each member still
    # gets a list of its own, so editing one member's plan never edits another's)
    computed: dict[tuple, list[int]] = {}
    for slot in graph.trace.slots:
        for dim in range(len(slot.specs)):
            segments = graph.layouts.get((id(slot), dim))
            if segments is None or not any(a in keep for segment in segments for a in segment):
                continue
            layout = tuple(tuple(segment) for segment in segments)
            if layout not in computed:
                computed[layout] = layout_indices(graph.axes, segments, keep).tolist()
            plan.tensors.setdefault(slot.name, {})[dim] = list(computed[layout])
            plan.shapes[slot.name] = list(slot.tensor.shape)
    for attribute in graph.attributes:
        try:
            segments = graph.axes.expand(attribute.spec)
        except NotRepresentable:
            continue
        if any(a in keep for segment in segments for a in segment):
            value = len(layout_indices(graph.axes, segments, keep))
            plan.attributes.setdefault(attribute.module, {})[attribute.attribute] = value
    for group in graph.all_groups:
        if group.axis in keep:
            plan.groups.append({"size": group.size, "kept": len(keep[group.axis]),
                                "members": [str(m) for m in group.members]})
    return plan
