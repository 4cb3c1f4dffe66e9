"""Figures for the workflows' results, as ``matplotlib.figure.Figure`` objects.

No ``pyplot``: a figure made here is not registered with any backend, so the user's own
plotting backend and open figures are left alone, and nothing needs closing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def new_figure(width: float, height: float) -> Any:
    """A figure not attached to pyplot (matplotlib is the ``plot`` extra)."""
    try:
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError("plots need matplotlib: pip install 'prunekit[plot]'") from error
    return Figure(figsize=(width, height))


def save(figure: Any, path: str | Path) -> Path:
    path = Path(path)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    return path
