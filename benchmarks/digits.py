"""Every method on the digits ResNet at one FLOPs budget, over several seeds, with Torch-Pruning
1.6.1 (magnitude and Taylor) on the same model, data and budget.

For each seed: train the digits ResNet, then ``pk.compare`` it (each method on its own copy,
pruned to the same fraction of FLOPs, evaluated one-shot and after the same fine-tuning).
Writes ``benchmarks/results/digits.{json,md,png}``.

    pip install -e ".[benchmark]"
    python benchmarks/digits.py                         # 5 seeds, 50% of FLOPs, 10 epochs
    python benchmarks/digits.py --seeds 1 --finetune-epochs 2
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import prunekit as pk  # noqa: E402
from prunekit.compare import default_methods  # noqa: E402
from prunekit.demo import trained_digits_resnet  # noqa: E402
from prunekit.measure import count_flops  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


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


def run_seed(seed: int, flops_target: float, epochs: int, finetune_epochs: int,
             with_torch_pruning: bool) -> pk.Comparison:
    model, digits = trained_digits_resnet(epochs, seed)
    methods: dict[str, Any] = dict(default_methods(flops_target))
    if with_torch_pruning:
        methods["Torch-Pruning magnitude"] = torch_pruning("magnitude", flops_target)
        methods["Torch-Pruning Taylor"] = torch_pruning("taylor", flops_target)
    return pk.compare(model, digits.example_inputs, digits.train, digits.test,
                      flops_target=flops_target, finetune_epochs=finetune_epochs,
                      methods=methods, data=digits.calibration,
                      timing_inputs=next(iter(digits.test))[0], seed=seed,
                      progress=lambda message: print(f"  seed {seed}: {message}", flush=True))


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
            "accuracy_one_shot": spread([r.accuracy_one_shot for r in per_seed]),
            "accuracy_fine_tuned": spread(tuned) if tuned else None,
            "verified": [r.verified for r in per_seed],
        })
    return rows


def goals(rows: list[dict[str, Any]], flops_target: float) -> list[str]:
    by_name = {r["method"]: r for r in rows}
    base = by_name["unpruned"]["accuracy_one_shot"][0]
    random_one_shot = by_name["filter (random)"]["accuracy_one_shot"][0]
    informed = [r for r in rows if r["method"].startswith("filter (") and "random" not in r["method"]]
    best_tuned = max((r for r in rows if r["accuracy_fine_tuned"] and r["method"] != "unpruned"
                      and abs(r["flops_removed"][0] - flops_target) <= 0.02),
                     key=lambda r: r["accuracy_fine_tuned"][0])
    plain = by_name["channel (l2)"]["accuracy_one_shot"][0]
    rebuilt = by_name["channel (l2) + reconstruction"]["accuracy_one_shot"][0]
    beaten = [r["method"] for r in informed if r["accuracy_one_shot"][0] <= random_one_shot]
    return [
        f"best fine-tuned at {flops_target:.0%} of FLOPs removed: {best_tuned['method']} "
        f"{best_tuned['accuracy_fine_tuned'][0]:.1%} vs unpruned {base:.1%} "
        f"({(best_tuned['accuracy_fine_tuned'][0] - base) * 100:+.1f} points; goal ≥ -0.5)",
        f"one-shot, informed filter criteria that do not beat random ({random_one_shot:.1%}): "
        f"{', '.join(beaten) or 'none'}",
        f"one-shot, channel pruning with reconstruction {rebuilt:.1%} vs without {plain:.1%}",
    ]


def write(rows: list[dict[str, Any]], runs: list[pk.Comparison], args) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    summary = goals(rows, args.flops_target)
    (RESULTS / "digits.json").write_text(json.dumps(
        {"settings": vars(args), "summary": summary, "rows": rows,
         "runs": [run.to_dict() for run in runs]}, indent=1))
    lines = [f"# Digits ResNet: {args.flops_target:.0%} of FLOPs removed, {len(runs)} seeds, "
             f"{args.finetune_epochs} fine-tuning epochs (mean ± std over seeds)", ""]
    lines += [f"- {line}" for line in summary]
    lines += ["", "| method | FLOPs removed | params | latency ms (batch 256) | accuracy one-shot | "
              "accuracy fine-tuned | verified |", "|---|---|---|---|---|---|---|"]

    def pct(pair) -> str:
        return "—" if pair is None else f"{pair[0]:.1%} ± {pair[1]:.1%}"

    for r in rows:
        verified = "n/a" if None in r["verified"] else "yes" if all(r["verified"]) else "NO"
        lines.append(f"| {r['method']} | {r['flops_removed'][0]:.1%} | {r['params'][0]:,.0f} | "
                     f"{r['latency_ms'][0]:.2f} | {pct(r['accuracy_one_shot'])} | "
                     f"{pct(r['accuracy_fine_tuned'])} | {verified} |")
    lines += ["", "![accuracy against FLOPs](digits.png)"]
    (RESULTS / "digits.md").write_text("\n".join(lines) + "\n")
    plot(rows, RESULTS / "digits.png")


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 5))
    for index, r in enumerate(rows):
        x = (1 - r["flops_removed"][0]) * 100
        colour = plt.cm.tab20(index % 20)
        axes.errorbar(x, r["accuracy_one_shot"][0] * 100, yerr=r["accuracy_one_shot"][1] * 100,
                      fmt="o", mfc="none", color=colour, label=r["method"])
        if r["accuracy_fine_tuned"]:
            axes.errorbar(x, r["accuracy_fine_tuned"][0] * 100,
                          yerr=r["accuracy_fine_tuned"][1] * 100, fmt="*", ms=10, color=colour)
    axes.set_xlabel("FLOPs kept (% of unpruned)")
    axes.set_ylabel("test accuracy (%)  ○ one-shot  ★ fine-tuned")
    axes.legend(fontsize=7, loc="lower left", ncol=2)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--flops-target", type=float, default=0.5)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--finetune-epochs", type=int, default=10)
    parser.add_argument("--no-torch-pruning", action="store_true")
    args = parser.parse_args()
    runs = [run_seed(seed, args.flops_target, args.epochs, args.finetune_epochs,
                     not args.no_torch_pruning) for seed in range(args.seeds)]
    write(summarise(runs), runs, args)
    print((RESULTS / "digits.md").read_text())


if __name__ == "__main__":
    main()
