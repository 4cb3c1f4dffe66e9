"""Every text architecture transformers maps in its auto classes, pruned three ways.

Each decoder-only (``AutoModelForCausalLM``), encoder (``AutoModelForMaskedLM``) and
encoder-decoder (``AutoModelForSeq2SeqLM``) model type goes through the contract in
``contracts/hf.py``: a small config derived from its own defaults, random weights, then
heads, MLP neurons and one layer pruned (each verified), the chained plan saved and reloaded,
and causal LMs' greedy generation compared with the masked model. Types whose small config
does not build or run on token ids alone (speech and multimodal models need other inputs) are
listed as such: a limit of this sweep's config shrinking, not of prunekit.

Types run in worker processes (a dozen to a process, one thread, each type under a time and
memory limit; a worker that dies fails the type it was on and the rest go to a new one).
Writes ``benchmarks/results/hf_architectures.{json,md}``.

    python benchmarks/hf_architectures.py                     # every type (about an hour)
    python benchmarks/hf_architectures.py --only llama,t5,bert  # printed, no result files
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

from harness import RESULTS, ROOT, write_text

TIME_LIMIT_S = 240
MEMORY_LIMIT_GB = 8
BATCH_SIZE = 12


def worker(batch: list[list[str]], limit_s: int) -> None:
    """Check each (kind, model type) in turn, printing a line of JSON for each."""
    import warnings

    warnings.filterwarnings("ignore")
    import torch
    import transformers

    from contracts.hf import check_type

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    torch.set_num_threads(1)
    # a default config too big for the machine fails with MemoryError, not the OOM killer
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT_GB << 30, resource.RLIM_INFINITY))

    def over_time(signum, frame):
        raise TimeoutError(f"over the {limit_s} s limit")

    signal.signal(signal.SIGALRM, over_time)
    for kind, model_type in batch:
        signal.alarm(limit_s)
        try:
            row = check_type(kind, model_type)
        except TimeoutError as error:
            row = {"kind": kind, "model_type": model_type, "status": "FAILED",
                   "reason": str(error)}
        finally:
            signal.alarm(0)
        print(json.dumps(row), flush=True)


# --------------------------------------------------------------------------- driver side

def run_batch(batch: list[tuple[str, str]]) -> list[dict]:
    """Check a batch of types in worker processes. A worker that dies (killed for memory, a
    crash in native code) fails the type it was on; the types after it go to a new worker."""
    rows: list[dict] = []
    while len(rows) < len(batch):
        rest = batch[len(rows):]
        done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker",
                               json.dumps(rest), "--limit", str(TIME_LIMIT_S)],
                              capture_output=True, text=True, cwd=ROOT)
        reported = [json.loads(line) for line in done.stdout.splitlines()
                    if line.startswith("{")]
        rows += reported
        if len(reported) < len(rest):
            kind, model_type = rest[len(reported)]
            last = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
            rows.append({"kind": kind, "model_type": model_type, "status": "FAILED",
                         "reason": f"worker died: {last[:150]}"})
    return rows


def to_markdown(rows: list[dict], meta: dict) -> str:
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    runnable = [row for row in rows if row["status"] != "small config does not run"]
    lines = [f"# Hugging Face text architectures (transformers {meta['transformers']}, "
             f"torch {meta['torch']}, {meta['machine']})", "",
             "`python benchmarks/hf_architectures.py`: every model type in the causal-LM, "
             "masked-LM and seq2seq auto mappings, a small random config derived from its own "
             "defaults, no per-type settings. Heads (`HeadPruning(0.5, \"l1\")`), then MLP "
             "neurons (`FilterPruning(0.5, \"l1\")`), then one layer (`LayerPruning(1, "
             "\"last\")`), each verified by `pk.prune`; the chained plan saved with `pk.save` and "
             "reloaded with `pk.load` (and `from_pretrained` where the config describes the "
             "pruned model), bit-identical outputs; causal LMs' greedy generation against the "
             "masked model. A step's figure is the share of the parameters the model had before that step that it removed.", "",
             f"Of {len(rows)} model types, {len(runnable)} run with a small config on token ids; "
             f"of those, **{counts.get('passed', 0)} pass every step**, "
             f"{counts.get('partial', 0)} pass some (the row says which step and why), "
             f"{counts.get('FAILED', 0)} failed outright.", "",
             "| kind | model type | class | heads | MLP | layers | reload | generation | "
             "time (s) | status |", "|---|---|---|---|---|---|---|---|---|---|"]

    def cell(text) -> str:
        return str(text if text is not None else "").replace("|", "/")

    for row in sorted(runnable, key=lambda r: (r["status"] != "passed", r["kind"],
                                               r["model_type"])):
        lines.append("| " + " | ".join(cell(row.get(key)) for key in (
            "kind", "model_type", "class", "heads", "mlp", "layers", "reload", "generate",
            "seconds")) + " | " + row["status"] + (f": {cell(row.get('error') or row.get('reason'))}"
                                                   if row.get("error") or row.get("reason")
                                                   else "") + " |")
    lines += ["", "## Small config does not run on token ids", "",
              "| kind | model type | reason |", "|---|---|---|"]
    for row in rows:
        if row["status"] == "small config does not run":
            lines.append(f"| {row['kind']} | {row['model_type']} | {cell(row['reason'])} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated model types (printed, not written)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--limit", type=int, default=TIME_LIMIT_S, help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.worker:
        worker(json.loads(options.worker), options.limit)
        return
    import torch
    import transformers

    from contracts.hf import model_types

    selected = model_types()
    if options.only:
        wanted = set(options.only.split(","))
        unknown = wanted - {model_type for _, model_type in selected}
        if unknown:
            parser.error(f"--only: not a text model type transformers maps: {sorted(unknown)}")
        selected = [entry for entry in selected if entry[1] in wanted]
    rows: list[dict] = []
    for start in range(0, len(selected), BATCH_SIZE):
        for row in run_batch(selected[start:start + BATCH_SIZE]):
            rows.append(row)
            print(f"{row['kind']:15} {row['model_type']:28} {row['status']:9} "
                  f"{row.get('heads', '')[:18]:18} {row.get('mlp', '')[:18]:18} "
                  f"{row.get('layers', '')[:14]:14} {row.get('reload', '')[:20]:20} "
                  f"{row.get('generate', '')[:20]:20} {row.get('error') or row.get('reason') or ''}"[:400],
                  flush=True)
    meta = {"transformers": transformers.__version__, "torch": torch.__version__.split("+")[0],
            "machine": f"{platform.machine()}, Python {platform.python_version()}, 1 thread",
            "when": time.strftime("%Y-%m-%d")}
    if not options.only:
        write_text(RESULTS / "hf_architectures.json", json.dumps({"meta": meta, "rows": rows},
                                                                  indent=1))
        write_text(RESULTS / "hf_architectures.md", to_markdown(rows, meta))


if __name__ == "__main__":
    main()
