"""Latency you can trust: models timed interleaved, in one process, with their spread.

Timing the unpruned model now and the pruned one a minute later measures the machine as much
as the models: another process, a frequency change or a cache can move one number by 2×. Here
every round runs each model once, in alternating order (A B, then B A), after a warm-up, with
a fixed thread count, so whatever slows the machine slows both. Each model gets the median and
the quartiles of its times; a comparison gets the median of the per-round ratios, with a 95%
confidence interval for it, and says "within the noise" when that interval holds 1.
"""

from __future__ import annotations

import math
import statistics
import time
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from ..core.calls import call_model, evaluating
from ..errors import ConfigError


@dataclass(frozen=True)
class Timing:
    """One model's milliseconds per forward pass over the rounds it was timed in."""

    median_ms: float
    low_ms: float  # first quartile
    high_ms: float  # third quartile
    rounds: int

    def __str__(self) -> str:
        return f"{self.median_ms:.2f} ms ({self.low_ms:.2f}–{self.high_ms:.2f})"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Speedup:
    """How much faster ``after`` ran than ``before``, measured in the same rounds."""

    before: Timing
    after: Timing
    speedup: float  # median over rounds of before / after; above 1 is faster
    low: float  # a 95% confidence interval for that median
    high: float
    threads: int
    batch: int | None  # the first dim of the first input, where there is one

    @property
    def within_noise(self) -> bool:
        """True when the rounds cannot tell the two apart: the interval holds 1."""
        return self.low <= 1.0 <= self.high

    @property
    def change(self) -> float:
        """The change in latency, after / before - 1 (negative: faster)."""
        return 1.0 / self.speedup - 1.0

    def describe(self) -> str:
        """The result in words, e.g. ``1.82× faster (95% CI 1.79–1.86×)``."""
        interval = f"95% CI {self.low:.2f}–{self.high:.2f}×"
        if self.within_noise:
            return f"no measurable difference ({self.speedup:.2f}×, {interval})"
        word = "faster" if self.speedup > 1 else "slower"
        factor = self.speedup if self.speedup > 1 else 1 / self.speedup
        return f"{factor:.2f}× {word} ({interval})"

    def conditions(self) -> str:
        """How it was measured, for a caption."""
        batch = f"batch {self.batch}, " if self.batch is not None else ""
        return (f"{batch}{self.threads} thread{'s' if self.threads != 1 else ''}, "
                f"{self.before.rounds} interleaved rounds, median")

    def __str__(self) -> str:
        return f"{self.describe()}; {self.conditions()}"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "within_noise": self.within_noise}


@dataclass(frozen=True)
class LatencyReached:
    """A latency target and what the chosen plan reached, timed against the unpruned model."""

    target: float  # fraction of the unpruned latency asked for
    measured: Speedup
    widths: str = ""  # how the kept widths were chosen, when by timing

    @property
    def reached(self) -> float:
        """The fraction of the unpruned latency the pruned model runs in."""
        return 1 / self.measured.speedup

    @property
    def met(self) -> bool:
        """At or below the target, within 5% (the search's tolerance)."""
        return self.reached <= self.target * 1.05

    def __str__(self) -> str:
        verdict = "met" if self.met else "not met"
        gap = (self.reached - self.target) * 100
        text = (f"latency target {self.target:.0%} of the unpruned model's time: {verdict}, "
                f"reached {self.reached:.0%} ({gap:+.0f} points; {self.measured})")
        if not self.met:
            text += ("; the timings on this machine vary more than the search's 5%, or no "
                     "ratio lands closer")
        if self.widths:
            text += f"; {self.widths}"
        return text


def speedup_cell(speedup: float | None, low: float | None = None,
                 high: float | None = None) -> str:
    """A table cell: ``1.84× (1.80–1.88)``, ``≈ 1 (0.97–1.05)`` where the interval holds 1,
    ``—`` for none."""
    if speedup is None:
        return "—"
    if low is None or high is None:
        return f"{speedup:.2f}×"
    value = "≈ 1" if low <= 1.0 <= high else f"{speedup:.2f}×"
    return f"{value} ({low:.2f}–{high:.2f})"


def time_models(models: Sequence[nn.Module], example_inputs: Any, *, threads: int | None = None,
                warmup: int = 3, min_rounds: int = 10, max_rounds: int = 200,
                min_time: float = 1.0, inputs: Sequence[Any] | None = None
                ) -> list[list[float]]:
    """Seconds per forward pass of every model, round by round: ``result[i][r]``.

    Every round runs each model once (or a few times, for a model faster than a millisecond,
    so the clock's resolution does not matter), the order reversed every other round. Rounds
    go on until ``min_time`` seconds have passed and at least ``min_rounds`` are done.
    ``inputs`` gives each model its own inputs instead (a model whose hidden size was
    pruned takes narrower embeddings, say).
    """
    if not models:
        raise ConfigError("time_models: give at least one model")
    inputs = list(inputs) if inputs is not None else [example_inputs] * len(models)
    if len(inputs) != len(models):
        raise ConfigError(f"time_models: {len(inputs)} inputs for {len(models)} models")
    if min_rounds < 2 or max_rounds < min_rounds:
        raise ConfigError(f"min_rounds={min_rounds}, max_rounds={max_rounds}: need "
                          f"2 <= min_rounds <= max_rounds")
    with fixed_threads(threads), torch.inference_mode(), _all_evaluating(models):
        calls = [_calls_per_sample(model, x, warmup) for model, x in zip(models, inputs)]
        samples: list[list[float]] = [[] for _ in models]
        started = time.perf_counter()
        rounds = 0
        while rounds < min_rounds or (time.perf_counter() - started < min_time
                                      and rounds < max_rounds):
            order = range(len(models)) if rounds % 2 == 0 else reversed(range(len(models)))
            for index in order:
                samples[index].append(_time_calls(models[index], inputs[index], calls[index]))
            rounds += 1
    return samples


def timing(seconds: Sequence[float]) -> Timing:
    """The median and quartiles of per-call times, in milliseconds."""
    low, median, high = statistics.quantiles(seconds, n=4, method="inclusive")
    return Timing(median * 1e3, low * 1e3, high * 1e3, len(seconds))


def measure_latency(model: nn.Module, example_inputs: Any, *, threads: int | None = None,
                    min_time: float = 0.5) -> Timing:
    """One model's latency: median and quartiles over rounds after a warm-up."""
    return timing(time_models([model], example_inputs, threads=threads, min_time=min_time)[0])


def compare_latency(before: nn.Module, after: nn.Module, example_inputs: Any, *,
                    after_inputs: Any = None, threads: int | None = None,
                    min_time: float = 1.0) -> Speedup:
    """Time ``before`` and ``after`` interleaved and say how much faster ``after`` is.

    Example:
        >>> speed = pk.compare_latency(original, pruned, torch.randn(1, 3, 224, 224))
        >>> print(speed)   # 1.82× faster (95% CI 1.79–1.86×); batch 1, 2 threads, ...
    """
    inputs = [example_inputs, example_inputs if after_inputs is None else after_inputs]
    return speedups_over_first([before, after], example_inputs, threads=threads,
                               min_time=min_time, inputs=inputs)[0]


def speedups_over_first(models: Sequence[nn.Module], example_inputs: Any, *,
                        threads: int | None = None, min_time: float = 1.0,
                        min_rounds: int = 10, inputs: Sequence[Any] | None = None
                        ) -> list[Speedup]:
    """Every model after the first against the first, all timed in the same rounds (one
    set of rounds for a whole table, so its rows share one baseline)."""
    samples = time_models(models, example_inputs, threads=threads, min_time=min_time,
                          min_rounds=min_rounds, inputs=inputs)
    used = threads or torch.get_num_threads()
    base = samples[0]
    results = []
    for other in samples[1:]:
        ratios = [b / a for b, a in zip(base, other)]
        low, high = median_interval(ratios)
        results.append(Speedup(timing(base), timing(other), statistics.median(ratios), low,
                               high, used, batch_size(example_inputs)))
    return results


def median_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """A distribution-free confidence interval for the median: the order statistics the
    binomial distribution puts around the middle (normal approximation, as in most texts)."""
    ordered = sorted(values)
    n = len(ordered)
    z = statistics.NormalDist().inv_cdf(0.5 + confidence / 2)
    half_width = z * math.sqrt(n) / 2
    lower = max(0, math.floor(n / 2 - half_width) - 1)
    upper = min(n - 1, math.ceil(n / 2 + half_width))
    return ordered[lower], ordered[upper]


def batch_size(example_inputs: Any) -> int | None:
    """The first dim of the first tensor in the inputs, taken as the batch."""
    stack = [example_inputs]
    while stack:
        item = stack.pop(0)
        if isinstance(item, torch.Tensor):
            return int(item.shape[0]) if item.dim() else None
        if isinstance(item, dict):
            stack = list(item.values()) + stack
        elif isinstance(item, (list, tuple)):
            stack = list(item) + stack
    return None


@contextmanager
def fixed_threads(threads: int | None) -> Iterator[int]:
    """Run with ``threads`` intra-op threads (default: as set now), restored afterwards."""
    previous = torch.get_num_threads()
    if threads is not None and threads < 1:
        raise ConfigError(f"threads={threads}: give a positive number of threads")
    torch.set_num_threads(threads or previous)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(previous)


@contextmanager
def _all_evaluating(models: Sequence[nn.Module]) -> Iterator[None]:
    with ExitStack() as stack:
        for model in models:
            stack.enter_context(evaluating(model))
        yield


def _calls_per_sample(model: nn.Module, example_inputs: Any, warmup: int) -> int:
    """Warm the model up; enough calls per sample that one sample takes a millisecond."""
    for _ in range(max(1, warmup)):
        seconds = _time_calls(model, example_inputs, 1)
    return max(1, math.ceil(1e-3 / max(seconds, 1e-7)))


def _time_calls(model: nn.Module, example_inputs: Any, calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        call_model(model, example_inputs)
    return (time.perf_counter() - started) / calls
