"""Every Hugging Face architecture transformers maps to a causal LM (or a base model), pruned.

Each model type in the auto mappings is built from a small config derived from its own
defaults (2 layers, width 64, 4 heads, a 128-token vocabulary: every such field the config
has), with random weights, and run once unpruned on random ``input_ids``. Types whose small
config does not build or run are listed as such: that is a limit of this sweep's config
shrinking, not of prunekit. Every other type is pruned with ``pk.FilterPruning(0.5, "l1")``
(the MLP neurons; verified equivalent by ``pk.prune``), a dozen types to a process, each
under a time limit.
Writes ``benchmarks/results/hf_architectures.{json,md}``.

    python benchmarks/hf_architectures.py                 # every causal-LM type (~20 min)
    python benchmarks/hf_architectures.py --base          # and every base-model type
    python benchmarks/hf_architectures.py --only llama,gpt2
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
TIME_LIMIT_S = 120

# the size fields a config may have, under their various names, and a small value for each
SMALL = dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
             intermediate_size=128, vocab_size=128, max_position_embeddings=64, head_dim=16,
             n_layer=2, n_embd=64, n_head=4, n_inner=128, d_model=64, num_layers=2, num_heads=4,
             d_ff=128, ffn_dim=128, encoder_layers=2, decoder_layers=2,
             encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=128,
             decoder_ffn_dim=128, n_positions=64, num_experts=4, num_local_experts=4,
             num_experts_per_tok=2, moe_intermediate_size=64)

# one process prunes a batch of types (importing torch and transformers once), each under an
# alarm; a line of JSON per type
BATCH = r'''
import json, signal, sys, time, warnings
warnings.filterwarnings("ignore")
import torch, transformers
transformers.logging.set_verbosity_error()
import prunekit as pk

def over_time(signum, frame):
    raise TimeoutError("over the time limit")

signal.signal(signal.SIGALRM, over_time)
small, limit = json.loads(sys.argv[1]), int(sys.argv[2])
for index, (model_type, class_name) in enumerate(json.loads(sys.argv[3])):
    row = {"index": index, "model_type": model_type, "class": class_name}
    signal.alarm(limit)
    try:
        config = transformers.AutoConfig.for_model(model_type)
        for key, value in small.items():
            current = getattr(config, key, None)
            if isinstance(current, int) and not isinstance(current, bool):
                setattr(config, key, value)
        torch.manual_seed(0)
        model = getattr(transformers, class_name)(config).eval()
        tokens = {"input_ids": torch.randint(0, 100, (2, 8),
                                             generator=torch.Generator().manual_seed(0))}
        with torch.no_grad():
            model(**tokens)
    except Exception as error:
        signal.alarm(0)
        row.update(status="small config does not run",
                   reason=f"{type(error).__name__}: {str(error)[:160]}")
        print(json.dumps(row), flush=True)
        continue
    start = time.perf_counter()
    try:
        result = pk.prune(model, tokens, pk.FilterPruning(0.5, "l1"))
        row.update(status="pruned", params_before=result.before.params,
                   params_after=result.after.params, reduction=result.param_reduction,
                   skipped=len(result.skipped), seconds=time.perf_counter() - start)
    except pk.PruneError as error:
        row.update(status="refused", reason=f"{type(error).__name__}: {str(error)[:160]}",
                   seconds=time.perf_counter() - start)
    except Exception as error:
        row.update(status="FAILED", reason=f"{type(error).__name__}: {str(error)[:160]}",
                   seconds=time.perf_counter() - start)
    signal.alarm(0)
    del model
    print(json.dumps(row), flush=True)
'''
BATCH_SIZE = 12


def model_types(base: bool) -> list[tuple[str, str, str]]:
    """(mapping, model type, class name) for every causal-LM type (and base-model type)."""
    from transformers.models.auto import modeling_auto

    found = []
    mappings = [("causal", modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)]
    if base:
        mappings.append(("base", modeling_auto.MODEL_MAPPING_NAMES))
    for mapping, names in mappings:
        for model_type, class_name in sorted(names.items()):
            if isinstance(class_name, str):
                found.append((mapping, model_type, class_name))
    return found


def run_batch(batch: list[tuple[str, str, str]]) -> list[dict]:
    """Prune a batch of model types in one process; a type it never reported is a failure
    (the process died on it)."""
    done = subprocess.run([sys.executable, "-c", BATCH, json.dumps(SMALL), str(TIME_LIMIT_S),
                           json.dumps([[t, c] for _, t, c in batch])], capture_output=True,
                          text=True, cwd=ROOT)
    reported = {}
    for line in done.stdout.splitlines():
        if line.startswith("{"):
            row = json.loads(line)
            reported[row.pop("index")] = row
    died = (done.stderr.strip().splitlines() or ["no output"])[-1][:160]
    rows = []
    for index, (mapping, model_type, class_name) in enumerate(batch):
        row = reported.get(index) or {"model_type": model_type, "class": class_name,
                                           "status": "FAILED", "reason": f"died: {died}"}
        row["mapping"] = mapping
        rows.append(row)
    return rows


def to_markdown(rows: list[dict], meta: dict) -> str:
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    runnable = len(rows) - counts.get("small config does not run", 0)
    lines = [f"# Hugging Face architectures (transformers {meta['transformers']}, "
             f"{meta['machine']})", "",
             "`python benchmarks/hf_architectures.py`: every causal-LM and base-model type, "
             "small random config, `pk.FilterPruning(0.5, \"l1\")`, verified by `pk.prune`.",
             "", f"Of {len(rows)} (mapping, type) pairs, {runnable} run with a small config; "
             f"of those, {counts.get('pruned', 0)} pruned, {counts.get('refused', 0)} refused "
             f"with a PruneError, {counts.get('FAILED', 0)} failed.", "",
             "| mapping | model type | class | status | params removed | skipped groups | "
             "time (s) | reason |", "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        removed = f"{row['reduction']:.0%}" if "reduction" in row else ""
        seconds = f"{row['seconds']:.1f}" if "seconds" in row else ""
        reason = row.get("reason", "").replace("|", "/").replace("\n", " ")
        lines.append(f"| {row['mapping']} | {row['model_type']} | {row['class']} | "
                     f"{row['status']} | {removed} | {row.get('skipped', '')} | {seconds} | "
                     f"{reason} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated model types")
    parser.add_argument("--base", action="store_true", help="base-model types too")
    options = parser.parse_args()
    import transformers

    selected = model_types(options.base or bool(options.only))
    if options.only:
        wanted = set(options.only.split(","))
        selected = [entry for entry in selected if entry[1] in wanted]
    rows: list[dict] = []
    for start in range(0, len(selected), BATCH_SIZE):
        for row in run_batch(selected[start:start + BATCH_SIZE]):
            rows.append(row)
            print(f"{row['mapping']:6} {row['model_type']:32} {row['status']:28} "
                  f"{row.get('reason', '')[:70]}", flush=True)
    meta = {"transformers": transformers.__version__,
            "machine": f"{platform.machine()}, Python {platform.python_version()}",
            "when": time.strftime("%Y-%m-%d")}
    if not options.only:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "hf_architectures.json").write_text(json.dumps({"meta": meta, "rows": rows},
                                                                  indent=1))
        (RESULTS / "hf_architectures.md").write_text(to_markdown(rows, meta))


if __name__ == "__main__":
    main()
