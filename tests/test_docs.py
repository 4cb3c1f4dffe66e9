"""Every Python code block in the documentation runs: the blocks of a page in order, in one
namespace, in a fresh process whose working folder is empty (what a reader who copies them
would get). Shell blocks are commands to type, and are not run here; the command line has
its own tests."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted(p for p in (ROOT / "docs").rglob("*.md") if "```python" in p.read_text())
SLOW = {"tutorials/yolo.md", "tutorials/bigger-than-memory.md", "tutorials/cnn.md",
        "how-to/latency.md", "how-to/layers.md", "tutorials/distillation.md",
        "how-to/export.md", "tutorials/language-model.md"}


def blocks(page: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", page.read_text(), re.S)


def test_every_page_with_code_is_found():
    assert len(PAGES) >= 8 and all(blocks(page) for page in PAGES)


@pytest.mark.parametrize("page", [
    pytest.param(p, marks=pytest.mark.slow) if str(p.relative_to(ROOT / "docs")) in SLOW else p
    for p in PAGES], ids=lambda p: str(p.relative_to(ROOT / "docs")))
def test_the_code_on_the_page_runs(page, tmp_path):
    script = "\n\n".join(f"# block {i}\n{code}" for i, code in enumerate(blocks(page)))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg"}
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True,
                          text=True, timeout=480, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
