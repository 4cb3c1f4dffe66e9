"""prunekit and Torch-Pruning 1.6.1 side by side on the same models, in one run.

Both libraries prune every model at ratio 0.5 with their default L1-magnitude settings; the
only thing Torch-Pruning is told is which layer is the classifier (it ignores that layer),
which is what its own examples do, or for the families whose outputs are not a classifier's
(detectors, CLIP towers, diffusion models) every layer that writes an output, found from
prunekit's trace. prunekit is told nothing. For each model: whether each
library handles it (prunes something and the model still runs with unchanged output shapes),
the time to build the graph and prune, and params/FLOPs afterwards. Writes
``benchmarks/results/vs_torch_pruning.{json,md}``.

    pip install -e ".[benchmark]"
    python benchmarks/vs_torch_pruning.py                       # torchvision classification
    python benchmarks/vs_torch_pruning.py --only resnet18 vit_b_16
    python benchmarks/vs_torch_pruning.py --out vs_torch_pruning_families --time-limit 60 \
        --memory-limit-gb 16 \
        --family ultralytics,open_clip,segment-anything,diffusers,recurrent
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import math
import signal
import time
from typing import Any, Callable

from harness import RESULTS, write_text

import torch
from torch import nn

import prunekit as pk
from contracts.model_cases import ModelCase, cases
from prunekit.core.calls import call_model, iter_tensors
from prunekit.measure.model import count_flops, count_params

RATIO = 0.5
TIME_LIMIT_S = 300  # per library and model; a library still working then has failed it


class TimeLimit(Exception):
    pass


def _time_limit(_signum, _frame):
    raise TimeLimit(f"still running after {TIME_LIMIT_S} s")


def output_shapes(model: nn.Module, inputs: Any) -> list[tuple[int, ...]]:
    with torch.no_grad():
        return [tuple(t.shape) for t in iter_tensors(call_model(model.eval(), inputs))]


def classifier_layers(model: nn.Module, inputs: Any) -> list[nn.Module]:
    """The layers that write the model's output classes (what Torch-Pruning must be told)."""
    n_classes = output_shapes(model, inputs)[0][-1]
    return [m for m in model.modules()
            if (isinstance(m, nn.Linear) and m.out_features == n_classes)
            or (isinstance(m, nn.Conv2d) and m.out_channels == n_classes)]


def output_layers(model: nn.Module, inputs: Any) -> list[nn.Module]:
    """The layers whose output channels are the model's outputs (a detector's box, class and
    mask convolutions), found from prunekit's trace: what Torch-Pruning must be told for a
    model whose outputs are not one classifier's logits."""
    graph = pk.DependencyGraph(model, inputs)
    modules = dict(model.named_modules())
    found = {}
    for slot in graph.trace.slots:
        if slot.roles.get(0) != "out":
            continue
        leaves = graph._leaves(slot.specs[0])
        if any(graph.axes.fixed_reason(leaf) == "model output" for leaf in leaves):
            module = modules.get(slot.name.rsplit(".", 1)[0])
            if module is not None:
                found[id(module)] = module
    return list(found.values())


# what Torch-Pruning is told to leave alone: the classifier of a classification model, every
# layer writing an output for the other families (set by --family)
CLASSIFIERS = {"torchvision-classification", "timm"}
ignored_layers: Callable[[nn.Module, Any], list[nn.Module]] = classifier_layers


def prune_with_prunekit(model: nn.Module, inputs: Any) -> dict[str, float]:
    """``pk.prune`` end to end: trace, rank, verify masked vs pruned, apply, count FLOPs.

    Torch-Pruning does only the first and the last but one of these, so the engine's share
    (graph, ranking and applying, the same work Torch-Pruning does) is timed on its own too,
    on a fresh copy, applying the plan ``pk.prune`` settled on.
    """
    engine_model = copy.deepcopy(model)
    method = pk.FilterPruning(RATIO, "l1")
    result = pk.prune(model, inputs, method)
    start = time.perf_counter()
    proposal = method.propose(engine_model, inputs, pk.PruneContext())
    proposal.plan(proposal.pieces)
    del proposal  # its graph holds the unpruned tensors
    pk.apply_plan(engine_model, result.plan)
    return {"engine_seconds": time.perf_counter() - start}


def prune_with_torch_pruning(model: nn.Module, inputs: Any) -> dict[str, float]:
    import torch_pruning as tp

    pruner = tp.pruner.MagnitudePruner(
        model, inputs, importance=tp.importance.MagnitudeImportance(p=1),
        pruning_ratio=RATIO, ignored_layers=ignored_layers(model, inputs))
    pruner.step()
    return {}


def run_library(prune: Callable[[nn.Module, Any], None], case: ModelCase) -> dict[str, Any]:
    torch.manual_seed(0)
    model, inputs = case.build()
    model.eval()
    shapes, params = output_shapes(model, inputs), count_params(model)
    start = time.perf_counter()
    previous = signal.signal(signal.SIGALRM, _time_limit)
    signal.alarm(TIME_LIMIT_S)
    try:
        extra = prune(model, inputs)
        seconds = time.perf_counter() - start - extra.get("engine_seconds", 0.0)
        after = output_shapes(model, inputs)
    except Exception as error:  # a library failing on a model is a result
        return {"handled": False, "error": f"{type(error).__name__}: {error}"[:200]}
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    if after != shapes:
        return {"handled": False, "error": f"output shapes changed: {shapes} -> {after}"}
    if count_params(model) >= params:
        return {"handled": False, "error": "nothing was pruned"}
    return {"handled": True, "seconds": seconds, **extra, "params_before": params,
            "params_after": count_params(model), "flops_after": count_flops(model, inputs)}


def compare(case: ModelCase) -> dict[str, Any]:
    row = {"family": case.family, "model": case.name,
           "prunekit": run_library(prune_with_prunekit, case),
           "torch_pruning": run_library(prune_with_torch_pruning, case)}
    gc.collect()
    return row


def geometric_mean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else float("nan")


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    both = [r for r in rows if r["prunekit"]["handled"] and r["torch_pruning"]["handled"]]
    speedups = [r["torch_pruning"]["seconds"] / r["prunekit"]["engine_seconds"] for r in both]
    verified = [r["torch_pruning"]["seconds"] / r["prunekit"]["seconds"] for r in both]
    return {
        "models": len(rows),
        "prunekit_handled": sum(r["prunekit"]["handled"] for r in rows),
        "torch_pruning_handled": sum(r["torch_pruning"]["handled"] for r in rows),
        "only_torch_pruning": [r["model"] for r in rows
                               if r["torch_pruning"]["handled"] and not r["prunekit"]["handled"]],
        "geomean_speedup": geometric_mean(speedups),
        "geomean_speedup_verified": geometric_mean(verified),
        "speedup_models": len(both),
    }


def _cell(result: dict[str, Any]) -> str:
    if not result["handled"]:
        return f"✗ {result['error']}".replace("|", "/")
    engine = f" (engine {result['engine_seconds']:.2f} s)" if "engine_seconds" in result else ""
    return (f"{result['seconds']:.2f} s{engine}; {result['params_after']:,} params; "
            f"{result['flops_after'] / 1e6:,.0f} MFLOPs")


def write(rows: list[dict[str, Any]], stem: str) -> dict[str, Any]:
    totals = summary(rows)
    write_text(RESULTS / f"{stem}.json", json.dumps({"summary": totals, "rows": rows}, indent=1))
    lines = [
        f"# prunekit vs Torch-Pruning 1.6.1: ratio {RATIO}, L1 magnitude, random weights",
        "",
        f"- models: {totals['models']}; handled by prunekit: {totals['prunekit_handled']}; "
        f"by Torch-Pruning: {totals['torch_pruning_handled']}",
        f"- handled by Torch-Pruning only: {', '.join(totals['only_torch_pruning']) or 'none'}",
        f"- graph building + pruning, Torch-Pruning time / prunekit engine time (trace, rank, "
        f"apply), geometric mean over the {totals['speedup_models']} models both handle: "
        f"**{totals['geomean_speedup']:.2f}×**",
        "- each model timed once per library, one after the other, while other work may share "
        "the machine: a coverage run, not a speed measurement. The speed of the whole "
        "verified `pk.prune` against Torch-Pruning is measured alternating, best of three, "
        "in the Prune call speed section below (`benchmarks/prune_speed.py`)",
        "",
        "| model | prunekit: pk.prune (engine) | Torch-Pruning | time ratio TP / engine |",
        "|---|---|---|---|",
    ]
    for r in rows:
        pk_row, tp_row = r["prunekit"], r["torch_pruning"]
        ratio = (f"{tp_row['seconds'] / pk_row['engine_seconds']:.2f}"
                 if pk_row["handled"] and tp_row["handled"] else "—")
        lines.append(f"| {r['model']} | {_cell(pk_row)} | {_cell(tp_row)} | {ratio} |")
    path = RESULTS / f"{stem}.md"
    # the alternating speed section (benchmarks/prune_speed.py) is kept as it is
    kept = path.read_text().split("## Prune call speed", 1) if path.exists() else [""]
    section = "\n## Prune call speed" + kept[1] if len(kept) == 2 else ""
    write_text(path, "\n".join(lines) + "\n" + section)
    return totals


def main() -> None:
    global TIME_LIMIT_S, ignored_layers
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="torchvision-classification",
                        help="a family of contracts/model_cases.py, or several joined by commas")
    parser.add_argument("--only", nargs="*", help="only these model names")
    parser.add_argument("--out", default="vs_torch_pruning", help="result file stem")
    parser.add_argument("--time-limit", type=int, default=TIME_LIMIT_S,
                        help="seconds per library and model before it counts as failed")
    parser.add_argument("--memory-limit-gb", type=float, default=None,
                        help="cap the process's address space: a library that outgrows it "
                             "fails that model with a MemoryError instead of exhausting the "
                             "machine")
    args = parser.parse_args()
    TIME_LIMIT_S = args.time_limit
    if args.memory_limit_gb:
        import resource

        limit = int(args.memory_limit_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    families = args.family.split(",")
    ignored_layers = classifier_layers if set(families) <= CLASSIFIERS else output_layers
    selected = [c for family in families for c in cases(family)
                if not args.only or c.name in args.only]
    rows = []
    for index, case in enumerate(selected, 1):
        rows.append(compare(case))
        print(f"[{index}/{len(selected)}] {case.name}: prunekit "
              f"{'ok' if rows[-1]['prunekit']['handled'] else 'fail'}, torch-pruning "
              f"{'ok' if rows[-1]['torch_pruning']['handled'] else 'fail'}", flush=True)
    print(json.dumps(write(rows, args.out), indent=1))


if __name__ == "__main__":
    main()
