"""Widths timed per layer shape (``round_to="measured"``) against widths rounded to 8 and
widths as the ratio asks.

``round_to="measured"`` keeps, in each group, the widest width from what the ratio asks up to
15 channels more that the group's convolutions and linear layers run as fast as the narrowest,
timed per layer shape on this machine and cached (``prunekit.selection.widths``). For each
model, filters are pruned by L1 at one ratio three ways — widths as asked (``round_to=1``),
``round_to=8``, ``round_to="measured"`` — and the unpruned model and the three pruned ones are
timed in one set of interleaved rounds (batch 1 at 224×224, two threads, eager PyTorch):

- params / FLOPs kept;
- speed-up over the unpruned model, median and 95% CI;
- speed-up ÷ FLOPs factor: how much of the FLOPs removed became time saved;
- prune call: seconds of the whole ``pk.prune``; for measured widths with the table empty,
  then again with it filled by the first call.

    python benchmarks/fast_widths.py       # about 4 minutes on two cores

Results: ``benchmarks/results/fast_widths.{json,md}``.
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
import time

from harness import arguments, write_results

import torch
import torchvision

import prunekit as pk
from prunekit.measure.latency import speedup_cell, speedups_over_first

THREADS = 2
RATIO = 0.3  # widths the ratio asks for are then rarely multiples of 8
MODELS = {"ResNet-18": torchvision.models.resnet18, "ResNet-50": torchvision.models.resnet50,
          "MobileNetV3-L": torchvision.models.mobilenet_v3_large,
          "ConvNeXt-T": torchvision.models.convnext_tiny}
WIDTHS = {"as asked": 1, "×8": 8, "measured": "measured"}


def pruned(original, x, round_to):
    model = copy.deepcopy(original)
    started = time.perf_counter()
    pk.prune(model, x, pk.FilterPruning(RATIO, "l1", round_to=round_to))
    return model, time.perf_counter() - started


def run_model(name, build) -> dict:
    torch.manual_seed(0)
    original = build().eval()
    x = torch.randn(1, 3, 224, 224)
    before = pk.measure(original, x, latency=False)
    models, rows = {}, {}
    for label, round_to in WIDTHS.items():
        models[label], seconds = pruned(original, x, round_to)
        rows[label] = {"prune_seconds": [seconds]}
    _, warm = pruned(original, x, "measured")
    rows["measured"]["prune_seconds"].append(warm)
    speedups = speedups_over_first([original, *models.values()], x, threads=THREADS,
                                   min_time=4.0, min_rounds=20)
    for (label, model), speedup in zip(models.items(), speedups):
        after = pk.measure(model, x, latency=False)
        flops_kept = after.flops / before.flops
        rows[label].update(params_kept=after.params / before.params, flops_kept=flops_kept,
                           speedup=speedup.to_dict(),
                           speedup_per_flops_factor=speedup.speedup * flops_kept)
    print(name, json.dumps(rows, indent=1), flush=True)
    return {"model": name, "widths": rows}


def markdown(rows: list[dict]) -> str:
    lines = [
        "# Widths timed per layer shape against widths rounded to 8",
        "",
        f"Reproduce: `python benchmarks/fast_widths.py`. Filters pruned by L1 at ratio {RATIO}, "
        "kept widths as the ratio asks (`round_to=1`), rounded up to 8 (`round_to=8`) or "
        "timed per layer shape on this machine (`round_to=\"measured\"`). The unpruned model "
        f"and the three pruned ones timed in one set of interleaved rounds, batch 1 at "
        f"224×224, {THREADS} threads, eager PyTorch, median (95% CI). *per FLOPs factor*: "
        "speed-up ÷ (FLOPs before / FLOPs after). *prune call*: the whole `pk.prune` in "
        "seconds; for measured widths with the table empty, then filled.",
        "",
        "| model | widths | params kept | FLOPs kept | speed-up | per FLOPs factor "
        "| prune call, s |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        for label, r in row["widths"].items():
            s = r["speedup"]
            seconds = " / ".join(f"{t:.1f}" for t in r["prune_seconds"])
            lines.append(f"| {row['model']} | {label} | {r['params_kept']:.1%} | "
                         f"{r['flops_kept']:.1%} | {speedup_cell(s['speedup'], s['low'], s['high'])}"
                         f" | {r['speedup_per_flops_factor']:.2f} | {seconds} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    arguments(__doc__).parse_args()
    torch.set_num_threads(THREADS)
    rows = []
    with tempfile.TemporaryDirectory() as cache:
        os.environ["PRUNEKIT_CACHE_DIR"] = cache  # start with an empty table
        for name, build in MODELS.items():
            rows.append(run_model(name, build))
    write_results("fast_widths", rows, markdown(rows))
    print(markdown(rows))


if __name__ == "__main__":
    main()
