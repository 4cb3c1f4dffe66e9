"""Where FLOPs saved stop being time saved: a per-layer account of the speed table's cells
below 0.9, and the best ratio any choice of widths could give on this machine.

For each model of ``speed.py``, pruned as there, in eager PyTorch (both models with
BatchNorm folded by ``pk.fuse``), at batch 1 and 8, on two threads:

1. **Per layer.** Every convolution and linear layer is timed alone, on an input of the
   shape it reads in the model, at its unpruned and at its pruned shape (median of repeated
   calls after a warm-up). The table gives each layer's time against its FLOPs; *other* is
   the whole forward pass (timed without hooks) less the layers' sum: normalisations,
   activations, pooling, attention's matrix products, Python between the modules. *Other
   alone* is the same measured directly: the forward pass with every layer replaced by a
   replay of its output (``without_layers``), both models interleaved.
2. **Every FLOP at full speed.** The ratio the pruned model would reach if each layer ran
   its pruned FLOPs at its unpruned throughput (FLOPs per second), *other alone* as
   measured.
3. **The best any widths could give.** Each layer is timed alone at every width from full
   down to a quarter (its pruned dimensions scaled together in steps of an eighth, rounded
   to 8; a depthwise convolution's channels and groups together). The widths whose summed
   time is least for no more FLOPs than the pruned model has are chosen per layer (each
   layer free: a relaxation that ignores that a layer's input width is the last one's
   output; a Lagrangian search over the measured times), and *other alone* is kept as the
   pruned model's. What that sum gives against the unpruned model is the best ratio any
   widths could give: an upper bound where layers cost no less in the model than alone
   (*other alone* no more than the whole pass less the layers; not so for YOLOv8n at batch
   8), loose where layers differ much in time per FLOP (the relaxation may narrow one layer
   and not the next, which no network allows) and by whatever layers cost more in the model
   than alone. (It once carried the whole pass less the layers' sum, whose noise moved it by
   up to 0.28 between runs; the table gives that variant too, *other kept*.)

4. **ONNX Runtime** (``--runtimes onnx``): each model exported by ``pk.export`` and run with
   ONNX Runtime's profiler on; the time in its multiply-add kernels (Conv, Gemm, MatMul)
   against the model's FLOPs, every other kernel as *other*, and the ratio at full speed
   from them (ONNX Runtime fuses and renames layers, so kernels are told apart by kind).
5. **torch.compile** (``--runtimes compile``): the same from ``torch.profiler``: the
   convolutions and matrix products inductor's code calls out to, and the rest.

    python benchmarks/speed_limits.py                  # five models, about 25 minutes
    python benchmarks/speed_limits.py --only mobilenet_v3_large --batches 1

Results: ``benchmarks/results/speed_limits.{json,md}``.
"""

from __future__ import annotations

import copy
import gc
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from harness import arguments, rows_not_rerun, write_results

import torch
from speed import MODELS, THREADS, built_and_pruned, fold_batchnorm
from torch import nn

import prunekit as pk
from prunekit.core.calls import call_model
from prunekit.measure.latency import speedups_over_first
from prunekit.measure.model import count_flops

BATCHES = (1, 8)
WIDTHS = tuple(k / 8 for k in range(8, 1, -1))  # full width down to a quarter
# the models with a cell below 0.9 in speed.md (ViT-B/16 has none)
ACCOUNTED = ("resnet50", "mobilenet_v3_large", "convnext_tiny", "yolov8n", "minilm")


def layer_inputs(model: nn.Module, x: Any) -> dict[str, torch.Size]:
    """The input shape each convolution and linear layer reads in one forward pass."""
    shapes: dict[str, torch.Size] = {}

    def record(name: str) -> Callable:
        def hook(module: nn.Module, args: tuple) -> None:  # (returning None keeps the args)
            shapes.setdefault(name, args[0].shape)
        return hook

    handles = [module.register_forward_pre_hook(record(name))
               for name, module in model.named_modules()
               if isinstance(module, (nn.Conv2d, nn.Linear))]
    with torch.inference_mode():
        call_model(model, x)
    for handle in handles:
        handle.remove()
    return shapes


def flops(layer: nn.Module, shape: torch.Size) -> int:
    """Multiply-adds ×2 of ``layer`` alone on an input of ``shape`` (prunekit's counter)."""
    return count_flops(layer, torch.randn(shape))


def seconds(layer: nn.Module, shape: torch.Size, repeats: int = 15,
            least: float = 0.05) -> float:
    """The median time of ``layer`` alone on a random input of ``shape``: at least
    ``repeats`` calls and ``least`` seconds of them, after three to warm up."""
    x = torch.randn(shape)
    times: list[float] = []
    with torch.inference_mode():
        for _ in range(3):
            layer(x)
        while len(times) < repeats or sum(times) < least:
            started = time.perf_counter()
            layer(x)
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def narrowed(layer: nn.Module, pruned: nn.Module, width: float) -> nn.Module:
    """``layer`` with each dimension the pruning narrowed (``pruned`` has it narrower)
    scaled to ``width`` of its unpruned size, rounded to 8 (a depthwise convolution's
    channels and groups together)."""
    def scaled(size: int, was_pruned: bool) -> int:
        return max(8, round(size * width / 8) * 8) if was_pruned else size

    if isinstance(layer, nn.Linear):
        return nn.Linear(scaled(layer.in_features, pruned.in_features < layer.in_features),
                         scaled(layer.out_features, pruned.out_features < layer.out_features))
    depthwise = layer.groups == layer.in_channels == layer.out_channels > 1
    out = scaled(layer.out_channels, pruned.out_channels < layer.out_channels)
    inputs = out if depthwise else scaled(layer.in_channels,
                                          pruned.in_channels < layer.in_channels)
    return nn.Conv2d(inputs, out, layer.kernel_size, layer.stride, layer.padding,
                     layer.dilation, groups=out if depthwise else 1, bias=layer.bias is not None)


def with_channels(shape: torch.Size, layer: nn.Module) -> torch.Size:
    """``shape`` with as many channels (features) as ``layer`` reads."""
    if isinstance(layer, nn.Linear):
        return torch.Size([*shape[:-1], layer.in_features])
    return torch.Size([shape[0], layer.in_channels, *shape[2:]])


def whole_passes(unpruned: nn.Module, pruned: nn.Module, x: Any) -> tuple[float, float]:
    """The two models' median forward pass, timed interleaved as ``speed.py`` times them."""
    speed = speedups_over_first([unpruned, pruned], x, threads=THREADS, min_time=2.0,
                                min_rounds=10)[0]
    return speed.before.median_ms / 1e3, speed.after.median_ms / 1e3


class Replay(nn.Module):
    """Stands in for a layer: gives back the output the layer gave in one real pass, so a
    forward pass through the model costs everything but the layers' own work."""

    def __init__(self, output: torch.Tensor) -> None:
        super().__init__()
        self.output = output

    def forward(self, *_args: Any, **_kwargs: Any) -> torch.Tensor:
        return self.output


def without_layers(model: nn.Module, x: Any) -> nn.Module:
    """A copy of ``model`` whose convolution and linear layers are ``Replay``s of their
    outputs on ``x``."""
    outputs: dict[str, torch.Tensor] = {}
    layers = {name: module for name, module in model.named_modules()
              if isinstance(module, (nn.Conv2d, nn.Linear))}
    handles = [module.register_forward_hook(
        lambda _m, _a, output, name=name: outputs.setdefault(name, output.detach()))
        for name, module in layers.items()]
    with torch.inference_mode():
        call_model(model, x)
    for handle in handles:
        handle.remove()
    bare = copy.deepcopy(model)
    for name, output in outputs.items():
        parent, _, child = name.rpartition(".")
        setattr(bare.get_submodule(parent) if parent else bare, child, Replay(output.clone()))
    return bare


def other_alone(unpruned: nn.Module, pruned: nn.Module, x: Any) -> tuple[float, float]:
    """*Other* timed by itself: both models' median forward pass with every convolution and
    linear layer replayed (``without_layers``), interleaved, in seconds. Unlike the whole
    pass less the layers' sum it is not the small difference of two large noisy times."""
    bare = [without_layers(model, x) for model in (unpruned, pruned)]
    return whole_passes(*bare, x)


def best_widths(curves: list[list[tuple[float, float]]], budget: float) -> float:
    """The least summed time over one (seconds, FLOPs) option per layer with at most
    ``budget`` FLOPs in all: per price ``λ`` each layer takes the option least in
    seconds + λ·FLOPs; the least ``λ`` that keeps within the budget is found by bisection."""
    def choose(price: float) -> tuple[float, float]:
        picks = [min(options, key=lambda o: o[0] + price * o[1]) for options in curves]
        return sum(p[0] for p in picks), sum(p[1] for p in picks)

    low, high = 0.0, 1.0
    while choose(high)[1] > budget:
        high *= 2
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (middle, high) if choose(middle)[1] > budget else (low, middle)
    return choose(high)[0]


def account(name: str, batch: int) -> dict[str, Any]:
    unpruned, pruned, how, _ = built_and_pruned(name)
    x = MODELS[name][1](batch)
    for model in (unpruned, pruned):
        fold_batchnorm(model, x)
    model_flops = (count_flops(unpruned, x), count_flops(pruned, x))
    factor = model_flops[0] / model_flops[1]
    shapes = layer_inputs(unpruned, x)
    pruned_modules = dict(pruned.named_modules())
    layers, curves = [], []
    for layer_name, shape in shapes.items():
        layer = dict(unpruned.named_modules())[layer_name]
        after = pruned_modules[layer_name]
        after_shape = with_channels(shape, after)
        row = {"layer": layer_name, "kind": _kind(layer),
               "unpruned_ms": seconds(layer, shape) * 1e3,
               "pruned_ms": seconds(after, after_shape) * 1e3,
               "unpruned_flops": flops(layer, shape), "pruned_flops": flops(after, after_shape)}
        layers.append(row)
        options = []
        for width in WIDTHS:
            candidate = narrowed(layer, after, width)
            candidate_shape = with_channels(shape, candidate)
            options.append((seconds(candidate, candidate_shape),
                            flops(candidate, candidate_shape)))
        curves.append(options)
    whole = whole_passes(unpruned, pruned, x)
    layer_sum = (sum(r["unpruned_ms"] for r in layers) / 1e3,
                 sum(r["pruned_ms"] for r in layers) / 1e3)
    other = (whole[0] - layer_sum[0], whole[1] - layer_sum[1])
    alone = other_alone(unpruned, pruned, x)
    full_speed = sum(r["unpruned_ms"] / 1e3 * r["pruned_flops"] / r["unpruned_flops"]
                     for r in layers)
    budget = sum(r["pruned_flops"] for r in layers)
    best = best_widths(curves, budget)
    result = {"model": name, "pruned": how, "batch": batch, "threads": THREADS,
              "flops_factor": factor, "whole_ms": [w * 1e3 for w in whole],
              "layers_ms": [s * 1e3 for s in layer_sum], "other_ms": [o * 1e3 for o in other],
              "other_alone_ms": [a * 1e3 for a in alone],
              "ratio": whole[0] / whole[1] / factor,
              "layers_ratio": layer_sum[0] / layer_sum[1] / (
                  sum(r["unpruned_flops"] for r in layers) / budget),
              # both bounds carry other timed alone: the difference whole − layers moved
              # their value by up to 0.28 between runs of the same cell
              "full_speed_ratio": whole[0] / (full_speed + alone[1]) / factor,
              "best_widths_ratio": whole[0] / (best + alone[1]) / factor,
              "best_layers_ms": best * 1e3, "layers": layers}
    print(f"{name} batch {batch}: ratio {result['ratio']:.2f}; layers alone "
          f"{result['layers_ratio']:.2f}; at full speed {result['full_speed_ratio']:.2f}; "
          f"best widths {result['best_widths_ratio']:.2f} (other {other[0] * 1e3:.1f} → "
          f"{other[1] * 1e3:.1f} ms, alone {alone[0] * 1e3:.1f} → {alone[1] * 1e3:.1f} ms)",
          flush=True)
    del unpruned, pruned
    gc.collect()
    return result


# what a runtime's multiply-add kernels are called (ONNX Runtime: Conv, Gemm, MatMul,
# FusedMatMul; torch.compile's calls out: aten::addmm, mkldnn::_convolution_pointwise …)
MAC_NAMES = ("conv", "gemm", "matmul", "mm", "linear")


def is_multiply_add(kernel: str) -> bool:
    return any(name in kernel.lower() for name in MAC_NAMES)


def onnx_op_times(model: nn.Module, x: Any, folder: Path, repeats: int = 30
                  ) -> tuple[dict[str, float], float]:
    """Seconds per pass spent in each kind of ONNX Runtime kernel (its profile's ``op_name``:
    ``Conv``, ``MatMul``, ``Relu`` …) running ``model``'s export (``pk.export``) on 2
    intra-op threads without spinning, as ``speed.py`` runs it, over ``repeats`` passes after
    five to warm up; and the passes' median. (ONNX Runtime fuses a convolution with its norm
    and activation and renames the result, so kernels are told apart by kind, not layer.)"""
    import onnxruntime

    path = folder / "model.onnx"
    pk.export(model, x, path, tolerance=1e-3, fresh_inputs=0)
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads, options.inter_op_num_threads = THREADS, 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.enable_profiling = True
    options.profile_file_prefix = str(folder / "profile")
    session = onnxruntime.InferenceSession(str(path), options,
                                           providers=["CPUExecutionProvider"])
    given = x if isinstance(x, dict) else {"x": x}
    names = [i.name for i in session.get_inputs()]
    feed = ({n: given[n].numpy() for n in names} if all(n in given for n in names)
            else dict(zip(names, (v.numpy() for v in given.values()))))
    for _ in range(5 + repeats):
        session.run(None, feed)
    events = json.loads(Path(session.end_profiling()).read_text())
    runs = [e for e in events if e.get("name") == "model_run"]
    start = runs[5]["ts"]  # the warm-up passes are profiled too: leave them out
    times: dict[str, float] = {}
    for event in events:
        if event.get("cat") == "Node" and event["ts"] >= start and \
                event["name"].endswith("_kernel_time"):
            op = event.get("args", {}).get("op_name", "?")
            times[op] = times.get(op, 0.0) + event["dur"] / 1e6 / repeats
    return times, statistics.median(r["dur"] for r in runs[5:]) / 1e6


def compile_op_times(model: nn.Module, x: Any, folder: Path, repeats: int = 20
                     ) -> tuple[dict[str, float], float]:
    """Seconds per pass in each operator ``torch.profiler`` records while the
    ``torch.compile``d model (inductor) runs, by self time, over ``repeats`` passes after
    the compile and a warm-up; and the median pass timed without the profiler. Inductor's
    generated kernels are not recorded one by one: their time is the compiled region's own,
    which counts as *other*; the convolutions and matrix products it calls out to are."""
    torch._dynamo.reset()
    compiled = torch.compile(model)
    with torch.inference_mode():
        for _ in range(3):
            call_model(compiled, x)
        passes = []
        for _ in range(repeats):
            started = time.perf_counter()
            call_model(compiled, x)
            passes.append(time.perf_counter() - started)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as trace:
            for _ in range(repeats):
                call_model(compiled, x)
    times: dict[str, float] = {}
    for event in trace.key_averages():
        # "## Call CompiledFxGraph <hash> ##": the generated code, whose hash differs per model
        key = ("inductor's generated code" if event.key.startswith("## Call CompiledFxGraph")
               else event.key)
        times[key] = times.get(key, 0.0) + event.self_cpu_time_total / 1e6 / repeats
    return times, statistics.median(passes)


OP_TIMES = {"onnx": onnx_op_times, "compile": compile_op_times}
RUNTIME_NAMES = {"onnx": "ONNX Runtime", "compile": "torch.compile"}


def kernel_account(name: str, batch: int, runtime: str) -> dict[str, Any]:
    """The account of a cell in ONNX Runtime or ``torch.compile``: the time in multiply-add
    kernels (convolutions, linear layers and, in attention, its matrix products) against the
    model's FLOPs, and the time in every other kernel, unpruned and pruned."""
    unpruned, pruned, how, _ = built_and_pruned(name)
    x = MODELS[name][1](batch)
    factor = count_flops(unpruned, x) / count_flops(pruned, x)
    totals, kinds = [], []
    for model in (unpruned, pruned):
        with tempfile.TemporaryDirectory() as scratch:
            times, whole = OP_TIMES[runtime](model, x, Path(scratch))
        layers = sum(t for op, t in times.items() if is_multiply_add(op))
        totals.append((whole, layers, sum(times.values()) - layers))
        kinds.append(times)
    (whole_u, layers_u, other_u), (whole_p, layers_p, other_p) = totals
    result = {"model": name, "pruned": how, "batch": batch, "runtime": runtime,
              "flops_factor": factor, "whole_ms": [whole_u * 1e3, whole_p * 1e3],
              "layers_ms": [layers_u * 1e3, layers_p * 1e3],
              "other_ms": [other_u * 1e3, other_p * 1e3],
              "kernels_ms": {op: [t * 1e3, kinds[1].get(op, 0.0) * 1e3]
                             for op, t in sorted(kinds[0].items(), key=lambda kv: -kv[1])},
              "ratio": whole_u / whole_p / factor,
              "layers_ratio": layers_u / layers_p / factor,
              # the pruned pass with its multiply-add kernels at their unpruned FLOPs per second
              "full_speed_ratio": whole_u / (whole_p - layers_p + layers_u / factor) / factor}
    print(f"{name} batch {batch} {runtime}: ratio {result['ratio']:.2f}; layers "
          f"{result['layers_ratio']:.2f}; at full speed {result['full_speed_ratio']:.2f} "
          f"(other {other_u * 1e3:.1f} → {other_p * 1e3:.1f} ms)", flush=True)
    del unpruned, pruned
    gc.collect()
    return result


def _kind(layer: nn.Module) -> str:
    if isinstance(layer, nn.Linear):
        return "Linear"
    grouping = " depthwise" if layer.groups == layer.in_channels > 1 else ""
    return f"Conv2d {layer.kernel_size[0]}×{layer.kernel_size[1]}{grouping}"


KERNEL_ACCOUNTS = {
    "onnx": "Each model exported by `pk.export` and run in ONNX Runtime (CPU, 2 intra-op "
            "threads) with its profiler on, over 30 passes (their median the whole): "
            "*layers* the time in its multiply-add kernels (Conv, with the norm and "
            "activation it fuses into them; Gemm; MatMul, attention's products included), "
            "*other* every other kernel.",
    "compile": "Each model `torch.compile`d (inductor) and run under `torch.profiler` over "
               "20 passes (the whole: the median of 20 passes without it): *layers* the "
               "self time of the convolutions and matrix products the compiled code calls "
               "out to, *other* the rest (inductor's generated kernels, which fuse the norms "
               "and activations, are not recorded one by one and count here).",
}


def to_markdown(results: list[dict[str, Any]]) -> str:
    lines = ["# Where FLOPs saved stop being time saved", "",
             f"Eager PyTorch, BatchNorm folded in both models, {THREADS} threads; each model "
             "pruned as in `speed.md`. **ratio**: the whole pruned model's speed-up ÷ its "
             "FLOPs reduction (timed interleaved, as `speed.md` times them). **layers alone**: the same for the convolution and linear "
             "layers each timed alone, summed. *other*: the whole pass less the layers "
             "alone (normalisation, activations, pooling, attention's products, Python, and "
             "whatever the layers cost more in the model than alone). **other alone**: the "
             "whole pass with every convolution and linear layer replaced by a replay of its "
             "output, timed interleaved: what the model costs without the layers' work, "
             "measured directly instead of as a small difference of two large times. **full "
             "speed**: the ratio if every layer ran its pruned FLOPs at its unpruned "
             "throughput, *other alone* as the pruned model's. **best widths**: the ratio of "
             "the fastest choice of per-layer widths (from full to a quarter, in eighths, "
             "rounded to 8, each layer timed alone at each) with no more FLOPs than the "
             "pruned model, *other alone* as the pruned model's: an upper bound where "
             "*other alone* is no more than *other* (layers costing no less in the model than "
             "alone), since each layer's width is chosen free of its neighbours' (no network "
             "allows that); loose where layers differ much in time per FLOP. Rows with — under *other alone* were measured before it "
             "existed: their bounds carry *other* instead, which moved them by up to 0.28 "
             "between runs. Reproduce: "
             "`python benchmarks/speed_limits.py`.", "",
             "**best widths, other kept**: the same with the pruned model's *other* (the whole "
             "pass less the layers alone) in place of *other alone*: what the bound would be "
             "if the time layers cost in the model beyond their time alone did not shrink "
             "with them.", "",
             "| model | batch | FLOPs ÷ | unpruned ms (layers + other) | pruned ms (layers + "
             "other) | other alone, ms | ratio | layers alone | full speed | best widths | "
             "best widths, other kept |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    eager = [r for r in results if r.get("runtime", "eager") == "eager"]
    for r in eager:
        lines.append(
            f"| {r['model']} | {r['batch']} | {r['flops_factor']:.2f}× | "
            f"{r['whole_ms'][0]:.1f} ({r['layers_ms'][0]:.1f} + {r['other_ms'][0]:.1f}) | "
            f"{r['whole_ms'][1]:.1f} ({r['layers_ms'][1]:.1f} + {r['other_ms'][1]:.1f}) | "
            + (f"{r['other_alone_ms'][0]:.1f} → {r['other_alone_ms'][1]:.1f} | "
               if "other_alone_ms" in r else "— | ")
            + f"{r['ratio']:.2f} | {r['layers_ratio']:.2f} | {r['full_speed_ratio']:.2f} | "
            f"**{r['best_widths_ratio']:.2f}** | " + (
                f"{r['whole_ms'][0] / (r['best_layers_ms'] + r['other_ms'][1]) / r['flops_factor']:.2f} |"
                if "other_alone_ms" in r else "— |"))
    for runtime, how in KERNEL_ACCOUNTS.items():
        rows = [r for r in results if r.get("runtime") == runtime]
        if not rows:
            continue
        lines += ["", f"## {RUNTIME_NAMES[runtime]}", "", how + " **layers** is that time "
                  "against the model's FLOPs; **ratio**, **layers** and **full speed** as "
                  "above, from the profile (not interleaved).", "",
                  "| model | batch | FLOPs ÷ | unpruned ms (layers + other) | pruned ms "
                  "(layers + other) | ratio | layers | full speed |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(
                f"| {r['model']} | {r['batch']} | {r['flops_factor']:.2f}× | "
                f"{r['whole_ms'][0]:.1f} ({r['layers_ms'][0]:.1f} + {r['other_ms'][0]:.1f}) | "
                f"{r['whole_ms'][1]:.1f} ({r['layers_ms'][1]:.1f} + {r['other_ms'][1]:.1f}) | "
                f"{r['ratio']:.2f} | {r['layers_ratio']:.2f} | "
                f"**{r['full_speed_ratio']:.2f}** |")
        lines += ["", "Time per kind of kernel, milliseconds unpruned → pruned (the five "
                  "longest unpruned):", ""]
        for r in rows:
            kernels = list(r["kernels_ms"].items())[:5]
            lines.append(f"- {r['model']}, batch {r['batch']}: " + ", ".join(
                f"{op} {before:.1f} → {after:.1f}" for op, (before, after) in kernels))
    lines += ["", "## The layers, batch 1 (eager)", "",
              "The ten layers that take longest unpruned, and each kind in all: time alone, "
              "unpruned and pruned, against FLOPs; *per FLOP* is the layer's speed-up ÷ its "
              "FLOPs reduction.", ""]
    for r in (r for r in eager if r["batch"] == 1):
        lines += [f"### {r['model']}", "",
                  "| layer | kind | unpruned ms | pruned ms | speed-up | FLOPs ÷ | per FLOP |",
                  "|---|---|---|---|---|---|---|"]
        top = sorted(r["layers"], key=lambda layer: -layer["unpruned_ms"])[:10]
        kinds: dict[str, list[dict[str, Any]]] = {}
        for layer in r["layers"]:
            kinds.setdefault(layer["kind"], []).append(layer)
        rows = [(layer["layer"], layer["kind"], [layer]) for layer in top] + [
            (f"all {kind} ({len(group)})", kind, group) for kind, group in kinds.items()]
        for label, kind, group in rows:
            before = sum(g["unpruned_ms"] for g in group)
            after = sum(g["pruned_ms"] for g in group)
            fewer = (sum(g["unpruned_flops"] for g in group)
                     / sum(g["pruned_flops"] for g in group))
            lines.append(f"| {label} | {kind} | {before:.2f} | {after:.2f} | "
                         f"{before / after:.2f}× | {fewer:.2f}× | {before / after / fewer:.2f} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("--only", nargs="+", choices=ACCOUNTED, default=list(ACCOUNTED))
    parser.add_argument("--batches", nargs="+", type=int, default=list(BATCHES))
    parser.add_argument("--runtimes", nargs="+", choices=("eager", "onnx", "compile"),
                        default=["eager", "onnx", "compile"])
    options = parser.parse_args()
    torch.set_num_threads(THREADS)
    results = [account(name, batch) if runtime == "eager" else
               kernel_account(name, batch, runtime) for runtime in options.runtimes
               for name in options.only for batch in options.batches]
    kept = rows_not_rerun("speed_limits", results, field="results", key=lambda r: (
        r["model"], r["batch"], r.get("runtime", "eager")))
    order = ("eager", "onnx", "compile")
    results = sorted(kept + results, key=lambda r: (
        order.index(r.get("runtime", "eager")), ACCOUNTED.index(r["model"]), r["batch"]))
    write_results("speed_limits", {"threads": THREADS, "torch": torch.__version__,
                                   "results": results}, to_markdown(results))
    print(to_markdown(results))


if __name__ == "__main__":
    main()
