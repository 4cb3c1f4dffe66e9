"""Calling a model: the usual input conventions, walking what it returns, comparing two
runs' outputs, and eval mode without losing the modes its modules were in."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Mapping
from contextlib import contextmanager
from typing import Any, Iterator

import torch
from torch import nn
from torch.utils._pytree import tree_map

from ..errors import TraceError


@contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode inside the block; afterwards (error or not) every module is back in its own
    mode, so a model with some submodules in train mode and others in eval keeps that mix.
    Modules that appeared inside the block (a replaced attention layer) take the model's
    mode.

    A model already wholly in eval mode (every pass inside ``pk.prune``, which nests this
    a dozen times) is left as it is: ``model.eval()`` and ``model.train()`` walk every
    module through ``nn.Module.__setattr__``, which cost a fifth of a whole prune of
    EfficientNet-B0; only flags that changed inside the block are set back."""
    modes = [(module, module.training) for module in model.modules()]
    top = modes[0][1]
    some_training = any(training for _, training in modes)
    if some_training:
        model.eval()
    try:
        yield model
    finally:
        if some_training:
            model.train(top)  # through the modules' own train(), as eval() went
        own = {id(module): training for module, training in modes}
        for module in model.modules():
            training = own.get(id(module), top)
            if module.training != training:
                module.training = training


def copied_inputs(inputs: Any) -> Any:
    """``inputs`` with every tensor copied: a forward that writes into its input then writes
    into the copy, and the next run (the pruned model's, the caller's) sees the inputs as
    they were."""
    return tree_map(lambda t: t.clone() if isinstance(t, torch.Tensor) else t, inputs)


def random_like(inputs: Any, seed: int = 0) -> Any:
    """``inputs`` with every floating-point tensor replaced by standard normal values of its
    shape and dtype (seeded); other tensors (token ids, masks) kept."""
    generator = torch.Generator().manual_seed(seed)
    return tree_map(lambda t: torch.randn(t.shape, generator=generator).to(t)
                    if isinstance(t, torch.Tensor) and t.is_floating_point() else t, inputs)


def iter_tensors(obj: Any) -> Iterator[torch.Tensor]:
    """Every tensor inside what a model returns: nested tuples and named tuples, lists, dicts
    (a Hugging Face ``ModelOutput``), dataclasses and plain objects holding tensors in their
    attributes, in a fixed order. Each object is visited once, so a cycle ends. A key/value
    cache is not walked (``_is_cache``)."""
    found: list[torch.Tensor] = []
    _collect(obj, set(), found)
    return iter(found)


_ATOMS = (str, bytes, int, float, complex, bool, nn.Module, type)


def _collect(obj: Any, seen: set[int], found: list[torch.Tensor]) -> None:
    """``_walk`` without the paths: the tracer walks every op's arguments this way, and
    building a path string for each of them cost more than the walk."""
    if isinstance(obj, torch.Tensor):
        found.append(obj)
        return
    if obj is None or isinstance(obj, _ATOMS) or id(obj) in seen or _is_cache(obj):
        return
    seen.add(id(obj))
    if isinstance(obj, Mapping):
        values = list(obj.values())
    elif isinstance(obj, (list, tuple)):
        values = obj
    elif dataclasses.is_dataclass(obj):
        values = [getattr(obj, f.name, None) for f in dataclasses.fields(obj)]
    elif hasattr(obj, "__dict__"):
        values = list(vars(obj).values())
    else:
        return
    for value in values:
        _collect(value, seen, found)


def named_tensors(obj: Any, path: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """``iter_tensors`` with where each tensor sits: ``[0]``, ``['logits']``, ``.boxes``
    (``"output"`` for a bare tensor)."""
    yield from _walk(obj, path, set())


def _walk(obj: Any, path: str, seen: set[int]) -> Iterator[tuple[str, torch.Tensor]]:
    if isinstance(obj, torch.Tensor):
        yield path or "output", obj
        return
    if obj is None or isinstance(obj, _ATOMS):
        return
    if id(obj) in seen or _is_cache(obj):
        return
    seen.add(id(obj))
    if isinstance(obj, Mapping):
        items = [(f"{path}[{key!r}]", value) for key, value in obj.items()]
    elif isinstance(obj, (list, tuple)):
        items = [(f"{path}[{i}]", value) for i, value in enumerate(obj)]
    elif dataclasses.is_dataclass(obj):
        items = [(f"{path}.{f.name}", getattr(obj, f.name, None))
                 for f in dataclasses.fields(obj)]
    elif hasattr(obj, "__dict__"):
        items = [(f"{path}.{key}", value) for key, value in vars(obj).items()]
    else:
        return
    for where, value in items:
        yield from _walk(value, where, seen)


def _is_cache(obj: Any) -> bool:
    """A Hugging Face key/value cache: state for the next call, whose sizes follow the pruned
    heads, not an output to keep or compare."""
    cache_utils = sys.modules.get("transformers.cache_utils")
    return cache_utils is not None and isinstance(obj, cache_utils.Cache)


def output_tensors(output: Any, who: str = "the model") -> list[torch.Tensor]:
    """Every tensor in a model's output; an output holding none cannot be protected or
    compared, so it is refused."""
    tensors = list(iter_tensors(output))
    if not tensors:
        raise TraceError(f"{who} returned a {type(output).__name__} holding no tensors that "
                         f"prunekit can find; return tensors in tuples, lists, dicts, "
                         f"dataclasses or attributes of an object")
    return tensors


def call_model(model: nn.Module, example_inputs: Any) -> Any:
    """Call ``model`` the usual way: tensor → model(x), tuple → model(*x), dict → model(**x)."""
    if isinstance(example_inputs, dict):
        return model(**example_inputs)
    if isinstance(example_inputs, (tuple, list)):
        return model(*example_inputs)
    return model(example_inputs)


def output_shapes(model: nn.Module, example_inputs: Any) -> list[tuple[int, ...]]:
    """The shapes of every tensor the model returns, in order (no autograd)."""
    with torch.no_grad():
        return [tuple(t.shape) for t in iter_tensors(call_model(model, example_inputs))]


def largest_difference(actual: list[torch.Tensor], expected: list[torch.Tensor]) -> float:
    """The largest difference over all outputs, each relative to its largest magnitude;
    a different count or shape of outputs is an infinite difference."""
    if len(actual) != len(expected):
        return float("inf")
    worst = 0.0
    for got, want in zip(actual, expected):
        if tuple(got.shape) != tuple(want.shape):
            return float("inf")
        if want.numel() == 0:
            continue
        got, want = got.float(), want.float()
        finite = want.isfinite()
        # NaN or Inf on one side only (or of another kind) is a mismatch, never "no
        # difference": max() over a NaN would pass it silently
        odd_got, odd_want = got[~finite], want[~finite]
        if not torch.equal(got.isfinite(), finite) or not torch.equal(
                odd_got.nan_to_num(0.0, 1.0, -1.0), odd_want.nan_to_num(0.0, 1.0, -1.0)):
            return float("inf")
        if not finite.any():
            continue
        got, want = got[finite], want[finite]
        scale = max(float(want.abs().max()), 1e-12)
        worst = max(worst, float((got - want).abs().max()) / scale)
    return worst


def outputs_on(model: nn.Module, inputs: list) -> list[list[torch.Tensor]]:
    """The model's output tensors on each of ``inputs``, copied (a later run may write into
    a buffer the model returned), without autograd."""
    with torch.no_grad():
        return [[t.detach().clone() for t in iter_tensors(call_model(model, x))]
                for x in inputs]


def largest_difference_on(actual: list[list[torch.Tensor]],
                          expected: list[list[torch.Tensor]]) -> float:
    """``largest_difference`` over several inputs' outputs (``outputs_on``): the worst."""
    return max(largest_difference(a, e) for a, e in zip(actual, expected))

