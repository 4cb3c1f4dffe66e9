"""Every Hugging Face architecture transformers maps to a causal LM or a base model, pruned.

Each model type in the auto mappings is built from a small config derived from its own
defaults (2 layers, width 64, 4 heads, a 128-token vocabulary: every such field the config
has), with random weights, and run once unpruned on random ``input_ids``. Types whose small
config does not build or run are listed as such: that is a limit of this sweep's config
shrinking, not of prunekit. Every other type is pruned with ``pk.FilterPruning(0.5, "l1")``
(the MLP neurons; verified equivalent by ``pk.prune``), in its own process with a time limit.
Writes ``benchmarks/results/hf_architectures.{json,md}``.

    python benchmarks/hf_architectures.py                 # causal LMs and base models
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

ONE_MODEL = r'''
import json, sys, time, warnings
warnings.filterwarnings("ignore")
import torch, transformers
transformers.logging.set_verbosity_error()
import prunekit as pk

model_type, class_name, small = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
row = {"model_type": model_type, "class": class_name}
try:
    config = transformers.AutoConfig.for_model(model_type)
    for key, value in small.items():
        if isinstance(getattr(config, key, None), int) and not isinstance(getattr(config, key), bool):
            setattr(config, key, value)
    torch.manual_seed(0)
    model = getattr(transformers, class_name)(config).eval()
    tokens = {"input_ids": torch.randint(0, 100, (2, 8), generator=torch.Generator().manual_seed(0))}
    with torch.no_grad():
        model(**tokens)
except Exception as error:
    row.update(status="small config does not run", reason=f"{type(error).__name__}: {str(error)[:160]}")
    print(json.dumps(row)); sys.exit(0)
start = time.perf_counter()
try:
    result = pk.prune(model, tokens, pk.FilterPruning(0.5, "l1"))
    row.update(status="pruned", params_before=result.before.params, params_after=result.after.params,
               reduction=result.param_reduction, skipped=len(result.skipped),
               check=str(result.report)[:120], seconds=time.perf_counter() - start)
except pk.PruneError as error:
    row.update(status="refused", reason=f"{type(error).__name__}: {str(error)[:160]}",
               seconds=time.perf_counter() - start)
except Exception as error:
    row.update(status="FAILED", reason=f"{type(error).__name__}: {str(error)[:160]}",
               seconds=time.perf_counter() - start)
print(json.dumps(row))
'''


def model_types() -> list[tuple[str, str, str]]:
    """(mapping, model type, class name) for every causal LM and base model type."""
    from transformers.models.auto import modeling_auto

    found = []
    for mapping, names in (("causal", modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES),
                           ("base", modeling_auto.MODEL_MAPPING_NAMES)):
        for model_type, class_name in sorted(names.items()):
            if isinstance(class_name, str):
                found.append((mapping, model_type, class_name))
    return found


def run_one(mapping: str, model_type: str, class_name: str) -> dict:
    try:
        done = subprocess.run([sys.executable, "-c", ONE_MODEL, model_type, class_name,
                               json.dumps(SMALL)], capture_output=True, text=True,
                              timeout=TIME_LIMIT_S, cwd=ROOT)
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        row = json.loads(lines[-1]) if lines else {
            "model_type": model_type, "class": class_name, "status": "FAILED",
            "reason": (done.stderr.strip().splitlines() or ["no output"])[-1][:160]}
    except subprocess.TimeoutExpired:
        row = {"model_type": model_type, "class": class_name, "status": "FAILED",
               "reason": f"over {TIME_LIMIT_S} s"}
    row["mapping"] = mapping
    return row


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
    options = parser.parse_args()
    import transformers

    selected = model_types()
    if options.only:
        wanted = set(options.only.split(","))
        selected = [entry for entry in selected if entry[1] in wanted]
    rows = []
    for mapping, model_type, class_name in selected:
        rows.append(run_one(mapping, model_type, class_name))
        print(f"{mapping:6} {model_type:32} {rows[-1]['status']:28} "
              f"{rows[-1].get('reason', '')[:70]}", flush=True)
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
