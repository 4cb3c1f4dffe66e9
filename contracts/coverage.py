"""The coverage contract for one real architecture, shared by the test sweep and the coverage
benchmark (which records the same numbers for every model)."""

from __future__ import annotations

import ctypes
import gc
import time
from pathlib import Path
from typing import Any

import torch

import prunekit as pk
from prunekit.checks.verify import CheckInputs, compare_in_place, compared_in_float64
from prunekit.core.calls import call_model, iter_tensors
from prunekit.measure.model import count_flops

from .model_cases import EXPORT_UNSUPPORTED, ModelCase


def structure(outputs: Any) -> list[tuple[int, ...]]:
    return [tuple(t.shape) for t in iter_tensors(outputs)]


def release_memory() -> None:
    """Free what the last model left: collect cycles, then hand freed heap pages back to the
    system (glibc keeps them otherwise, and the next model's peak lands on top of them)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


def check_case(case: ModelCase, ratio: float = 0.5, export_to: Path | None = None
               ) -> dict[str, Any]:
    """Prune one model and check the whole contract; raises AssertionError when it fails.
    With ``export_to`` (a folder), the pruned model is also exported to ONNX there and
    checked in ONNX Runtime against PyTorch (``pk.export``), unless the case is in
    ``EXPORT_UNSUPPORTED``.

    Memory stays near one copy of the model: the plan is verified against a fresh build of
    the unpruned model (same seed, same weights) after the pruned one is freed, in place
    rather than on a copy.
    """
    torch.manual_seed(0)
    model, inputs = case.build()
    model.eval()
    with torch.no_grad():
        before_structure = structure(call_model(model, inputs))
    start = time.perf_counter()
    graph = pk.DependencyGraph(model, inputs)
    trace_s = time.perf_counter() - start
    n_groups, unknown = len(graph.groups), sorted({u.op for u in graph.unknown_ops})
    selections = graph.trace.selections  # compared in float64 where the model chooses by order
    del graph
    start = time.perf_counter()
    result = pk.prune(model, inputs, pk.FilterPruning(ratio, "l1"))
    prune_s = time.perf_counter() - start
    release_memory()
    with torch.no_grad():
        after_structure = structure(call_model(model, inputs))
    differentiable = [t for t in iter_tensors(call_model(model, inputs))
                      if t.is_floating_point() and t.requires_grad]
    if differentiable:
        sum(t.float().mean() for t in differentiable).backward()
    backward_ok = bool(differentiable) and any(
        p.grad is not None for p in model.parameters())
    flops_after = count_flops(model, inputs)
    onnx = None
    if export_to is not None and case.id not in EXPORT_UNSUPPORTED:
        model.zero_grad(set_to_none=True)
        exported = pk.export(model, inputs, export_to / "pruned.onnx", fresh_inputs=1)
        onnx = {"exporter": exported.exporter, "difference": exported.largest_difference}
        for path in export_to.iterdir():
            path.unlink()
    del model, differentiable
    release_memory()
    torch.manual_seed(0)
    original, inputs = case.build()
    checked = compared_in_float64(original.eval(), CheckInputs(inputs), selections)
    report = compare_in_place(original, checked, result.plan)
    del original
    row = {
        "family": case.family, "model": case.name, "groups": n_groups,
        "params_before": result.before.params, "params_after": result.after.params,
        "flops_before": result.before.flops, "flops_after": flops_after,
        "equivalence_error": report.relative_diff, "trace_s": trace_s, "prune_s": prune_s,
        "skipped_groups": len(result.skipped), "unknown_ops": unknown,
        "backward": backward_ok, "onnx": onnx,
    }
    assert before_structure == after_structure, f"output shapes changed: {after_structure}"
    assert result.after.params < result.before.params, "no parameter was removed"
    assert report.ok, str(report)
    assert backward_ok, "no gradient reached the parameters"
    return row
