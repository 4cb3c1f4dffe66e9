"""How long one prune takes: ``pk.prune`` (verified) against Torch-Pruning 1.6.1 (unverified),
whole call against whole call, on eight torchvision models at their usual input size.

Measured in one process, alternating the libraries (the order swaps every round), after one
untimed call of each (what runs once per process: imports, lazy set-up), three rounds, best
of three per library and model, on a fresh copy of the model each time.
What each side includes:

- **pk.prune**: trace, rank (L1), check the masked against the physically pruned model on
  the example inputs, apply, and count parameters and FLOPs before and after.
- **prunekit engine**: trace, rank and apply only (the work Torch-Pruning does), on its own.
- **Torch-Pruning**: ``MagnitudePruner(importance=MagnitudeImportance(p=1))`` built on the
  model (its dependency graph) and ``step()``, told which layer is the classifier.

Both remove half of every prunable group's channels (ratio 0.5). Writes
``benchmarks/results/prune_speed.{json,md}`` and the same table into the "Prune call speed"
section of ``benchmarks/results/vs_torch_pruning.md``.

    pip install -e ".[benchmark]"
    python benchmarks/prune_speed.py
    python benchmarks/prune_speed.py --only resnet50 --rounds 5
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import math
import time
from typing import Any, Callable

from harness import RESULTS, write_text

import torch
from torch import nn

import prunekit as pk
from benchmarks.vs_torch_pruning import classifier_layers

RATIO = 0.5
MODELS = {"resnet50": 224, "densenet121": 224, "efficientnet_b0": 224,
          "mobilenet_v3_large": 224, "convnext_tiny": 224, "regnet_y_1_6gf": 224,
          "vgg16_bn": 224, "inception_v3": 299}
SECTION = "## Prune call speed"


def whole_prunekit(model: nn.Module, x: torch.Tensor) -> None:
    pk.prune(model, x, pk.FilterPruning(RATIO, "l1"))


def engine_prunekit(model: nn.Module, x: torch.Tensor) -> None:
    method = pk.FilterPruning(RATIO, "l1")
    proposal = method.propose(model, x, pk.PruneContext())
    plan = proposal.plan(proposal.pieces)
    del proposal  # its graph holds the unpruned tensors
    pk.apply_plan(model, plan)


def torch_pruning(model: nn.Module, x: torch.Tensor) -> None:
    import torch_pruning as tp

    pruner = tp.pruner.MagnitudePruner(
        model, x, importance=tp.importance.MagnitudeImportance(p=1), pruning_ratio=RATIO,
        ignored_layers=classifier_layers(model, x))
    pruner.step()


SIDES: dict[str, Callable[[nn.Module, torch.Tensor], None]] = {
    "pk.prune": whole_prunekit, "prunekit engine": engine_prunekit,
    "Torch-Pruning": torch_pruning}


def build(name: str) -> tuple[nn.Module, torch.Tensor]:
    import torchvision

    kwargs = {"init_weights": False} if name == "inception_v3" else {}
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None, **kwargs).eval()
    size = MODELS[name]
    return model, torch.randn(1, 3, size, size)


def measure(name: str, rounds: int) -> dict[str, Any]:
    base, x = build(name)
    for call in SIDES.values():  # untimed: what runs once per process (imports, lazy set-up)
        call(copy.deepcopy(base), x)
    seconds: dict[str, list[float]] = {side: [] for side in SIDES}
    for round_index in range(rounds):
        order = list(SIDES) if round_index % 2 == 0 else list(reversed(SIDES))
        for side in order:
            model = copy.deepcopy(base)
            gc.collect()
            start = time.perf_counter()
            SIDES[side](model, x)
            seconds[side].append(time.perf_counter() - start)
            del model
    best = {side: min(values) for side, values in seconds.items()}
    row = {"model": name, "input": MODELS[name], "seconds": seconds, "best": best,
           "whole_vs_tp": best["pk.prune"] / best["Torch-Pruning"],
           "engine_vs_tp": best["prunekit engine"] / best["Torch-Pruning"]}
    print(f"{name}: pk.prune {best['pk.prune']:.2f} s, engine {best['prunekit engine']:.2f} s, "
          f"Torch-Pruning {best['Torch-Pruning']:.2f} s", flush=True)
    return row


def geometric_mean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def to_markdown(rows: list[dict[str, Any]], rounds: int) -> str:
    whole = geometric_mean([r["whole_vs_tp"] for r in rows])
    engine = geometric_mean([r["engine_vs_tp"] for r in rows])
    lines = [SECTION, "",
             f"One process, the libraries alternating after an untimed call of each, best of "
             f"{rounds} rounds each, "
             f"{torch.get_num_threads()} threads, ratio {RATIO}, L1; time of prunekit ÷ time "
             f"of Torch-Pruning 1.6.1 (below 1: prunekit is faster). pk.prune includes the "
             f"masked-vs-pruned check and FLOPs before and after; the engine is trace, rank "
             f"and apply; Torch-Pruning is its graph and `step()`, unverified. Reproduce: "
             f"`python benchmarks/prune_speed.py`.", "",
             f"- whole `pk.prune` ÷ Torch-Pruning, geometric mean: **{whole:.2f}×**",
             f"- prunekit engine ÷ Torch-Pruning, geometric mean: **{engine:.2f}×**", "",
             "| model | input | pk.prune (s) | engine (s) | Torch-Pruning (s) | "
             "pk.prune ÷ TP | engine ÷ TP |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        best = r["best"]
        lines.append(f"| {r['model']} | {r['input']}² | {best['pk.prune']:.2f} | "
                     f"{best['prunekit engine']:.2f} | {best['Torch-Pruning']:.2f} | "
                     f"{r['whole_vs_tp']:.2f}× | {r['engine_vs_tp']:.2f}× |")
    return "\n".join(lines) + "\n"


def write_section(markdown: str) -> None:
    """Replace (or add) the section in vs_torch_pruning.md; the rest of it stays."""
    path = RESULTS / "vs_torch_pruning.md"
    text = path.read_text() if path.exists() else ""
    before = text.split(SECTION)[0].rstrip("\n")
    write_text(path, (before + "\n\n" if before else "") + markdown)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=sorted(MODELS))
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rows = [measure(name, args.rounds) for name in (args.only or MODELS)]
    write_text(RESULTS / "prune_speed.json", json.dumps(
        {"rounds": args.rounds, "threads": torch.get_num_threads(), "rows": rows}, indent=1))
    markdown = to_markdown(rows, args.rounds)
    write_text(RESULTS / "prune_speed.md", markdown)
    if not args.only:
        write_section(markdown)
    print(markdown)


if __name__ == "__main__":
    main()
