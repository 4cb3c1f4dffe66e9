"""What every benchmark shares: where the repository and the result files are, writing a
result whole (JSON, Markdown and a plot, or none of them), Markdown tables and a command line
that starts from the script's own docstring. Interleaved timing is the library's own
(``pk.compare_latency``, ``prunekit.measure.latency.time_models``).

A benchmark is run as a script (``python benchmarks/NAME.py``); importing this module puts
the repository first on ``sys.path``, so ``prunekit`` and the shared model lists and
contracts (``contracts/``) are the ones in this checkout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from prunekit.core.tables import ResultTable  # noqa: E402


def arguments(doc: str | None) -> argparse.ArgumentParser:
    """A parser described by the first line of the benchmark's docstring."""
    return argparse.ArgumentParser(description=(doc or "").strip().splitlines()[0])


def write_text(path: Path, text: str) -> Path:
    """``text`` into ``path`` in one step: a run stopped midway leaves the old file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.",
                                     delete=False) as handle:
        handle.write(text)
    os.replace(handle.name, path)
    return path


def write_results(stem: str, data: Any, markdown: str | None = None, figure: Any = None,
                  folder: Path = RESULTS) -> Path:
    """``STEM.json`` (``data``), ``STEM.md`` and ``STEM.png`` (a matplotlib figure) in the
    results folder, each replaced whole; the JSON path."""
    path = write_text(folder / f"{stem}.json", json.dumps(data, indent=1) + "\n")
    if markdown is not None:
        write_text(folder / f"{stem}.md", markdown if markdown.endswith("\n") else markdown + "\n")
    if figure is not None:
        save_figure(figure, folder / f"{stem}.png")
    return path


def read_results(stem: str, folder: Path = RESULTS) -> Any:
    """What ``write_results`` wrote for ``stem`` (to merge a partial rerun into it)."""
    return json.loads((folder / f"{stem}.json").read_text())


def rows_not_rerun(stem: str, new: Sequence[dict], key: Callable[[dict], Any],
                   field: str = "rows") -> list[dict]:
    """The rows saved under ``field`` in ``STEM.json`` that no row of ``new`` replaces
    (``key`` says which row is which): what a partial rerun keeps. None before a first run."""
    try:
        saved = read_results(stem)[field]
    except FileNotFoundError:
        return []
    done = {key(row) for row in new}
    return [row for row in saved if key(row) not in done]


def save_figure(figure: Any, path: Path, dpi: int = 120) -> Path:
    """A matplotlib figure as a PNG, replaced whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_name(f".{path.stem}.tmp{path.suffix}")
    figure.savefig(scratch, dpi=dpi)
    os.replace(scratch, path)
    return path


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table of the cells as text (the same rendering as ``print(result)``'s)."""
    return ResultTable("", list(columns), [[str(cell) for cell in row] for row in rows]
                       ).markdown_table()
