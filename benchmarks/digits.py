"""Every method on the digits ResNet at several FLOPs budgets, over several seeds, with
Torch-Pruning 1.6.1 (magnitude and Taylor) on the same model, data and budgets.

For each seed: train the digits ResNet, then ``pk.compare`` it at each budget (each method on its
own copy, pruned to the same fraction of FLOPs, evaluated as pruned, one-shot after BatchNorm
statistics are re-estimated, and after the same fine-tuning). Writes
``benchmarks/results/digits.{json,md}`` and ``digits.png`` (accuracy against FLOPs).

    pip install -e ".[benchmark]"
    python benchmarks/digits.py                  # 5 seeds; 30, 50 and 70% of FLOPs; 10 epochs
    python benchmarks/digits.py --seeds 1 --flops-targets 0.5 --finetune-epochs 2
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
from pathlib import Path
from typing import Any, Callable

from harness import RESULTS, save_figure, write_text

import torch
from torch import nn

import prunekit as pk
from prunekit.cli.demo import trained_digits_resnet
from prunekit.measure.model import count_flops
from prunekit.workflows.compare import default_methods


def torch_pruning(importance: str, flops_target: float) -> Callable[[nn.Module, Any, Any], None]:
    """A Torch-Pruning pruner reaching ``flops_target`` by bisection over its ratio."""
    import torch_pruning as tp

    def run(model: nn.Module, x: torch.Tensor, data, ratio: float) -> None:
        scorer = (tp.importance.MagnitudeImportance(p=1) if importance == "magnitude"
                  else tp.importance.TaylorImportance())
        pruner = tp.pruner.MetaPruner(model, x, importance=scorer, pruning_ratio=ratio,
                                      ignored_layers=[model[-1]])
        if importance == "taylor":  # Taylor reads the gradients of the loss on the data
            model.zero_grad()
            for inputs, labels in data:
                nn.functional.cross_entropy(model(inputs), labels).backward()
        pruner.step()
        model.zero_grad()

    def prune(model: nn.Module, x: torch.Tensor, data) -> None:
        base = count_flops(model, x)
        low, high, best = 0.0, 0.95, (1.0, 0.5)
        for _ in range(14):
            middle = (low + high) / 2
            trial = copy.deepcopy(model)
            run(trial, x, data, middle)
            removed = 1 - count_flops(trial, x) / base
            best = min(best, (abs(removed - flops_target), middle))
            if best[0] <= 0.005:
                break
            low, high = (middle, high) if removed < flops_target else (low, middle)
        run(model, x, data, best[1])

    return prune


def run_seed(seed: int, flops_targets: list[float], epochs: int, finetune_epochs: int,
             with_torch_pruning: bool) -> list[pk.Comparison]:
    """One trained model, compared at every budget."""
    model, digits = trained_digits_resnet(epochs, seed)
    comparisons = []
    for flops_target in flops_targets:
        methods: dict[str, Any] = dict(default_methods(flops_target))
        if with_torch_pruning:
            methods["Torch-Pruning magnitude"] = torch_pruning("magnitude", flops_target)
            methods["Torch-Pruning Taylor"] = torch_pruning("taylor", flops_target)
        comparisons.append(pk.compare(
            model, digits.example_inputs, digits.train, digits.test, flops_target=flops_target,
            finetune_epochs=finetune_epochs, methods=methods, data=digits.calibration,
            timing_inputs=next(iter(digits.test))[0], seed=seed,
            progress=lambda message: print(f"  seed {seed}, {flops_target:.0%}: {message}",
                                           flush=True)))
    return comparisons


def summarise(runs: list[pk.Comparison]) -> list[dict[str, Any]]:
    rows = []
    for index, first in enumerate(runs[0].rows):
        per_seed = [run.rows[index] for run in runs]

        def spread(values: list[float]) -> tuple[float, float]:
            return statistics.mean(values), statistics.pstdev(values)

        tuned = [r.accuracy_fine_tuned for r in per_seed if r.accuracy_fine_tuned is not None]
        rows.append({
            "method": first.method,
            "flops_removed": spread([1 - r.flops / run.baseline.flops
                                     for r, run in zip(per_seed, runs)]),
            "params": spread([r.params for r in per_seed]),
            "latency_ms": spread([r.latency_ms for r in per_seed]),
            "accuracy_as_pruned": spread([r.accuracy_as_pruned for r in per_seed]),
            "accuracy_one_shot": spread([r.accuracy_one_shot for r in per_seed]),
            "accuracy_fine_tuned": spread(tuned) if tuned else None,
            "verified": [r.verified for r in per_seed],
        })
    return rows


def goals(levels: dict[float, list[dict[str, Any]]], goal_target: float) -> list[str]:
    """The issue's goals, checked on the averaged rows: fine-tuned accuracy at the goal budget;
    informed criteria against random and reconstruction against plain channel pruning at
    every budget."""
    lines = []
    goal_target = min(levels, key=lambda t: abs(t - goal_target))  # the nearest one run
    rows = levels[goal_target]
    base = rows[0]["accuracy_one_shot"][0]
    best_tuned = max((r for r in rows[1:] if r["accuracy_fine_tuned"]
                      and abs(r["flops_removed"][0] - goal_target) <= 0.02),
                     key=lambda r: r["accuracy_fine_tuned"][0])
    lines.append(f"best fine-tuned at {goal_target:.0%} of FLOPs removed: {best_tuned['method']} "
                 f"{best_tuned['accuracy_fine_tuned'][0]:.1%} vs unpruned {base:.1%} "
                 f"({(best_tuned['accuracy_fine_tuned'][0] - base) * 100:+.1f} points; "
                 f"goal ≥ -0.5)")
    for target, rows in levels.items():
        by_name = {r["method"]: r for r in rows}
        informed = [r for r in rows if r["method"].startswith("filter (")
                    and "random" not in r["method"]]
        for key, label in (("accuracy_as_pruned", "as pruned"),
                           ("accuracy_one_shot", "one-shot (statistics re-estimated)")):
            random_accuracy = by_name["filter (random)"][key][0]
            beaten = [r["method"][len("filter ("):-1] for r in informed
                      if r[key][0] <= random_accuracy]
            lines.append(f"{target:.0%} of FLOPs, {label}: informed filter criteria not above "
                         f"random ({random_accuracy:.1%}): {', '.join(beaten) or 'none'}")
        plain = by_name["channel (l2)"]["accuracy_one_shot"][0]
        rebuilt = by_name["channel (l2) + reconstruction"]["accuracy_one_shot"][0]
        lines.append(f"{target:.0%} of FLOPs, one-shot: channel pruning with reconstruction "
                     f"{rebuilt:.1%} vs without {plain:.1%}")
    return lines


def write(levels: dict[float, list[dict[str, Any]]], runs: list[list[pk.Comparison]],
          args) -> None:
    summary = goals(levels, 0.5)
    write_text(RESULTS / "digits.json", json.dumps(
        {"settings": {k: v for k, v in vars(args).items() if k != "results"},
         "summary": summary,
         "levels": [{"flops_target": t, "rows": rows} for t, rows in levels.items()],
         "runs": [[comparison.to_dict() for comparison in seed] for seed in runs]}, indent=1))
    lines = [f"# Digits ResNet: {', '.join(f'{t:.0%}' for t in levels)} of FLOPs removed, "
             f"{len(runs)} seeds, {args.finetune_epochs} fine-tuning epochs "
             f"(mean ± std over seeds)", ""]
    lines += [f"- {line}" for line in summary]
    lines += ["", "![accuracy against FLOPs](digits.png)", "",
              "As pruned: no change after pruning. One-shot: BatchNorm statistics re-estimated "
              "on calibration batches, no training. Fine-tuned: then the same Adam epochs for "
              "every method."]

    def pct(pair) -> str:
        return "—" if pair is None else f"{pair[0]:.1%} ± {pair[1]:.1%}"

    for target, rows in levels.items():
        lines += ["", f"## {target:.0%} of FLOPs removed", "",
                  "| method | FLOPs removed | params | latency ms (batch 256) | accuracy as pruned "
                  "| accuracy one-shot | accuracy fine-tuned | verified |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in rows:
            verified = "n/a" if None in r["verified"] else "yes" if all(r["verified"]) else "NO"
            lines.append(f"| {r['method']} | {r['flops_removed'][0]:.1%} | "
                         f"{r['params'][0]:,.0f} | {r['latency_ms'][0]:.2f} | "
                         f"{pct(r['accuracy_as_pruned'])} | {pct(r['accuracy_one_shot'])} | "
                         f"{pct(r['accuracy_fine_tuned'])} | {verified} |")
    write_text(RESULTS / "digits.md", "\n".join(lines) + "\n")
    plot(levels, RESULTS / "digits.png")


def plot(levels: dict[float, list[dict[str, Any]]], path: Path) -> None:
    """Accuracy against FLOPs kept, one line per method: one-shot left, fine-tuned right."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, panels = plt.subplots(1, 2, figsize=(13, 5.5), sharex=True)
    methods = [r["method"] for r in next(iter(levels.values()))]
    for index, method in enumerate(methods):
        if method == "unpruned":
            continue
        points = sorted((((1 - r["flops_removed"][0]) * 100, r) for rows in levels.values()
                         for r in rows if r["method"] == method), key=lambda point: point[0])
        style = dict(color=plt.cm.tab20(index % 20), label=method, capsize=2,
                     linestyle="--" if method.startswith("Torch-Pruning") else "-")
        for panel, key in zip(panels, ("accuracy_one_shot", "accuracy_fine_tuned")):
            panel.errorbar([x for x, _ in points], [r[key][0] * 100 for _, r in points],
                           yerr=[r[key][1] * 100 for _, r in points], marker="o", ms=4, **style)
    base = next(iter(levels.values()))[0]["accuracy_one_shot"][0] * 100
    for panel, title in zip(panels, ("one-shot (BatchNorm statistics re-estimated)",
                                     "fine-tuned")):
        panel.axhline(base, color="black", linestyle=":", label="unpruned")
        panel.set_title(title)
        panel.set_xlabel("FLOPs kept (% of unpruned)")
        panel.set_ylabel("test accuracy (%)")
    panels[1].set_ylim(max(0, base - 6), 100.5)
    panels[0].legend(fontsize=7, loc="lower right", ncol=2)
    figure.tight_layout()
    save_figure(figure, path)
    plt.close(figure)


def main() -> None:
    global RESULTS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--flops-targets", default="0.3,0.5,0.7",
                        help="comma-separated fractions of FLOPs to remove")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--finetune-epochs", type=int, default=10)
    parser.add_argument("--no-torch-pruning", action="store_true")
    parser.add_argument("--results", type=Path, default=RESULTS,
                        help="where digits.{json,md,png} go (a quick run should not replace "
                             "the published ones)")
    args = parser.parse_args()
    RESULTS = args.results
    targets = [float(t) for t in args.flops_targets.split(",")]
    runs = [run_seed(seed, targets, args.epochs, args.finetune_epochs,
                     not args.no_torch_pruning) for seed in range(args.seeds)]
    levels = {target: summarise([seed[index] for seed in runs])
              for index, target in enumerate(targets)}
    write(levels, runs, args)
    print((RESULTS / "digits.md").read_text())


if __name__ == "__main__":
    main()
