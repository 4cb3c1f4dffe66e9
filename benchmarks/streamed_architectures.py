"""Streamed pruning against in-memory pruning on every Hugging Face decoder architecture.

For every model type in transformers' causal-LM mapping: a small random model (4 layers,
hidden 64, the sizes of ``contracts/hf.py``) saved with ``save_pretrained`` in shards;
then, for each of four methods — MLP neurons (``FilterPruning(0.5, "l1")``), heads
(``HeadPruning(0.5, "l2")``), depth (``LayerPruning(2, "influence")``) and hidden size
(``HiddenPruning(0.25, "l2")``) — the folder is pruned
with ``pk.prune_streamed`` and, separately, the loaded model with ``pk.prune`` on the same two
calibration batches. Outcomes:

- identical: the streamed folder reloads (``from_pretrained``, or ``pk.load`` where no config
  can describe the pruned sizes) and its state dict equals the in-memory pruned model's,
  tensor for tensor;
- both refuse: neither can prune it (the same reason);
- streamed refuses: the in-memory prune works, the streamed one says why it cannot;
- differs / fails: anything else (a bug).

    python benchmarks/streamed_architectures.py      # about 15 minutes on two cores
    python benchmarks/streamed_architectures.py --only hidden   # one method again, merged in

Results: ``benchmarks/results/streamed_architectures.{json,md}``.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import tempfile
import warnings
from pathlib import Path

from harness import RESULTS, write_text

import torch
import transformers

import prunekit as pk
from contracts.hf import model_inputs, model_types, small_config

METHODS = {"mlp": lambda: pk.FilterPruning(0.5, "l1"), "heads": lambda: pk.HeadPruning(0.5, "l2"),
           "layers": lambda: pk.LayerPruning(2, "influence"),
           "hidden": lambda: pk.HiddenPruning(0.25, "l2")}
LAYERS = 4


def four_layers(model_type: str):
    config = small_config(model_type)
    fields = {key: value for key, value in config.to_dict().items()
              if not (isinstance(value, list) and key.endswith("types"))}  # per-layer lists
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        if isinstance(fields.get(key), int):
            fields[key] = LAYERS
    return type(config).from_dict(fields)


def reason(error: BaseException) -> str:
    text = re.sub(r"/\S*/tmp\w+", "FOLDER", " ".join(str(error).split()))  # no local paths
    return f"{type(error).__name__}: {text[:160]}"


def model_class(source: Path):
    """The class the folder was saved from, as ``pk.prune_streamed`` builds it."""
    names = transformers.AutoConfig.from_pretrained(source).architectures or []
    return getattr(transformers, names[0], None) if names else None


def compare(source: Path, method_for, batches) -> str:
    build = model_class(source) or transformers.AutoModelForCausalLM
    streamed_error = memory_error = None
    out = Path(tempfile.mkdtemp()) / "out"
    try:
        streamed = pk.prune_streamed(source, out, method_for(), batches)
    except Exception as error:  # noqa: BLE001 - every failure is an outcome
        streamed_error = error
    try:
        reference = build.from_pretrained(source).eval()
        pk.prune(reference, batches[0], method_for(), data=batches)
    except Exception as error:  # noqa: BLE001
        memory_error = error
    if streamed_error is not None:
        if memory_error is not None:
            return f"both refuse ({reason(memory_error)})"
        return f"streamed refuses ({reason(streamed_error)})"
    if memory_error is not None:
        return f"fails: in memory only ({reason(memory_error)})"
    try:
        if streamed.config_matches:
            loaded = build.from_pretrained(out).eval()
        else:  # the original config, kept: the plan rebuilds the pruned model
            config = transformers.AutoConfig.from_pretrained(out)
            loaded = pk.load(build(config), out)
    except Exception as error:  # noqa: BLE001
        return f"fails: reload ({reason(error)})"
    a, b = reference.state_dict(), loaded.state_dict()
    if a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a):
        return "identical"
    return "differs"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=sorted(METHODS),
                        help="measure these methods again; the rest are read from the results")
    args = parser.parse_args()
    methods = args.only or list(METHODS)
    earlier = {}
    if args.only and (RESULTS / "streamed_architectures.json").is_file():
        earlier = {r["model_type"]: r for r in
                   json.loads((RESULTS / "streamed_architectures.json").read_text())}
    warnings.filterwarnings("ignore")
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    rows = []
    for kind, model_type in model_types():
        if kind != "decoder":
            continue
        row = {**earlier.get(model_type, {}), "model_type": model_type}
        try:
            torch.manual_seed(0)
            model = transformers.AutoModelForCausalLM.from_config(four_layers(model_type))
            source = Path(tempfile.mkdtemp())
            model.save_pretrained(source, max_shard_size="200KB")
            del model
        except Exception as error:  # noqa: BLE001
            row["build"] = reason(error)
            rows.append(row)
            print(model_type, row, flush=True)
            continue
        batches = [model_inputs("decoder") for _ in range(2)]
        for name in methods:
            row[name] = compare(source, METHODS[name], batches)
        rows.append(row)
        print(model_type, row, flush=True)
    write_text(RESULTS / "streamed_architectures.json", json.dumps(rows, indent=1) + "\n")
    write_text(RESULTS / "streamed_architectures.md", markdown(rows))
    print(markdown(rows))


def outcome(text: str) -> str:
    return text.split(" (")[0]


def markdown(rows: list[dict]) -> str:
    built = [r for r in rows if "build" not in r]
    lines = ["# Streamed pruning against in-memory pruning, every decoder architecture", "",
             "Reproduce: `python benchmarks/streamed_architectures.py`. Each causal-LM type in "
             f"transformers {transformers.__version__}, 4 layers, random weights, saved in "
             "shards; streamed (`pk.prune_streamed`) and in memory (`pk.prune`) with the same "
             "method and calibration batches. *identical*: the reloaded streamed folder's "
             "state dict equals the in-memory result, tensor for tensor.", "",
             f"{len(rows)} types; {len(rows) - len(built)} cannot be built from a small "
             "config here.", "",
             "| method | " + " | ".join(["identical", "both refuse", "streamed refuses",
                                         "differs", "fails"]) + " |",
             "|---|---|---|---|---|---|"]
    for method in METHODS:
        counts = collections.Counter(outcome(r.get(method, "not measured")) for r in built)
        fails = sum(v for k, v in counts.items() if k.startswith("fails"))
        lines.append(f"| {method} | {counts['identical']} | {counts['both refuse']} | "
                     f"{counts['streamed refuses']} | {counts['differs']} | {fails} |")
    lines += ["", "| type | " + " | ".join(METHODS) + " |", "|---|" + "---|" * len(METHODS)]
    for row in rows:
        if "build" in row:
            lines.append(f"| {row['model_type']} | not built: {row['build'][:80]} |"
                         + " |" * (len(METHODS) - 1))
        else:
            lines.append(f"| {row['model_type']} | " + " | ".join(
                row.get(m, "not measured").replace("|", "/") for m in METHODS) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
