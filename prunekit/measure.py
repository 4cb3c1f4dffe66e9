"""Honest numbers: parameters, FLOPs (``torch.utils.flop_counter``'s formulas) and measured
latency (``latency``: median and quartiles over interleaved rounds)."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, Iterator

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry, shape_wrapper

from .calls import call_model, evaluating, named_tensors, output_tensors
from .latency import Timing, measure_latency


@dataclass
class Measurement:
    params: int
    flops: int
    latency: Timing | None = None  # median and quartiles over repeated runs, batch as given

    @property
    def latency_ms(self) -> float | None:
        return None if self.latency is None else self.latency.median_ms

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, example_inputs: Any) -> int:
    return flops_and_shapes(model, example_inputs)[0]


def flops_and_shapes(model: nn.Module, example_inputs: Any) -> tuple[int, list[tuple[int, ...]]]:
    """FLOPs of one eval-mode forward pass, and the shapes of every tensor it returns."""
    flops, outputs = flops_and_outputs(model, example_inputs)
    return flops, [tuple(t.shape) for t in outputs.values()]


def flops_and_outputs(model: nn.Module, example_inputs: Any
                      ) -> tuple[int, dict[str, torch.Tensor]]:
    """FLOPs of one eval-mode forward pass, and every tensor it returns (detached), by where
    it sits in the output (``named_tensors``)."""
    with evaluating(model), torch.no_grad(), without_fused_attention(), FlopCount() as counter:
        output = call_model(model, example_inputs)
        output_tensors(output)  # refuses an output with no tensors in it
        outputs = {name: t.detach() for name, t in named_tensors(output)}
    return counter.flops, outputs


@contextmanager
def without_fused_attention() -> Iterator[None]:
    """``nn.MultiheadAttention`` and ``nn.TransformerEncoderLayer`` off their fused inference
    path, whose op has no FLOP formula: the count must not depend on it. (Turning autograd
    on would do it too, at the cost of recording a graph in every counted pass.)"""
    enabled = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(enabled)


class FlopCount(TorchDispatchMode):
    """FLOPs of the ops run inside it, by ``torch.utils.flop_counter``'s formulas (matmuls,
    convolutions, attention). ``FlopCounterMode`` counts the same ops but also tracks the
    module of every call and decomposes every op it has no formula for into smaller ones,
    which made a counted forward pass about twice as slow as this; the ops those
    decompositions run (batch norm, pointwise) have no formula either."""

    def __init__(self) -> None:
        super().__init__()
        self.flops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is None:
            return out
        if getattr(formula, "__code__", None) is _ON_SHAPES:  # see _shapes
            self.flops += int(formula.__wrapped__(*_shapes(args), **_shapes(kwargs),
                                                  out_shape=_shapes(out)))
        else:  # a formula that reads the tensors themselves
            self.flops += int(formula(*args, **kwargs, out_val=out))
        return out


# the wrapper flop_counter puts around a formula that takes shapes (the code all of them share)
_ON_SHAPES = shape_wrapper(lambda: None).__code__


def _shapes(value: Any) -> Any:
    """``value`` with every tensor replaced by its shape, in the lists, tuples and dicts that
    op arguments come in: what ``flop_counter``'s formula wrapper passes to a formula, made
    without its generic tree walk (``pytree``), which made the formulas cost more than the
    dispatch to this mode itself."""
    if isinstance(value, torch.Tensor):
        return value.shape
    if isinstance(value, list):
        return [_shapes(v) for v in value]
    if isinstance(value, tuple) and not isinstance(value, torch.Size):
        shapes = [_shapes(v) for v in value]
        return type(value)(*shapes) if hasattr(value, "_fields") else tuple(shapes)
    if isinstance(value, dict):
        return {key: _shapes(v) for key, v in value.items()}
    return value


def size_and_outputs(model: nn.Module, example_inputs: Any
                     ) -> tuple[Measurement, dict[str, torch.Tensor]]:
    """Parameters and FLOPs of ``model``, and every tensor one forward pass returns: what a
    check reads from the pruned model, measured in the forward pass it makes anyway."""
    flops, outputs = flops_and_outputs(model, example_inputs)
    return Measurement(count_params(model), flops), outputs


def measure(model: nn.Module, example_inputs: Any, latency: bool = True, *,
            threads: int | None = None, min_time: float = 0.5) -> Measurement:
    """Parameters, FLOPs and (optionally) latency of ``model`` on ``example_inputs``: the
    median and quartiles of a forward pass over repeated rounds after a warm-up, on
    ``threads`` threads (default: as set now). To compare two models, time them together
    with ``pk.compare_latency``: two separate measurements also measure the machine.

    Example:
        >>> pk.measure(model, torch.randn(1, 3, 224, 224))
        Measurement(params=11689512, flops=3638525952, latency=Timing(median_ms=...))
    """
    return Measurement(
        params=count_params(model),
        flops=count_flops(model, example_inputs),
        latency=(measure_latency(model, example_inputs, threads=threads, min_time=min_time)
                 if latency else None))
