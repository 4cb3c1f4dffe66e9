"""SmolLM2-135M against the goals set for it, read from the language-model result files.

Nothing is run: every figure is a row that ``llm.py``, ``llm_recovery.py``,
``llm_recipe_screen.py`` or ``llm_one_command.py`` measured (each file names the command that
reproduces it). Two texts: Python's help topics, the kind of text every row calibrates and
recovers on (``llm.md``, ``llm_recovery.md``), and scikit-learn's dataset descriptions, which
no row reads before it is scored (``llm_on_sklearn.md``, ``llm_recovery_on_sklearn.md``).

- **The numeric goals** (perplexity over the unpruned model's): −20% of the parameters outside
  the embeddings with no training at most ×1.5, after 15 minutes of recovery at most ×1.15;
  −50% after 15 minutes at most ×2.5. Each is met or missed by the best row on that text,
  whatever its method (prunekit runs every row; the best is chosen here with hindsight, on
  the text it is scored on), and by the recipe the recipe screen chose on held-out text
  alone, where it was run; a miss says by how much.
- **Against the peers**: prunekit's own recipes against the peers' procedures as published
  (as prunekit implements them, or their own code), at the same budget, as pruned and after
  the same recovery (the same seconds, recovery text and own samples). A peer's selection
  given prunekit's calibration (half the model's own samples) counts as prunekit's: the
  calibration is what it adds.
- **The one command**: the model it saves reloads with plain ``from_pretrained`` and answers
  "What is the capital of France?" as the unpruned model does.

Two kinds of prunekit's rows are left out of every comparison here (``llm.md`` shows them):
the hidden size by rotation, whose untied output layer adds 28M parameters back, so they do
not remove their budget of the whole model; and ``pk.allocate``'s, which count their budget
over every parameter instead, so they remove another share of those outside the embeddings
(up to 61% at 50%), and whose best split at 20% is FLAP's procedure itself. SliceGPT's own
code unties its output layer too; its rows stay, in the peers' favour.

    python benchmarks/llm_goals.py

Results: ``benchmarks/results/llm_goals.{json,md}``.
"""

from __future__ import annotations

from typing import Any, Iterable

from harness import arguments, markdown_table, read_results, write_results

from llm_recipe_screen import chosen

# the rows that are a peer's procedure as published: prunekit's implementation of it, or
# the peer's own code (llm.py says which). FLAP's metric on a structure FLAP does not
# publish (the MLP alone; a third of the heads, then the MLP; layers kept whole) is
# prunekit's recipe, FLAP's adaptive structure its procedure
PEERS = {
    "depth: block influence (ShortGPT)": "ShortGPT",
    "depth: angular (Gromov et al.)": "Gromov et al.",
    "MLP: mean activation": "Minitron's width importance",
    "heads then MLP: mean activation": "Minitron's width importance",
    "heads and MLP ranked together: FLAP (its adaptive structure, pk.WidthPruning)":
        "FLAP, adaptive structure",
    "heads then MLP: Taylor (LLM-Pruner's importance)": "LLM-Pruner",
    "heads then MLP: Taylor, LLM-Pruner's layer range": "LLM-Pruner, its layer range",
    "peer: SliceGPT (its code)": "SliceGPT",
    "peer: Torch-Pruning's LLM example (its code)": "Torch-Pruning",
}
LEFT_OUT = ("hidden rotation", "hidden: rotation", "allocated: ")  # as the docstring says
TEXTS = {"help": ("Python's help topics", "llm", "llm_recovery"),
         "sklearn": ("scikit-learn's dataset descriptions", "llm_on_sklearn",
                     "llm_recovery_on_sklearn")}
RECOVERY_SECONDS = 900
SHORT_RECOVERY_TEXT = 64  # sequences: the early rows that trained on 16,384 tokens only
TIE = 0.01  # one run each: a lead under 1% of perplexity is not told apart
GOALS = (  # (budget, recovered, at most)
    (0.2, False, 1.5), (0.2, True, 1.15), (0.5, True, 2.5))


def side(method: str) -> str:
    """``"peer"`` for a peer's procedure as published; ``"prunekit"`` for every other row,
    a peer's selection with prunekit's calibration (the model's own samples) among them."""
    return "peer" if method in PEERS else "prunekit"


def counted(method: str) -> bool:
    return not method.startswith(LEFT_OUT)


def entries(pruned: dict, recovery: dict) -> list[dict[str, Any]]:
    """Every counted row of ``pruned`` (``llm.py``'s result) and ``recovery``
    (``llm_recovery.py``'s, on the same text) as ``{budget, method, setting, ratio}``:
    setting ``"as pruned"``, or the recovery's (15 minutes, with any own samples)."""
    found = []
    for row in pruned["rows"]:
        if "perplexity_ratio" in row and counted(row["method"]):
            found.append({"budget": row["budget"], "method": row["method"],
                          "setting": "as pruned", "ratio": row["perplexity_ratio"],
                          "removed": row["removed"]})
    for row in recovery["rows"]:
        if (row["seconds"] != RECOVERY_SECONDS or row.get("lora_rank")
                or row["recovery_sequences"] == SHORT_RECOVERY_TEXT
                or not counted(row["method"])):
            continue  # 15 minutes on all the recovery text, every weight trained
        found.append({"budget": row["budget"], "method": row["method"],
                      "setting": recovery_setting(row.get("samples") or 0,
                                                  row["recovery_sequences"]),
                      "ratio": row["perplexity_recovered"] / recovery["unpruned_perplexity"],
                      "removed": row["removed"], "lr": row["lr"]})
    return found


def recovery_setting(samples: int, text_sequences: int | None = None) -> str:
    if samples and text_sequences == 0:
        return f"15 min on {samples} own samples alone"
    return "15 min" + (f", + {samples} own samples" if samples else "")


def best(rows: Iterable[dict]) -> dict | None:
    return min(rows, key=lambda r: r["ratio"], default=None)


def goals(rows: dict[str, list[dict]], picks: dict[float, str]) -> list[dict]:
    out = []
    for budget, recovered, most in GOALS:
        for text in TEXTS:
            candidates = [r for r in rows[text] if r["budget"] == budget
                          and (r["setting"] != "as pruned") == recovered]
            top = best(candidates)
            pick = best(r for r in candidates if r["method"] == picks.get(budget))
            out.append({"budget": budget, "recovered": recovered, "at_most": most,
                        "text": text, "best": top, "chosen": pick})
    return out


def versus(rows: dict[str, list[dict]]) -> list[dict]:
    """At each budget, text and setting: prunekit's best own row against the best peer's."""
    out = []
    for text, found in rows.items():
        settings = sorted({(r["budget"], r["setting"]) for r in found},
                          key=lambda s: (s[0], s[1] != "as pruned", s[1]))
        for budget, setting in settings:
            here = [r for r in found if (r["budget"], r["setting"]) == (budget, setting)]
            ours = best(r for r in here if side(r["method"]) == "prunekit")
            peer = best(r for r in here if side(r["method"]) == "peer")
            out.append({"text": text, "budget": budget, "setting": setting, "prunekit": ours,
                        "peer": peer})
    return out


def main() -> None:
    arguments(__doc__).parse_args()
    rows = {text: entries(read_results(pruned), read_results(recovered))
            for text, (_, pruned, recovered) in TEXTS.items()}
    picks = {budget: row["method"]
             for budget, row in chosen(read_results("llm_recipe_screen")["rows"]).items()}
    data = {"goals": goals(rows, picks), "versus": versus(rows), "chosen": picks,
            "one_command": [one_command(read_results(stem)) for stem in ONE_COMMAND]}
    write_results("llm_goals", data, to_markdown(data))
    print(to_markdown(data))


ONE_COMMAND = ("llm_one_command", "llm_one_command_heads_first")  # result files, as run


def one_command(result: dict) -> dict:
    """What the goals page shows of an ``llm_one_command.py`` result."""
    descriptions = result.get("descriptions") or {}
    return {"command": result["command"], "minutes": result["minutes"],
            "removed": 1 - result["parameters"] / result["unpruned_parameters"],
            "help": result["perplexity"] / result["unpruned_perplexity"],
            "descriptions": (descriptions["perplexity"] / descriptions["unpruned_perplexity"]
                             if descriptions else None),
            "answer": result["answer"], "right": result["answer"] == result["unpruned_answer"],
            "reloads": "pk.load" if result.get("heads_first") else "from_pretrained"}


def figure(row: dict | None) -> str:
    return "not run" if row is None else f"×{row['ratio']:.2f}"


def verdict(row: dict | None, most: float) -> str:
    if row is None:
        return "—"
    if row["ratio"] <= most:
        return f"{figure(row)}: met"
    return f"{figure(row)}: **missed** by {row['ratio'] / most - 1:.0%}"


def to_markdown(data: dict) -> str:
    goal_rows = []
    for g in data["goals"]:
        what = f"−{g['budget']:.0%}, " + ("15 min of recovery" if g["recovered"]
                                          else "no training")
        goal_rows.append([
            what, f"×{g['at_most']:g}", TEXTS[g["text"]][0],
            verdict(g["best"], g["at_most"]) + (f" ({name(g['best'])})" if g["best"] else ""),
            verdict(g["chosen"], g["at_most"]) if g["chosen"] else "not run"])
    versus_rows = []
    for v in data["versus"]:
        ours, peer = v["prunekit"], v["peer"]
        versus_rows.append([
            TEXTS[v["text"]][0], f"{v['budget']:.0%}", v["setting"],
            f"{figure(ours)} ({name(ours)})" if ours else "not run",
            f"{figure(peer)} ({name(peer)})" if peer else "not run", lead(ours, peer)])
    one_rows = [[f"`{one['command']}`", f"{one['removed']:.1%}", f"{one['minutes']:g} min",
                 f"×{one['help']:.2f}",
                 "not scored" if one["descriptions"] is None else f"×{one['descriptions']:.2f}",
                 f"`{one['reloads']}`",
                 f"\"{one['answer']}\"" + ("" if one["right"] else " (wrong)")]
                for one in data["one_command"]]
    return "\n".join([
        "# SmolLM2-135M against its goals", "",
        "Perplexity over the unpruned model's, from the language-model result files "
        "(`llm.md`, `llm_recovery.md` on Python's help topics, the kind of text every row "
        "calibrates and recovers on; `llm_on_sklearn.md`, `llm_recovery_on_sklearn.md` on "
        "scikit-learn's dataset descriptions, which no row reads before it is scored). "
        "Budgets are shares of the parameters outside the embeddings removed; recovery is "
        f"{RECOVERY_SECONDS // 60} minutes of distillation on two cores on help text (and "
        "the model's own samples where it says so). Left out: prunekit's rows that untie the "
        "output layer (the hidden size by rotation: 28M parameters added back) and "
        "`pk.allocate`'s (their budget counts every parameter); SliceGPT's own code unties "
        "its output layer too and stays, in the peers' favour. Reproduce: "
        "`python benchmarks/llm_goals.py` (it reads the files; their own commands measure).",
        "",
        "## The goals", "",
        "**best row**: the lowest of every row at that budget on that text, chosen with "
        "hindsight on the text it is scored on. **the screen's choice**: the recipe "
        "`llm_recipe_screen.md` chose on held-out text alone at that budget "
        "(\"not run\": not recovered in that setting).", "",
        markdown_table(["goal", "at most", "text", "best row", "the screen's choice"],
                       goal_rows), "",
        "## prunekit against the peers", "",
        "prunekit's best own recipe against the best peer procedure as published (prunekit's "
        "implementation of it, or its own code) at the same budget and in the same setting; "
        "**lead**: by how much the leader's perplexity is lower (under 1%, one run each: a "
        "tie). prunekit's rows include a "
        "peer's selection given prunekit's calibration (\"calibrated on half topics, half own "
        "samples\": the model's own text, `pk.sample_text`); the row's name says so.", "",
        markdown_table(["text", "budget", "setting", "prunekit", "best peer", "lead"],
                       versus_rows), "",
        "## The one command", "",
        "`prunekit prune` from the GGUF file, as a user runs it (`llm_one_command.md`, "
        "`llm_one_command_heads_first.md`): calibrated and recovered on the help topics and 64 "
        "sequences the model wrote itself, scored on both texts after it reloaded; the share "
        "is of all parameters (the embeddings included), the answer to \"What is the capital "
        "of France?\".", "",
        markdown_table(["command", "removed", "recovery", "help topics",
                        "dataset descriptions", "reloads with", "answer"], one_rows), ""])


def lead(ours: dict | None, peer: dict | None) -> str:
    """Who is ahead and by how much; within ``TIE`` a tie (one run each)."""
    if ours is None or peer is None:
        return "—"
    share = ours["ratio"] / peer["ratio"] - 1
    if abs(share) < TIE:
        return f"tie ({abs(share):.1%})"
    return ("**prunekit**" if share < 0 else "peer") + f" ({abs(share):.0%})"


def name(row: dict) -> str:
    method = row["method"]
    label = PEERS.get(method, method)
    lr = row.get("lr")
    return label + (f", lr {lr:g}" if lr and lr != 1e-4 else "")


if __name__ == "__main__":
    main()
