"""Streamed pruning of a Llama-3-8B-shaped model on a two-core, 24 GB machine.

The model: Llama-3-8B's shape (32 layers, hidden 4096, 32 query and 8 key/value heads,
intermediate 14336, vocabulary 128256, untied output layer; 8.03B parameters) with random
weights (normal, std 0.02; norms 1), written once to disk in bfloat16 (16 GB, shards of at most
2 GB) by this script. Then, each in a process of its own so its peak memory is its own:

- width: ``pk.prune_streamed`` with half of every layer's heads (key/value groups, by L2) and
  then 60% of every MLP's neurons (by L1, kept widths a multiple of 128), in one pass: about
  half the parameters;
- depth: ``pk.prune_streamed`` with ``LayerPruning(8, "angular")``: the 8 consecutive blocks
  whose input and output are closest in angle;
- depth again with ``hidden_memory_bytes=0``: every block's calibration hidden states written
  to disk and read back, what a calibration set larger than memory costs;
- hidden: ``pk.prune_streamed`` with ``HiddenPruning(0.5, "l2")``: half the hidden size, ranked
  from the weights and written tensor by tensor (no calibration); and again with
  ``"mean_activation"``, ranked by the activations at every module output carrying the hidden
  size (the blocks streamed over the calibration batches, as Minitron scores it);
- for each result: ``from_pretrained`` in bfloat16 and 8 tokens of greedy generation.

Calibration: 4 sequences of 128 random token ids (the weights are random, so no text means
more). Blocks are computed in float32 (``dtype=torch.float32``: a CPU without bfloat16 arithmetic
runs bfloat16 matrix products several times slower) and written back in bfloat16. Reported: peak resident memory (``ru_maxrss``) of each process, wall time per block and
in all, parameters before and after.

    python benchmarks/streamed_llm.py --dir /path/with/40GB/free   # about 20 minutes, plus 2
                                                                   # to write the checkpoint

Results: ``benchmarks/results/streamed_llm.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness import RESULTS, write_text

import torch

SHAPE = dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336,
             num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
             max_position_embeddings=8192, rope_theta=500000.0, tie_word_embeddings=False,
             bos_token_id=128000, eos_token_id=128001)
THREADS = 2
KINDS = ("width", "depth", "depth_spilled", "hidden", "hidden_activations")
SMALL = dict(SHAPE, vocab_size=1000, hidden_size=256, intermediate_size=512,
             num_hidden_layers=10, num_attention_heads=8, num_key_value_heads=2,
             bos_token_id=1, eos_token_id=2)  # --small: the same steps in seconds


def peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def write_model(folder: Path, shape: dict) -> dict:
    """The random Llama-3-8B-shaped checkpoint, one tensor at a time."""
    import transformers

    from prunekit.adapters.hf.checkpoint import ShardWriter
    from prunekit.adapters.hf.skeleton import empty_model

    started = time.perf_counter()
    config = transformers.LlamaConfig(**shape, dtype="bfloat16")
    config.architectures = ["LlamaForCausalLM"]
    skeleton = empty_model(config)
    folder.mkdir(parents=True)
    writer = ShardWriter(folder)
    generator = torch.Generator().manual_seed(0)
    params = 0
    for name, param in skeleton.named_parameters():
        if name.endswith("norm.weight"):
            tensor = torch.ones(param.shape, dtype=torch.bfloat16)
        else:
            tensor = (torch.randn(param.shape, generator=generator) * 0.02).to(torch.bfloat16)
        writer.add({name: tensor})
        params += tensor.numel()
        del tensor
    writer.close()
    config.save_pretrained(folder)
    return {"params": params, "seconds": time.perf_counter() - started, "peak_gb": peak_gb()}


def calibration(vocabulary: int) -> list[dict]:
    generator = torch.Generator().manual_seed(1)
    return [{"input_ids": torch.randint(0, vocabulary, (1, 128), generator=generator)}
            for _ in range(4)]


def prune_phase(kind: str, source: Path, out: Path, vocabulary: int) -> dict:
    import prunekit as pk

    methods = {"width": [pk.HeadPruning(0.5, "l2"), pk.FilterPruning(0.6, "l1", round_to=128)],
               "depth": pk.LayerPruning(8, "angular"),
               "depth_spilled": pk.LayerPruning(8, "angular"),
               "hidden": pk.HiddenPruning(0.5, "l2"),
               "hidden_activations": pk.HiddenPruning(0.5, "mean_activation")}[kind]
    # depth_spilled: every block's hidden states written to disk and read back
    memory = {"hidden_memory_bytes": 0} if kind == "depth_spilled" else {}
    result = pk.prune_streamed(source, out, methods, calibration(vocabulary),
                               dtype=torch.float32, progress=True, **memory)
    seconds = [b.seconds for b in result.blocks] or [float("nan")]  # hidden: no blocks
    return {"params_before": result.params_before, "params_after": result.params_after,
            "removed": 1 - result.params_after / result.params_before,
            "seconds": result.seconds, "block_seconds_median": statistics.median(seconds),
            "block_seconds_max": max(seconds), "block_seconds": seconds,
            "removed_layers": result.plan.layers, "config_matches": result.config_matches,
            "spilled_bytes": result.spilled_bytes,
            "peak_gb": peak_gb(), "summary": str(result).replace(str(out), kind)}


def reload_phase(out: Path, vocabulary: int) -> dict:
    import transformers

    started = time.perf_counter()
    model = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.bfloat16).eval()
    loaded = time.perf_counter() - started
    prompt = calibration(vocabulary)[0]["input_ids"][:, :16]
    started = time.perf_counter()
    with torch.no_grad():
        tokens = model.generate(prompt, max_new_tokens=8, do_sample=False)
    return {"load_seconds": loaded, "generate_seconds": time.perf_counter() - started,
            "new_tokens": tokens[0, 16:].tolist(),
            "params": sum(p.numel() for p in model.parameters()),
            "layers": model.config.num_hidden_layers, "heads": model.config.num_attention_heads,
            "kv_heads": model.config.num_key_value_heads,
            "intermediate": model.config.intermediate_size, "hidden": model.config.hidden_size,
            "peak_gb": peak_gb()}


def child(*args: str) -> dict:
    """Run a phase in a process of its own; its last line is its JSON result."""
    completed = subprocess.run([sys.executable, __file__, *args], check=True,
                               stdout=subprocess.PIPE, text=True)
    return json.loads(completed.stdout.strip().splitlines()[-1])


def _per_block(r: dict) -> str:
    if r["block_seconds_median"] != r["block_seconds_median"]:  # NaN: not block by block
        return "—"
    return f"{r['block_seconds_median']:.1f} s ({r['block_seconds_max']:.1f} s)"


def markdown(report: dict) -> str:
    source, lines = report["source"], []
    lines += ["# Streamed pruning of a Llama-3-8B-shaped model", "",
              "Reproduce: `python benchmarks/streamed_llm.py --dir DIR` (DIR with 40 GB free). "
              f"Random weights in bfloat16, {source['params'] / 1e9:.2f}B parameters, written "
              f"once in {source['seconds']:.0f} s. Two cores ({THREADS} threads), 24 GB; each "
              "step in its own process, its peak resident memory (`ru_maxrss`) reported. "
              "Calibration: 4 × 128 random tokens; blocks computed in float32, written in bfloat16.", "",
              "| step | params after | removed | peak memory | wall time | per block, median "
              "(max) | reload + 8 tokens |", "|---|---|---|---|---|---|---|"]
    for kind, label in (("width", "width: ½ heads, then 60% MLP neurons (one pass)"),
                        ("depth", "depth: 8 blocks by angular distance"),
                        ("depth_spilled", "the same, every block's hidden states spilled to "
                                          "disk"),
                        ("hidden", "hidden size: ½, by L2 (tensor by tensor)"),
                        ("hidden_activations", "hidden size: ½, by mean activation at every "
                                               "site (Minitron-style; blocks streamed)")):
        r, reload = report[kind], report[f"{kind}_reload"]
        if r.get("spilled_bytes"):
            label += f" ({r['spilled_bytes'] / 2**30:.2f} GB written)"
        lines.append(f"| {label} | {r['params_after'] / 1e9:.2f}B | {r['removed']:.1%} | "
                     f"{r['peak_gb']:.2f} GB | {r['seconds'] / 60:.1f} min | "
                     f"{_per_block(r)} | "
                     f"{reload['load_seconds']:.0f} s + {reload['generate_seconds']:.0f} s, "
                     f"{reload['peak_gb']:.1f} GB |")
    width, depth, hidden = report["width_reload"], report["depth_reload"], report["hidden_reload"]
    lines += ["", f"Width result as reloaded: {width['layers']} layers, {width['heads']} heads "
              f"on {width['kv_heads']} key/value heads, intermediate {width['intermediate']}; "
              f"generated {width['new_tokens']}. Depth result: {depth['layers']} layers "
              f"(removed {', '.join(n.rsplit('.', 1)[1] for n in report['depth']['removed_layers'])}); "
              f"generated {depth['new_tokens']}. Hidden-size results: hidden size "
              f"{hidden['hidden']}, {hidden['layers']} layers; generated {hidden['new_tokens']} "
              f"(by L2) and {report['hidden_activations_reload']['new_tokens']} (by mean "
              f"activation).", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "llama3-8b-shaped")
    parser.add_argument("--phase", choices=["write", *KINDS, "reload"])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--small", action="store_true", help="a small model: check the steps")
    parser.add_argument("--only", nargs="*", choices=KINDS,
                        help="run these steps again; the others are read from the results")
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    shape = SMALL if args.small else SHAPE
    size = ["--small"] if args.small else []
    source = args.dir / "source"
    if args.phase == "write":
        print(json.dumps(write_model(source, shape)))
    elif args.phase in KINDS:
        print(json.dumps(prune_phase(args.phase, source, args.out, shape["vocab_size"])))
    elif args.phase == "reload":
        print(json.dumps(reload_phase(args.out, shape["vocab_size"])))
    else:
        report = {}
        if args.only and (RESULTS / "streamed_llm.json").is_file():
            report = json.loads((RESULTS / "streamed_llm.json").read_text())
        if not source.exists():
            written = child("--dir", str(args.dir), "--phase", "write", *size)
            (args.dir / "written.json").write_text(json.dumps(written))
        report["source"] = json.loads((args.dir / "written.json").read_text())
        for kind in args.only or KINDS:
            out = args.dir / kind
            report[kind] = child("--dir", str(args.dir), "--phase", kind, "--out", str(out),
                                 *size)
            report[f"{kind}_reload"] = child("--dir", str(args.dir), "--phase", "reload",
                                             "--out", str(out), *size)
            shutil.rmtree(out)
            print(kind, json.dumps(report[kind])[:400], flush=True)
        if args.small:
            print(markdown(report))
            return
        write_text(RESULTS / "streamed_llm.json", json.dumps(report, indent=1) + "\n")
        write_text(RESULTS / "streamed_llm.md", markdown(report))
        print(markdown(report))


if __name__ == "__main__":
    main()
