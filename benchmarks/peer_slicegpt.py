"""SliceGPT's own code on SmolLM2-135M-Instruct, beside ``llm.py``'s rows (the rows
"peer: SliceGPT (its code)").

SliceGPT (Ashkboos et al. 2024; the ``slicegpt`` package of microsoft/TransformerCompression)
pins transformers 4.41.0, which prunekit's environment does not have, so it runs in an
environment of its own, on what ``llm.py --export-for-peers`` writes (the model saved with
``save_pretrained``, its output layer untied, and the calibration and test token ids every
row of ``llm.py`` uses), and merges its rows into ``results/llm.json``:

    .venv/bin/python benchmarks/llm.py --export-for-peers /tmp/smollm2
    python3 -m venv .peer && .peer/bin/pip install torch==2.14.1 transformers==4.41.0 \\
        datasets==2.18.0 accelerate ml-collections sentencepiece
    .peer/bin/pip install --no-deps ./TransformerCompression     # its repository
    .peer/bin/python benchmarks/peer_slicegpt.py /tmp/smollm2
    .venv/bin/python benchmarks/llm.py --replot

The calls are those of its ``experiments/run_slicegpt.py``: ``hf_utils.get_model_and_tokenizer``
(its Llama adapter, which it picks by a Llama-2 model name, weights from the folder, float32),
``layernorm_fusion.replace_layers`` and ``fuse_modules``, then ``rotate.rotate_and_slice``
with a ``ConstSlicingScheduler`` and its runner's default final orientation ("random"). What
differs from its runner: the calibration batches are ``llm.py``'s (16 × 256 tokens of
Python's help topics, in batches of 4) instead of WikiText-2, and the new hidden size is
chosen so that the parameters outside the embeddings shrink by the row's budget, its
residual rotation matrices counted (SliceGPT's own ``--sparsity`` slices the hidden size by
that share and adds those matrices back). Perplexity, KL, greedy agreement and decode speed
are measured by ``lm_metrics``, the code that measures every other row.

With ``--recover-seconds S`` each sliced model is then recovered as ``llm_recovery.py``
recovers prunekit's (``pk.distill`` from the unpruned model, the same settings and recovery
text; prunekit imports in SliceGPT's environment from the repository: ``PYTHONPATH=.``)
except for the learning rate: at ``llm_recovery.py``'s 1e-4 SliceGPT's model diverges, so
it trains at 1e-5 (``--recover-lr``). Its rows go to ``results/llm_recovery.json``:

    PYTHONPATH=. .peer/bin/python benchmarks/peer_slicegpt.py /tmp/smollm2 \\
        --budgets 0.5 --recover-seconds 900
    .venv/bin/python benchmarks/llm_recovery.py --replot
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import time
from pathlib import Path

import torch
from lm_metrics import (
    TOKENS,
    batches,
    decode_speed,
    facts_known,
    greedy,
    log_probs,
    perplexity_and_kl,
    questions_answered,
)

RESULTS = Path(__file__).resolve().parent / "results"
METHOD = "peer: SliceGPT (its code)"
UNPRUNED_PARAMETERS = 134_515_008  # SmolLM2's, tied: what "all" is a share of in llm.py


def outside_embeddings(model) -> int:
    embeddings = {id(p) for layer in (model.get_input_embeddings(),
                                      model.get_output_embeddings()) for p in layer.parameters()}
    return sum(p.numel() for p in model.parameters() if id(p) not in embeddings)


def sliced_dimension(config, budget: float, interval: int = 8) -> int:
    """The hidden size, a multiple of ``interval``, at which SliceGPT's layers (norms fused
    away, two d×d residual rotations per layer) come closest to removing ``budget`` of the
    parameters outside the embeddings."""
    hidden, inner = config.hidden_size, config.intermediate_size
    head = config.hidden_size // config.num_attention_heads
    q, kv = config.num_attention_heads * head, config.num_key_value_heads * head

    def layer(d: int, norms: int) -> int:
        return d * (q + 2 * kv) + q * d + 3 * inner * d + norms

    before = config.num_hidden_layers * layer(hidden, 2 * hidden) + hidden
    return min(range(interval, hidden + 1, interval), key=lambda d: abs(
        1 - config.num_hidden_layers * (layer(d, 0) + 2 * d * d) / before - budget))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="what llm.py --export-for-peers wrote")
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.2, 0.35, 0.5])
    parser.add_argument("--recover-seconds", type=float, default=None,
                        help="recover each sliced model this long as llm_recovery.py does, "
                             "and write its rows there")
    # llm_recovery.py's rows train at 1e-4; six steps of it take SliceGPT's model from a
    # loss of 2.1 to 10.2 and its perplexity from 93 to 1,380 (3e-5: 101; 1e-5: 71)
    parser.add_argument("--recover-lr", type=float, default=1e-5,
                        help="the learning rate of that recovery")
    options = parser.parse_args()
    from slicegpt import hf_utils, layernorm_fusion, rotate
    from slicegpt.slicing_scheduler import ConstSlicingScheduler

    torch.set_num_threads(2)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(options.folder))
    tokens = torch.load(options.folder / "tokens.pt")
    test_ids, calibration_ids = tokens["test"], tokens["calibration"]
    calibration = [{"input_ids": b["input_ids"], "attention_mask": torch.ones_like(b["input_ids"])}
                   for b in batches(calibration_ids, 4)]
    prompts = test_ids[:8, :32]

    def load():
        adapter, _ = hf_utils.get_model_and_tokenizer(
            "meta-llama/Llama-2-7b-hf", str(options.folder), dtype=torch.float32)
        return adapter

    unpruned = load().model
    reference = log_probs(unpruned, test_ids)
    unpruned_ppl, _ = perplexity_and_kl(unpruned, test_ids, reference)
    unpruned_greedy = greedy(unpruned, prompts, 16)
    base = outside_embeddings(unpruned)
    questions = questions_answered(unpruned, tokenizer)
    print(f"unpruned (transformers of SliceGPT's pin): perplexity {unpruned_ppl:.2f}", flush=True)
    rows = []
    for budget in options.budgets:
        adapter = load()
        started = time.perf_counter()
        layernorm_fusion.replace_layers(adapter)
        layernorm_fusion.fuse_modules(adapter)
        dimension = sliced_dimension(adapter.model.config, budget)
        rotate.rotate_and_slice(adapter, calibration, ConstSlicingScheduler(dimension),
                                final_orientation="random")
        prune_s = time.perf_counter() - started
        model = adapter.model.eval()
        ppl, kl = perplexity_and_kl(model, test_ids, reference)
        facts = sum(facts_known(model, tokenizer, questions))
        if options.recover_seconds is not None:
            rows.append(recovered(model, unpruned, tokens["recovery"], test_ids, reference,
                                  options.recover_seconds, options.recover_lr, tokenizer,
                                  questions) | {
                "budget": budget, "method": METHOD, "pruned": f"slicegpt to hidden {dimension}",
                "removed": 1 - outside_embeddings(model) / base,
                "perplexity_as_pruned": ppl, "kl_as_pruned": kl, "facts_as_pruned": facts,
                "facts_of": len(questions), "peer_unpruned_perplexity": unpruned_ppl})
            print(rows[-1], flush=True)
            del adapter, model
            gc.collect()
            continue
        try:
            agreement = (greedy(model, prompts, 16) == unpruned_greedy).float().mean().item()
            speed = decode_speed(unpruned, model, prompts[:1])
        except Exception as error:  # its layers may not decode with this transformers' cache
            print(f"greedy decoding failed: {type(error).__name__}: {error}", flush=True)
            agreement, speed = None, {"decode_speedup": None}
        row = {"budget": budget, "method": METHOD, "kind": "peer",
               "pruned": f"slicegpt rotate_and_slice to hidden {dimension} (of "
                         f"{model.config.hidden_size}), final orientation random",
               "removed": 1 - outside_embeddings(model) / base,
               "removed_all": 1 - sum(p.numel() for p in model.parameters()) / UNPRUNED_PARAMETERS,
               "perplexity": ppl, "kl": kl, "greedy_agreement": agreement,
               "prune_s": prune_s, "facts": facts, "facts_of": len(questions),
               "peer_unpruned_perplexity": unpruned_ppl, **speed}
        rows.append(row)
        print(row, flush=True)
        del adapter, model
        gc.collect()
    if options.recover_seconds is not None:
        return merge_recovered(rows)
    path = RESULTS / "llm.json"
    saved = json.loads(path.read_text())
    for row in rows:  # measured against this environment's unpruned model
        row["perplexity_ratio"] = row["perplexity"] / unpruned_ppl
    kept = [r for r in saved["rows"]
            if (r["budget"], r["method"]) not in {(r2["budget"], METHOD) for r2 in rows}]
    saved["rows"] = sorted(kept + copy.deepcopy(rows), key=lambda r: r["budget"])
    path.write_text(json.dumps(saved, indent=1))
    print(f"merged {len(rows)} rows into {path}", flush=True)


def recovered(model, unpruned, recovery_ids, test_ids, reference, seconds, lr, tokenizer,
              questions) -> dict:
    """``model`` distilled from ``unpruned`` as ``llm_recovery.py`` distils prunekit's rows
    (at learning rate ``lr``), and what it then measures."""
    import prunekit as pk

    started = time.perf_counter()
    result = pk.distill(model, unpruned, batches(recovery_ids, 2), steps=1_000_000, lr=lr,
                        schedule="constant", warmup=0, hidden=False, time_limit=seconds)
    spent = time.perf_counter() - started
    model.eval()
    ppl, kl = perplexity_and_kl(model, test_ids, reference)
    return {"seconds": seconds, "lr": lr, "lora_rank": None,
            "recovery_sequences": len(recovery_ids), "samples": 0,
            "perplexity_recovered": ppl, "kl_recovered": kl,
            "facts_recovered": sum(facts_known(model, tokenizer, questions)),
            "recovery_steps": result.steps, "recovery_tokens": result.steps * 2 * TOKENS,
            "recovery_seconds": spent}


def merge_recovered(rows: list[dict]) -> None:
    """``rows`` into ``results/llm_recovery.json`` in place of the same recovery time, budget
    and method (``llm_recovery.py --replot`` writes its table again)."""
    path = RESULTS / "llm_recovery.json"
    saved = json.loads(path.read_text())
    new = {(r["seconds"], r["budget"], r["method"]) for r in rows}
    saved["rows"] = [r for r in saved["rows"] if (
        r.get("seconds"), r.get("budget"), r["method"]) not in new] + copy.deepcopy(rows)
    path.write_text(json.dumps(saved, indent=1) + "\n")
    print(f"merged {len(rows)} rows into {path}", flush=True)


if __name__ == "__main__":
    main()
