"""Prune, then quantize: what dynamic int8 (ONNX Runtime) adds after pruning, on the digits
ResNet and the pretrained MiniLM sentence encoder.

For each model: the unpruned and the pruned model exported with ``pk.export`` (checked
against PyTorch in ONNX Runtime) with ``quantize="int8"`` — the same as
``prunekit export --pruned DIR --out model.onnx --int8``. Each file (unpruned,
unpruned int8, pruned, pruned int8) is evaluated in ONNX Runtime:

- digits ResNet (trained 20 epochs; filters pruned to 50% fewer FLOPs, widths a multiple of
  8 — and, for comparison, any width — then 5 fine-tuning epochs): test accuracy, latency
  at batch 256; also its convolutions quantized too, which ``pk.export`` does not do;
- all-MiniLM-L6-v2 (half its attention heads pruned, no training): cosine similarity of its
  sentence embeddings to the unpruned PyTorch model's, on 256 sentences from Python's help
  texts, latency at 8 sentences of 64 tokens.

Latency: a model's files timed interleaved in the same rounds (``time_models``), two threads,
median with quartiles; speed-up against the unpruned float file.

    python benchmarks/quantize.py          # about 5 minutes on two cores

Results: ``benchmarks/results/quantize.{json,md}``.
"""

from __future__ import annotations

import copy
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any, Callable

from harness import RESULTS, write_text

import torch
import torch.nn.functional as F
from torch import nn

import prunekit as pk
from benchmarks.minilm import batches, embed_hidden, load_minilm, sentences
from benchmarks.speed import OnnxModule
from prunekit.cli.demo import trained_digits_resnet
from prunekit.measure.latency import time_models, timing
from prunekit.recover import train_classifier

THREADS = 2
VARIANTS = ("unpruned", "unpruned int8", "pruned", "pruned int8")


def exported(models: dict[str, nn.Module], example: Any, scratch: Path,
             conv_int8: bool = False) -> dict[str, OnnxModule]:
    """Each model's ONNX file and its int8 file as runnable modules (each export checked by
    pk.export); with ``conv_int8``, also the unpruned model with its convolutions quantized
    too, which pk.export leaves float."""
    files = {}
    for name, model in models.items():
        report = pk.export(model, example, scratch / f"{name}.onnx", quantize="int8")
        files[name] = report.path
        files[f"{name} int8"] = report.quantized_path
    if conv_int8:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        target = scratch / "unpruned.conv-int8.onnx"
        quantize_dynamic(str(files["unpruned"]), str(target), weight_type=QuantType.QInt8)
        files["unpruned int8, convolutions too"] = target
    return {variant: OnnxModule(path, THREADS) for variant, path in files.items()}


def latencies(sessions: dict[str, OnnxModule], example: Any) -> dict[str, dict]:
    samples = time_models(list(sessions.values()), example, threads=THREADS, min_time=3.0,
                          min_rounds=15)
    base = samples[0]
    return {variant: {**timing(seconds).to_dict(),
                      "speedup": statistics.median(b / s for b, s in zip(base, seconds))}
            for variant, seconds in zip(sessions, samples)}


def padded_batches(data, size: int):
    """Fixed-size batches (an export has fixed shapes): the last one padded, with how many
    of its rows are real."""
    for images, labels in data:
        real = images.shape[0]
        if real < size:
            images = torch.cat([images, images.new_zeros(size - real, *images.shape[1:])])
        yield images, labels, real


def digits() -> dict[str, Any]:
    model, data = trained_digits_resnet(20, seed=0)
    variants = {"unpruned": model}
    # widths a multiple of 8 (ONNX Runtime's fast convolutions work on blocks of 8 channels),
    # and as the budget chose them, for comparison
    for name, round_to in (("pruned", 8), ("pruned, any width", 1)):
        pruned = copy.deepcopy(model)
        pk.prune(pruned, data.example_inputs,
                 pk.FilterPruning(flops_target=0.5, round_to=round_to))
        torch.manual_seed(0)
        train_classifier(pruned, data.train, epochs=5, lr=1e-3)
        variants[name] = pruned.eval()
    size = 256
    example = next(padded_batches(data.test, size))[0]
    with tempfile.TemporaryDirectory() as scratch:
        sessions = exported(variants, example, Path(scratch), conv_int8=True)
        del sessions["pruned, any width int8"]
        accuracy = {}
        for variant, session in sessions.items():
            correct = total = 0
            for images, labels, real in padded_batches(data.test, size):
                logits = session(images)[0][:real]
                correct += int((logits.argmax(1) == labels).sum())
                total += real
            accuracy[variant] = correct / total
        timed = latencies(sessions, example)
    return {"model": "digits ResNet", "metric": "test accuracy", "batch": size,
            "rows": {v: {"quality": accuracy[v], **timed[v]} for v in sessions}}


def minilm() -> dict[str, Any]:
    model, tokenizer = load_minilm()
    texts = sentences(256)
    data = batches(tokenizer, texts, size=8)
    fixed = [dict(tokenizer(texts[i:i + 8], padding="max_length", truncation=True,
                            max_length=64, return_tensors="pt"))
             for i in range(0, len(texts), 8)]
    pruned = copy.deepcopy(model)
    pk.prune(pruned, fixed[0], pk.HeadPruning(0.5), data=fixed[:4])
    with torch.no_grad():
        reference = torch.cat([F.normalize(embed_hidden(model(**b).last_hidden_state, b), dim=-1)
                               for b in fixed])
    with tempfile.TemporaryDirectory() as scratch:
        sessions = exported({"unpruned": model, "pruned": pruned}, fixed[0], Path(scratch))
        quality = {}
        for variant, session in sessions.items():
            embeddings = []
            for batch in fixed:
                hidden = session(**batch)[0]
                embeddings.append(F.normalize(embed_hidden(hidden, batch), dim=-1))
            quality[variant] = float((torch.cat(embeddings) * reference).sum(-1).mean())
        timed = latencies(sessions, fixed[0])
    del data
    return {"model": "all-MiniLM-L6-v2", "metric": "cosine to unpruned PyTorch", "batch": 8,
            "rows": {v: {"quality": quality[v], **timed[v]} for v in VARIANTS}}


def to_markdown(results: list[dict]) -> str:
    lines = ["# Prune, then quantize (ONNX Runtime dynamic int8)", "",
             "Each file exported and checked with `pk.export(..., quantize=\"int8\")` "
             "(`prunekit export --pruned DIR --out model.onnx --int8`), run in ONNX Runtime "
             f"on {THREADS} threads; the files of a model timed interleaved in the same "
             "rounds (median, quartiles), speed-up against the unpruned float file. "
             "Reproduce: `python benchmarks/quantize.py`.", ""]
    for result in results:
        lines += [f"## {result['model']} ({result['metric']}; batch {result['batch']})", "",
                  f"| file | {result['metric']} | latency ms (quartiles) | speed-up |",
                  "|---|---|---|---|"]
        for variant, row in result["rows"].items():
            quality = (f"{row['quality']:.1%}" if result["metric"] == "test accuracy"
                       else f"{row['quality']:.4f}")
            lines.append(f"| {variant} | {quality} | {row['median_ms']:.2f} "
                         f"({row['low_ms']:.2f}–{row['high_ms']:.2f}) | "
                         f"{row['speedup']:.2f}× |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    torch.set_num_threads(THREADS)
    runs: list[Callable[[], dict]] = [digits, minilm]
    results = []
    for run in runs:
        results.append(run())
        print(json.dumps(results[-1], indent=1), flush=True)
    write_text(RESULTS / "quantize.json", json.dumps(results, indent=1))
    write_text(RESULTS / "quantize.md", to_markdown(results))
    print(to_markdown(results))


if __name__ == "__main__":
    main()
