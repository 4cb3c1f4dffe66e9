"""The language-model screens choose on held-out text only: the test columns they print
beside each candidate must never decide which one is chosen. And the goals summary
(``llm_goals.py``) says a miss and by how much, compares within one setting only, and leaves
out rows that do not remove their budget of the whole model."""

import importlib
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def benchmark_scripts(*names: str) -> list:
    """The benchmark scripts ``names`` as modules (they import each other by bare name, as
    they do when run from ``benchmarks/``)."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        return [importlib.import_module(name) for name in names]
    finally:
        sys.path.remove(str(BENCHMARKS))


@pytest.fixture(scope="module")
def screens():
    return benchmark_scripts("llm_keep_screen", "llm_recipe_screen")


@pytest.fixture(scope="module")
def goals():
    return benchmark_scripts("llm_goals")[0]


def chosen_lines(markdown: str) -> list[str]:
    return [line for line in markdown.splitlines() if "**chosen**" in line]


def test_recipe_screen_chooses_the_lowest_held_out_score_not_the_test_text(screens):
    _, screen = screens
    # "a" is far better on both test texts, "b" better on the geometric mean of the
    # held-out ratios (sqrt(2 × 2) = 2 against sqrt(1.5 × 3) ≈ 2.12)
    rows = [{"budget": 0.35, "method": "a", "removed": 0.35, "held_out_topics": 1.5,
             "held_out_samples": 3.0, "test_topics": 1.1, "test_sklearn": 1.1},
            {"budget": 0.35, "method": "b", "removed": 0.35, "held_out_topics": 2.0,
             "held_out_samples": 2.0, "test_topics": 9.0, "test_sklearn": 9.0},
            {"budget": 0.5, "method": "a", "removed": 0.5, "held_out_topics": 3.0,
             "held_out_samples": 3.0, "test_topics": 3.0, "test_sklearn": 3.0}]
    data = {"unpruned_perplexity": dict.fromkeys(screen.TEXTS, 10.0),
            "tokens": dict.fromkeys(screen.TEXTS, 2048), "rows": rows}
    lines = chosen_lines(screen.to_markdown(data))
    assert len(lines) == 2  # one per budget
    assert "| 35% | b **chosen**" in lines[0] and "×2.00" in lines[0]
    assert "| 50% | a **chosen**" in lines[1]


def test_keep_screen_chooses_the_lowest_held_out_perplexity_not_the_test_text(screens):
    screen, _ = screens
    rows = [{"budget": 0.5, "kept": k, "removed": 0.5, "held_out_perplexity": held,
             "held_out_kl": 1.0, "test_perplexity": test}
            for k, held, test in ((0, 60.0, 40.0), (1, 55.0, 90.0))]
    data = {"unpruned_held_out_perplexity": 18.0, "unpruned_test_perplexity": 16.0,
            "held_out_tokens": 2048, "test_tokens": 4096, "rows": rows}
    assert chosen_lines(screen.to_markdown(data)) == [
        line for line in screen.to_markdown(data).splitlines() if line.startswith("| 50% | 1 ")]


PEER = "heads then MLP: Taylor, LLM-Pruner's layer range"
OURS = "heads then MLP: FLAP's metric, first layer whole"
ROTATED = "hidden rotation, then MLP re-fit"


def pruned_row(budget, method, ratio):
    return {"budget": budget, "method": method, "perplexity_ratio": ratio, "removed": budget}


def recovered_row(budget, method, perplexity, samples=0, sequences=397, lora=None):
    return {"budget": budget, "method": method, "seconds": 900, "lr": 1e-4, "lora_rank": lora,
            "recovery_sequences": sequences, "samples": samples, "removed": budget,
            "perplexity_recovered": perplexity}


def summary(goals, pruned_rows, recovered_rows):
    rows = goals.entries({"rows": pruned_rows},
                         {"unpruned_perplexity": 10.0, "rows": recovered_rows})
    rows = {"help": rows, "sklearn": []}
    data = {"goals": goals.goals(rows, {0.2: OURS}), "versus": goals.versus(rows),
            "one_command": [goals.one_command(one_command_result())]}
    return goals.to_markdown(data)


def one_command_result(**changes):
    """An ``llm_one_command.py`` result: 20% of the parameters, both texts scored."""
    return {"command": "prunekit prune …", "minutes": 10, "parameters": 80,
            "unpruned_parameters": 100, "perplexity": 10.5, "unpruned_perplexity": 10.0,
            "descriptions": {"perplexity": 30.0, "unpruned_perplexity": 20.0},
            "answer": "Paris.", "unpruned_answer": "Paris.", **changes}


def test_the_one_command_shows_both_texts_and_a_wrong_answer_says_so(goals):
    rows = {"help": [], "sklearn": []}
    data = {"goals": goals.goals(rows, {}), "versus": goals.versus(rows), "one_command": [
        goals.one_command(one_command_result()),
        goals.one_command(one_command_result(command="prunekit prune --heads-first …",
                                             heads_first=0.34, descriptions=None,
                                             answer="France."))]}
    markdown = goals.to_markdown(data)
    first = line(markdown, "`prunekit prune …`")
    assert "20.0%" in first and "×1.05" in first and "×1.50" in first
    assert "`from_pretrained`" in first and "(wrong)" not in first
    second = line(markdown, "--heads-first")
    assert "not scored" in second and "`pk.load`" in second and "(wrong)" in second


def line(markdown, *parts):
    found = [row for row in markdown.splitlines() if all(p in row for p in parts)]
    assert len(found) == 1, (parts, found)
    return found[0]


def test_a_missed_goal_says_by_how_much_and_untied_rows_never_count(goals):
    # the rotated row would meet the goal, but adds the untied output layer's parameters back
    markdown = summary(goals, [pruned_row(0.2, OURS, 1.8), pruned_row(0.2, ROTATED, 1.1),
                               pruned_row(0.2, PEER, 2.0)],
                       [recovered_row(0.2, OURS, 11.0)])
    assert "×1.80: **missed** by 20%" in line(markdown, "−20%, no training", "help topics")
    assert ROTATED not in markdown
    assert "×1.10: met" in line(markdown, "−20%, 15 min of recovery", "help topics")


def test_peers_are_compared_within_one_recovery_setting_and_close_calls_are_ties(goals):
    markdown = summary(goals, [pruned_row(0.5, OURS, 3.00), pruned_row(0.5, PEER, 3.02)], [
        recovered_row(0.5, OURS, 12.0, samples=128),  # trained on own samples too
        recovered_row(0.5, PEER, 20.0),  # a worse peer, but in another setting
        recovered_row(0.5, PEER, 11.0, sequences=64),  # 16,384 tokens only: not counted
        recovered_row(0.5, OURS, 9.0, lora=8),  # LoRA: not the same recovery
        recovered_row(0.5, PEER, 10.5, samples=320, sequences=0)])  # own samples alone
    assert "tie (0.7%)" in line(markdown, "| 50% | as pruned")
    with_samples = line(markdown, "| 50% | 15 min, + 128 own samples")
    assert "×1.20" in with_samples and "not run" in with_samples
    alone = line(markdown, "| 50% | 15 min |")
    assert "×2.00 (LLM-Pruner, its layer range)" in alone and "not run" in alone
    assert "×1.05" in line(markdown, "| 50% | 15 min on 320 own samples alone |")
    assert "×1.10" not in markdown and "×0.90" not in markdown


def test_a_peer_ahead_is_said(goals):
    markdown = summary(goals, [pruned_row(0.35, OURS, 2.5), pruned_row(0.35, PEER, 2.0)], [])
    assert "| peer (25%) |" in line(markdown, "| 35% | as pruned")
