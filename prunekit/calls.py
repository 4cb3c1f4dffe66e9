"""Calling a model: the usual input conventions, walking what it returns, and eval mode
without losing the modes its modules were in."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch
from torch import nn


@contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode inside the block; afterwards (error or not) every module is back in its own
    mode, so a model with some submodules in train mode and others in eval keeps that mix.
    Modules that appeared inside the block (a replaced attention layer) take the model's
    mode."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        model.train(modes[0][1])
        for module, training in modes:
            module.training = training


def iter_tensors(obj: Any) -> Iterator[torch.Tensor]:
    """Every tensor inside nested tuples, lists, dicts and dataclass-like outputs."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for value in obj.values():
            yield from iter_tensors(value)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            yield from iter_tensors(value)


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
