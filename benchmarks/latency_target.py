"""Asking for the time instead of the FLOPs: ``FilterPruning(latency_target=0.5,
round_to="measured")`` against the uniform prune of ``speed.md`` on the models whose eager
cells stay below 0.9.

For each model and batch, three models are timed interleaved in one process (alternating
rounds after a warm-up, eager PyTorch, BatchNorm folded into the convolutions by
``pk.fuse`` in all three after pruning, 2 threads):

- the unpruned model (seed 0, random weights, as ``speed.py`` builds it);
- **half the FLOPs**: pruned as ``speed.md`` prunes it, ``FilterPruning(flops_target=0.5,
  round_to=8)``;
- **half the time**: ``FilterPruning(latency_target=0.5, round_to="measured")`` on the
  row's batch: the ratio searched by timing each candidate against the unpruned model (as
  pruned, BatchNorm not yet folded), each group's kept width the widest its layers run as
  fast as the narrowest (``WidthTable``, cached on disk).

**ratio** = speed-up ÷ FLOPs reduction, as in ``speed.md``. The weights are random (as in
``speed.md``): this measures time, not what removing more costs in accuracy.

    python benchmarks/latency_target.py                         # four models, batch 1 and 8
    python benchmarks/latency_target.py --only mobilenet_v3_large --batches 1

Results: ``benchmarks/results/latency_target.{json,md}``.
"""

from __future__ import annotations

import copy
import gc
import time
from typing import Any

from harness import arguments, rows_not_rerun, write_results

import torch
from speed import FLOPS_TARGET, MODELS, ROUND_TO, THREADS, fold_batchnorm
from torch import nn

import prunekit as pk
from prunekit.measure.latency import speedups_over_first
from prunekit.measure.model import count_flops

BATCHES = (1, 8)
LATENCY_TARGET = 0.5  # half the unpruned time, against speed.md's half the FLOPs
# the convolutional models of speed.md with an eager cell below 0.9
MEASURED_MODELS = ("mobilenet_v3_large", "yolov8n", "resnet50", "convnext_tiny")


def pruned_copy(model: nn.Module, x: Any, method: pk.FilterPruning
                ) -> tuple[nn.Module, float, Any]:
    """A copy of ``model`` pruned by ``method`` on ``x``, the seconds it took, and the
    latency its search reached (None without a latency target)."""
    copied = copy.deepcopy(model)
    started = time.perf_counter()
    result = pk.prune(copied, x, method)
    return copied, time.perf_counter() - started, result.latency


def compare(name: str, batch: int, min_time: float) -> dict[str, Any]:
    build, inputs, _ = MODELS[name]
    torch.manual_seed(0)
    unpruned = build()
    x = inputs(batch)
    uniform, uniform_s, _ = pruned_copy(  # as speed.py prunes it
        unpruned, inputs(1), pk.FilterPruning(flops_target=FLOPS_TARGET, round_to=ROUND_TO))
    try:
        timed, timed_s, reached = pruned_copy(
            unpruned, x, pk.FilterPruning(latency_target=LATENCY_TARGET, round_to="measured"))
    except pk.PruneError as error:  # a target the search cannot reach is a row too
        print(f"{name} batch {batch}: {error}", flush=True)
        return {"model": name, "batch": batch, "threads": THREADS, "error": str(error)}
    models = (unpruned, uniform, timed)
    for model in models:
        fold_batchnorm(model, x)
    flops = [count_flops(model, x) for model in models]
    speeds = speedups_over_first(models, x, threads=THREADS, min_time=min_time, min_rounds=20)
    row: dict[str, Any] = {"model": name, "batch": batch, "threads": THREADS,
                           "unpruned_ms": speeds[0].before.median_ms}
    for label, speed, model_flops, seconds in zip(("half_flops", "half_time"), speeds,
                                                  flops[1:], (uniform_s, timed_s)):
        factor = flops[0] / model_flops
        row[label] = {"flops_factor": factor, "ms": speed.after.median_ms,
                      "speedup": speed.speedup, "speedup_low": speed.low,
                      "speedup_high": speed.high, "ratio": speed.speedup / factor,
                      "prune_s": seconds}
    row["half_time"]["search_reached"] = reached.reached
    half_flops, half_time = row["half_flops"], row["half_time"]
    print(f"{name} batch {batch}: half the FLOPs {half_flops['speedup']:.2f}× for "
          f"{half_flops['flops_factor']:.2f}× fewer FLOPs (ratio {half_flops['ratio']:.2f}); "
          f"half the time {half_time['speedup']:.2f}× for {half_time['flops_factor']:.2f}× "
          f"(ratio {half_time['ratio']:.2f}; pruned in {half_time['prune_s']:.0f} s)",
          flush=True)
    del unpruned, uniform, timed, models
    gc.collect()
    return row


def to_markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["# Asking for the time instead of the FLOPs", "",
             "Each model pruned two ways and timed against the unpruned model, the three "
             "interleaved in one process (eager PyTorch, BatchNorm folded by `pk.fuse` in all "
             f"three after pruning, {THREADS} threads; median speed-up with its 95% "
             "interval). **half the FLOPs**: `FilterPruning(flops_target=0.5, round_to=8)`, "
             "as `speed.md` prunes. **half the time**: `FilterPruning(latency_target=0.5, "
             "round_to=\"measured\")` on the row's batch: the ratio searched by timing each "
             "candidate against the unpruned model (BatchNorm not yet folded; *search* is "
             "the time it reached there), each group's width the widest its layers run as "
             "fast as the narrowest. **ratio** = speed-up ÷ FLOPs reduction. Random weights, "
             "as in `speed.md`: this measures time, not what removing more costs in "
             "accuracy. *pruned in*: the latency-targeted prune's seconds, its timings "
             "included.", "",
             "Reproduce: `python benchmarks/latency_target.py`.", "",
             "| model | batch | unpruned ms | half the FLOPs: FLOPs ÷, speed-up (95% CI) | "
             "ratio | half the time: FLOPs ÷, speed-up (95% CI) | ratio | search | "
             "pruned in |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['batch']} | | | | not reached: {r['error']} "
                         f"| | | |")
            continue
        cells = []
        for label in ("half_flops", "half_time"):
            s = r[label]
            cells.append(f"{s['flops_factor']:.2f}×, {s['speedup']:.2f}× "
                         f"({s['speedup_low']:.2f}–{s['speedup_high']:.2f}) | "
                         f"**{s['ratio']:.2f}**")
        lines.append(f"| {r['model']} | {r['batch']} | {r['unpruned_ms']:.1f} | "
                     f"{cells[0]} | {cells[1]} | {r['half_time']['search_reached']:.0%} | "
                     f"{r['half_time']['prune_s']:.0f} s |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("--only", nargs="+", choices=MEASURED_MODELS,
                        default=list(MEASURED_MODELS))
    parser.add_argument("--batches", nargs="+", type=int, default=list(BATCHES))
    parser.add_argument("--min-time", type=float, default=10.0,
                        help="seconds of timing per model and batch, at least")
    options = parser.parse_args()
    torch.set_num_threads(THREADS)
    rows = [compare(name, batch, options.min_time)
            for name in options.only for batch in options.batches]
    kept = rows_not_rerun("latency_target", rows, lambda r: (r["model"], r["batch"]))
    rows = sorted(kept + rows, key=lambda r: (MEASURED_MODELS.index(r["model"]), r["batch"]))
    write_results("latency_target", {"threads": THREADS, "torch": torch.__version__,
                                    "rows": rows}, to_markdown(rows))
    print(to_markdown(rows))


if __name__ == "__main__":
    main()
