"""The language-model screens choose on held-out text only: the test columns they print
beside each candidate must never decide which one is chosen."""

import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def screens():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import llm_keep_screen
        import llm_recipe_screen
    finally:
        sys.path.remove(str(BENCHMARKS))
    return llm_keep_screen, llm_recipe_screen


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
