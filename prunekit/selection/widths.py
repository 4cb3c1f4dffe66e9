"""Widths the CPU kernels run fast, found by timing: every convolution and linear layer a group
touches is timed at the widths a latency target considers, on this machine, and the times are
kept in a table on disk so each layer shape is measured once.

Why measure: the time of a layer is a staircase in its channel count, and where the steps fall
depends on the layer's shape, the CPU and the kernel library (blocks of 8 channels on AVX2,
16 on AVX-512; an input channel past a block edge can cost a whole block, an output channel
sometimes nothing). ``benchmarks/results/fast_widths.md`` measures what choosing by the table
gives.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.calls import call_model, evaluating
from ..graph.dependency import DependencyGraph, Group
from ..measure.latency import fixed_threads, time_models

CACHE_ENV = "PRUNEKIT_CACHE_DIR"  # where the table lives; ~/.cache/prunekit by default
WINDOW = 16  # widths considered: the one the budget asks for and up to 15 more channels
STEP = 4  # besides that width, the multiples of this inside the window
TOLERANCE = 0.03  # a wider width counts as fast when within 3% of the fastest time


@dataclass(frozen=True)
class LayerCall:
    """One convolution or linear call as the model ran it, and which of its dims a group
    sets: ``"out"``, ``"in"``, or ``"both"`` for a depthwise convolution."""

    kind: str  # "conv2d" or "linear"
    weight_shape: tuple[int, ...]
    input_shape: tuple[int, ...]
    dim: str
    stride: tuple[int, ...] = ()
    padding: Any = ()
    dilation: tuple[int, ...] = ()
    groups: int = 1

    def key(self) -> str:
        """The table's key: everything that decides the call's time except the width."""
        return (f"{self.kind} {self.dim} w{list(self.weight_shape)} x{list(self.input_shape)} "
                f"s{list(self.stride)} p{self.padding} d{list(self.dilation)} g{self.groups}")

    def at(self, width: int) -> tuple[nn.Module, torch.Tensor]:
        """A layer of this shape with the group's dim at ``width``, and an input for it."""
        shape = list(self.input_shape)
        if self.kind == "linear":
            out_features, in_features = self.weight_shape
            if self.dim == "out":
                out_features = width
            else:
                in_features = shape[-1] = width
            return nn.Linear(in_features, out_features), torch.randn(shape)
        out_channels = self.weight_shape[0]
        in_channels, groups = self.weight_shape[1] * self.groups, self.groups
        if self.dim in ("out", "both"):
            out_channels = width
        if self.dim in ("in", "both"):
            in_channels = shape[1] = width
        if self.dim == "both":
            groups = width
        layer = nn.Conv2d(in_channels, out_channels, tuple(self.weight_shape[2:]),
                          stride=self.stride, padding=self.padding, dilation=self.dilation,
                          groups=groups)
        return layer, torch.randn(shape)


def layer_calls(model: nn.Module, example_inputs: Any, graph: DependencyGraph,
                groups: list[Group]) -> dict[int, list[LayerCall]]:
    """``{group axis: the convolution and linear calls whose channels it sets}``, from one
    forward pass. A layer whose pruned dim is not exactly the group (a concatenation feeding
    it, a flatten before it) and convolutions grouped other than depthwise are left out: their
    time at a width is not the time of one such call."""
    inputs: dict[str, list[tuple[int, ...]]] = {}
    modules = {name: module for name, module in model.named_modules()
               if type(module) in (nn.Conv2d, nn.Linear)}

    def hook(name):
        def record(module, args):
            if args and isinstance(args[0], torch.Tensor):
                inputs.setdefault(name, []).append(tuple(args[0].shape))
        return record

    handles = [module.register_forward_pre_hook(hook(name)) for name, module in modules.items()]
    try:
        with torch.inference_mode(), evaluating(model):
            call_model(model, example_inputs)
    finally:
        for handle in handles:
            handle.remove()

    calls: dict[int, list[LayerCall]] = {}
    for group in groups:
        found = []
        for member in group.members:
            owner, _, leaf = member.name.rpartition(".")
            module = modules.get(owner)
            if (module is None or leaf != "weight" or member.role not in ("in", "out")
                    or member.slot.tensor.shape[member.dim] != group.size):
                continue
            dim = member.role
            if isinstance(module, nn.Conv2d) and module.groups > 1:
                if not module.groups == module.in_channels == module.out_channels:
                    continue
                dim = "both"
            for shape in inputs.get(owner, []):
                if isinstance(module, nn.Conv2d):
                    found.append(LayerCall("conv2d", tuple(module.weight.shape), shape, dim,
                                           module.stride, module.padding, module.dilation,
                                           module.groups))
                else:
                    found.append(LayerCall("linear", tuple(module.weight.shape), shape, dim))
        calls[group.axis] = list(dict.fromkeys(found))  # a depthwise conv counts once
    return calls


def machine() -> str:
    """What the table's times hold for: the processor, torch's version and the threads."""
    processor = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            processor = next((line.split(":", 1)[1].strip() for line in cpuinfo
                              if line.startswith("model name")), processor)
    except OSError:
        pass
    return f"{processor}; torch {torch.__version__}; {torch.get_num_threads()} threads"


def default_path() -> Path:
    root = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "prunekit"
    return Path(root) / "fast_widths.json"


class WidthTable:
    """Milliseconds of each layer call at each width, on this machine, read from and written
    back to a JSON file (``$PRUNEKIT_CACHE_DIR/fast_widths.json``, else under
    ``~/.cache/prunekit``), one section per processor, torch version and thread count."""

    def __init__(self, path: Path | str | None = None, threads: int | None = None):
        self.path = Path(path) if path is not None else default_path()
        self.threads = threads
        with fixed_threads(threads):
            self.machine = machine()
        self.times: dict[str, dict[str, float]] = self._read().get(self.machine, {})
        self.used: set[str] = set()  # layer shapes looked up
        self.measured: set[str] = set()  # of those, timed now (the rest came from the file)

    def _read(self) -> dict[str, Any]:
        try:
            content = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return content if isinstance(content, dict) else {}

    def milliseconds(self, call: LayerCall, widths: list[int]) -> dict[int, float]:
        """The call's median time at every width, timing those the table lacks together,
        interleaved."""
        known = self.times.setdefault(call.key(), {})
        self.used.add(call.key())
        missing = [w for w in widths if str(w) not in known]
        if missing:
            layers = [call.at(w) for w in missing]
            samples = time_models([layer for layer, _ in layers], None, threads=self.threads,
                                  inputs=[x for _, x in layers], warmup=2, min_rounds=5,
                                  min_time=0.05)
            for width, seconds in zip(missing, samples):
                known[str(width)] = statistics.median(seconds) * 1e3
            self.measured.add(call.key())
        return {w: known[str(w)] for w in widths}

    def fast_width(self, calls: list[LayerCall], wanted: int, size: int) -> int:
        """Of ``wanted`` and the multiples of ``STEP`` up to ``wanted + WINDOW - 1`` (at most
        ``size``), the widest whose summed time over ``calls`` is within ``TOLERANCE`` of the
        fastest: the channels a layer's kernel would spend the time on anyway are kept."""
        if not calls or wanted >= size:
            return min(wanted, size)
        widths = [wanted] + [w for w in range(wanted + 1, min(size, wanted + WINDOW - 1) + 1)
                             if w % STEP == 0 or w == size]
        totals = {w: 0.0 for w in widths}
        for call in calls:
            for width, ms in self.milliseconds(call, widths).items():
                totals[width] += ms
        fastest = min(totals.values())
        return max(w for w in widths if totals[w] <= fastest * (1 + TOLERANCE))

    def save(self) -> None:
        """Merge this table's times into the file (written whole, then moved into place, so a
        reader never sees half a file); a file that cannot be written is skipped silently:
        the table is a cache."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            content = self._read()
            content.setdefault(self.machine, {}).update(self.times)
            with tempfile.NamedTemporaryFile("w", dir=self.path.parent, delete=False,
                                             suffix=".tmp") as handle:
                json.dump(content, handle)
            os.replace(handle.name, self.path)
        except OSError:
            pass
