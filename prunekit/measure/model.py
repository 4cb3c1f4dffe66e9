"""Honest numbers: parameters, FLOPs (``torch.utils.flop_counter``'s formulas) and measured
latency (``latency``: median and quartiles over interleaved rounds)."""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, Iterator

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import conv_flop_count, flop_registry, mm_flop, shape_wrapper

from ..core.calls import call_model, evaluating, named_tensors, output_tensors
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

    def __str__(self) -> str:
        latency = (f", latency {self.latency} median (quartiles) over {self.latency.rounds} "
                   f"rounds" if self.latency is not None else "")
        return f"params {self.params:,}, FLOPs {self.flops:,}{latency}"


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
    with evaluating(model), torch.no_grad(), without_fused_attention(), \
            flop_counter(model) as counter:
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


class _AtenFlops(TorchDispatchMode):
    """FLOPs of the ATen ops run inside it, by ``torch.utils.flop_counter``'s formulas
    (matmuls, convolutions, attention). ``FlopCounterMode`` counts the same ops but also
    tracks the module of every call and decomposes every op it has no formula for into
    smaller ones, which made a counted forward pass about twice as slow as this; the ops
    those decompositions run (batch norm, pointwise) have no formula either."""

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


class FlopCount(TorchFunctionMode):
    """FLOPs of the ops run inside it, by ``torch.utils.flop_counter``'s formulas.

    A dispatch mode (``_AtenFlops``) sees every ATen op, but its Python call on each one
    made a counted forward pass 30-40% slower than a plain one on MobileNetV3 and
    EfficientNet, and entering it around single calls costs more still. So the count is
    taken one level up, on torch functions, which are fewer and cheaper to hook:

    - batched convolutions and linear layers (most of a network's calls that have FLOPs)
      are counted here, by the same formulas, from their shapes;
    - the functions in ``_NO_FLOPS`` (activations, normalisation, pooling, arithmetic,
      reshaping) reach no op with a formula and run as they are;
    - any other call runs under the dispatch mode, which counts the ATen ops inside it.

    Code that calls ATen without passing a Python torch function (TorchScript) is counted
    on the dispatch mode alone: see ``flop_counter``."""

    def __init__(self) -> None:
        super().__init__()
        self._aten = _AtenFlops()
        self._direct = 0  # counted here, without the dispatch mode

    @property
    def flops(self) -> int:
        return self._direct + self._aten.flops

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _NO_FLOPS:
            return func(*args, **kwargs)
        formula = _BY_SHAPES.get(func)
        if formula is not None and not kwargs and len(args) >= 2:
            applies, flops = formula
            x, weight = args[0], args[1]
            if (isinstance(x, torch.Tensor) and isinstance(weight, torch.Tensor)
                    and applies(x.dim(), weight.dim())):
                out = func(*args)
                self._direct += flops(x.shape, weight.shape, out.shape)
                return out
        with self._aten:
            return func(*args, **kwargs)


def _conv_flops(x: torch.Size, weight: torch.Size, out: torch.Size) -> int:
    return int(conv_flop_count(list(x), list(weight), list(out)))


def _linear_flops(x: torch.Size, weight: torch.Size, out: torch.Size) -> int:
    """What the matmul or addmm that ``linear`` runs on its inputs' rows counts."""
    rows = math.prod(x[:-1])
    return int(mm_flop((rows, x[-1]), (weight[1], weight[0])))


def _batched(x_dims: int, weight_dims: int) -> bool:  # (an unbatched input is unsqueezed)
    return x_dims == weight_dims


def _on_rows(x_dims: int, weight_dims: int) -> bool:  # (a vector runs as mv: no formula)
    return x_dims >= 2 and weight_dims == 2


# torch function: (whether the shape formula applies to these inputs, the formula)
_BY_SHAPES = {torch.conv1d: (_batched, _conv_flops), torch.conv2d: (_batched, _conv_flops),
              torch.conv3d: (_batched, _conv_flops),
              torch._C._nn.linear: (_on_rows, _linear_flops)}


def _no_flop_functions() -> frozenset[Any]:
    """The torch functions, by identity, that reach no ATen op with a FLOP formula."""
    names = """relu relu_ relu6 leaky_relu leaky_relu_ gelu silu silu_ mish sigmoid sigmoid_
        tanh tanh_ hardswish hardswish_ hardsigmoid hardsigmoid_ hardtanh hardtanh_ elu elu_
        selu softplus softmax log_softmax dropout dropout_ batch_norm layer_norm group_norm
        instance_norm max_pool1d max_pool2d max_pool3d avg_pool1d avg_pool2d avg_pool3d
        adaptive_avg_pool1d adaptive_avg_pool2d adaptive_avg_pool3d adaptive_max_pool1d
        adaptive_max_pool2d add add_ sub sub_ mul mul_ div div_ neg clamp clamp_ abs sqrt
        rsqrt exp pow mean sum __add__ __iadd__ __radd__ __sub__ __isub__ __rsub__ __mul__
        __imul__ __rmul__ __truediv__ __itruediv__ __rtruediv__ __neg__ __pow__ cat concat
        stack flatten view reshape permute transpose contiguous chunk split squeeze
        unsqueeze expand expand_as repeat narrow select __getitem__ size dim to float
        type_as clone detach embedding gather where masked_fill cos sin tensor arange zeros
        ones full empty _set_grad_enabled
        """.split()
    spaces = (torch, torch.Tensor, torch.nn.functional, torch._C._nn, torch._C)
    found = [getattr(space, name, None) for space in spaces for name in names]
    # reading a tensor's properties (x.shape, x.dtype, x.device: many per transformer block)
    properties = [value.__get__ for value in vars(torch._C.TensorBase).values()
                  if type(value).__name__ == "getset_descriptor"]
    return frozenset(f for f in found + properties if f is not None)


_NO_FLOPS = _no_flop_functions()


def calls_aten_outside_python(model: nn.Module) -> bool:
    """Whether some of ``model`` runs where no Python torch function is called: TorchScript
    (whose ops only a dispatch mode sees)."""
    return any(isinstance(m, torch.jit.ScriptModule) for m in model.modules())


def flop_counter(model: nn.Module) -> FlopCount | _AtenFlops:
    """The counter for a forward pass of ``model`` (both read out as ``.flops``): on torch
    functions, unless some of it runs where only ATen ops are seen."""
    return _AtenFlops() if calls_aten_outside_python(model) else FlopCount()


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
