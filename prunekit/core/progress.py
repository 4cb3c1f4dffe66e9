"""Progress, one convention everywhere: every long call takes ``progress=``, which is
``True`` (show it on stderr), ``False``/``None`` (say nothing) or a callable that receives a
``Step`` after each piece of work.

A ``Step`` names the stage (``"scoring"``, ``"distilling"``), how far it is when the stage
counts its items (``done`` of ``total``) and a detail (the loss, the item's name); ``str(step)``
is one readable line, so a callable written for the older message strings
(``progress=lambda message: print(message)``) keeps working.

Shown (``progress=True``): on a terminal, one line rewritten in place with the stage, the
item, the time spent and, when the stage counts its items, the time left; in a log or pipe,
a line when a stage starts and when it ends (so a CI log shows where a run is without a line
per item).
"""

from __future__ import annotations

import inspect
import sys
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable, TextIO, Union


@dataclass(frozen=True)
class Step:
    """One piece of progress.

    Attributes:
        stage: what is being done (``"scoring"``, ``"distilling"``).
        done: items of the stage finished, when it counts them.
        total: items the stage has, when known.
        detail: the item's name, or a figure (``"loss 0.41"``).
        value: that figure unrounded, where the detail shows one (the loss).
    """

    stage: str
    done: int | None = None
    total: int | None = None
    detail: str = ""
    value: float | None = None

    def __str__(self) -> str:
        count = (f" {self.done}/{self.total}" if self.done is not None and self.total
                 else f" {self.done}" if self.done is not None else "")
        return f"{self.stage}{count}" + (f": {self.detail}" if self.detail else "")


Reporter = Callable[[Step], None]
ProgressOption = Union[bool, None, Reporter]


def reporter(progress: Any, who: str = "progress") -> Reporter:
    """What to call with each ``Step``: nothing, the console, or the user's callable."""
    if progress is None or progress is False:
        return silent
    if progress is True:
        return ConsoleProgress()
    if not callable(progress):
        from ..errors import ConfigError

        raise ConfigError(f"{who}: give True (show progress), False, or a callable taking a "
                          f"pk.Step; got {type(progress).__name__}")
    if _positional_parameters(progress) == 2:
        # the older distillation convention: progress(step, loss)
        warnings.warn(f"{who}: a callable taking (step, loss) is deprecated; take one "
                      f"pk.Step (step.done, step.detail)", DeprecationWarning, stacklevel=3)
        return lambda step: progress(step.done, step.value)
    return progress


def silent(step: Step) -> None:
    """``progress=False``: nothing."""
    return None


def _positional_parameters(function: Callable) -> int | None:
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return None
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return sum(p.kind in kinds and p.default is p.empty for p in parameters)


def finish(report: Reporter) -> None:
    """End what ``report`` shows (the console's line in place), if anything."""
    close = getattr(report, "close", None)
    if callable(close):
        close()


class ConsoleProgress:
    """``progress=True``: the stage, the item, the time spent and left, on ``stream``."""

    def __init__(self, stream: TextIO | None = None):
        self.stream = stream or sys.stderr
        self.live = bool(getattr(self.stream, "isatty", lambda: False)())
        self.stage: str | None = None
        self.started = self.stage_started = time.perf_counter()
        self.width = 0  # of the line last written in place

    def __call__(self, step: Step) -> None:
        now = time.perf_counter()
        if step.stage != self.stage:
            self._end_line()
            self.stage, self.stage_started = step.stage, now
            if not self.live:
                self._write(f"[{_clock(now - self.started)}] {step.stage} ...\n")
        if self.live:
            line = f"{step}  {_clock(now - self.stage_started)}{self._left(step, now)}"
            self._write("\r" + line.ljust(self.width))
            self.width = len(line)
        elif step.total and step.done == step.total:  # the stage's last item: its time
            self._write(f"[{_clock(now - self.started)}] {step}  "
                        f"({_clock(now - self.stage_started)})\n")
            self.stage = None

    def close(self) -> None:
        self._end_line()

    def _end_line(self) -> None:
        """End the line written in place, so what follows starts on a line of its own."""
        if self.live and self.width:
            self._write("\n")
            self.width = 0

    def _left(self, step: Step, now: float) -> str:
        if not step.total or not step.done:
            return ""
        seconds = (now - self.stage_started) / step.done * (step.total - step.done)
        return f", {_clock(seconds)} left"

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60}:{seconds % 60:02d}" if seconds >= 60 else f"{seconds} s"
