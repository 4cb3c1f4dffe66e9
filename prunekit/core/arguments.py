"""Checks on what ``pk.prune`` is given, made before anything runs: a mistake is one clear
``ConfigError`` naming the argument, and the model is not touched."""

from __future__ import annotations

import functools
import inspect
import math
import warnings
from typing import Any, Callable, Iterable, TypeVar

import torch
from torch import nn

from ..errors import ConfigError
from .batches import check_batch_form, split_batch
from .calls import call_model, evaluating, named_tensors


def check_model(model: Any) -> None:
    """A float ``nn.Module`` with parameters: quantized modules keep their weights packed,
    out of prunekit's reach, so a quantized model would "prune" to nothing."""
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(model, torch.jit.ScriptModule):
        raise ConfigError(f"model is a TorchScript module ({type(model).__name__}), whose code "
                          f"prunekit cannot trace or change; prune the Python model it was "
                          f"scripted from, then script the pruned one")
    on_meta = next((name for name, t in (*model.named_parameters(), *model.named_buffers())
                    if t.is_meta), None)
    if on_meta is not None:
        raise ConfigError(f"model: {on_meta!r} is on the meta device (a shape with no values), "
                          f"so nothing can be scored or checked; load the weights first "
                          f"(model.to_empty(device='cpu') and load_state_dict), or prune a "
                          f"checkpoint bigger than memory with pk.prune_streamed")
    quantized = [name for name, module in model.named_modules()
                 if ".quantized" in type(module).__module__]
    if quantized:
        raise ConfigError(f"model: module {quantized[0]!r} is quantized "
                          f"({type(dict(model.named_modules())[quantized[0]]).__name__}); "
                          f"prune the float model, then quantize it")
    if next(model.parameters(), None) is None:
        raise ConfigError("model has no parameters, so there is nothing to prune")


def check_example_inputs(example_inputs: Any, what: str = "example_inputs") -> None:
    """At least one sample: an empty batch runs but compares nothing."""
    for name, tensor in named_tensors(example_inputs, what):
        if tensor.numel() == 0:
            raise ConfigError(f"{name} is empty (shape {tuple(tensor.shape)}); give at least "
                              f"one sample, since an empty batch verifies nothing")


def check_whole(value: Any, name: str, minimum: int = 1, meaning: str = "") -> None:
    """``value`` is a whole number of at least ``minimum`` (a bool is not): every count an
    option takes is checked here, so every such mistake reads the same."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        wanted = "a positive integer" if minimum == 1 else f"a whole number >= {minimum}"
        raise ConfigError(f"{name} must be {wanted}{meaning}, got {value!r}")


def check_number(value: Any, name: str, minimum: float = 0.0, *, above: bool = False,
                 below: float | None = None, wanted: str = "", meaning: str = "") -> None:
    """``value`` is a finite number ``>= minimum`` (``> minimum`` with ``above``) and, with
    ``below``, ``< below``; NaN and a bool are refused. ``wanted`` replaces the default
    description ("a number >= 0") in the message."""
    number = not isinstance(value, bool) and isinstance(value, (int, float))
    fits = number and math.isfinite(value) and (value > minimum if above else value >= minimum)
    if not fits or (below is not None and not value < below):
        default = (f"a number in [{minimum:g}, {below:g})" if below is not None
                   else f"a number {'>' if above else '>='} {minimum:g}")
        raise ConfigError(f"{name} must be {wanted or default}{meaning}, got {value!r}")


def check_tolerance(tolerance: Any) -> None:
    check_number(tolerance, "tolerance", meaning=" (a fraction of each output's scale)")


def check_optimizer(optimizer: Any) -> None:
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise ConfigError(f"optimizer must be a torch.optim.Optimizer, got "
                          f"{type(optimizer).__name__}")


def checked_data(model: nn.Module, data: Iterable | None,
                 example_inputs: Any = None) -> list | Iterable | None:
    """``data`` ready to be read several times (a one-shot iterator is read into a list once),
    after checking that it has batches, that the first cannot be misread (``pk.Batch``) and
    that the model runs on it."""
    if data is None:
        return None
    if isinstance(data, (torch.Tensor, str, bytes)) or not isinstance(data, Iterable):
        raise ConfigError(f"data must be an iterable of batches (a list or a DataLoader), "
                          f"got {type(data).__name__}; for one batch give [batch]")
    if iter(data) is data:  # a generator would be spent by its first use
        data = list(data)
    first = next(iter(data), None)
    if first is None:
        raise ConfigError("data has no batches; give at least one, or leave data out")
    check_batch_form(first, example_inputs)
    inputs = split_batch(first)[0]
    check_example_inputs(inputs, "data's first batch")
    try:
        with evaluating(model), torch.no_grad():
            call_model(model, inputs)
    except Exception as error:
        raise ConfigError(f"data: the model does not run on the first batch "
                          f"({type(error).__name__}: {error}); each batch must be the "
                          f"model's inputs, as example_inputs are, an (inputs, targets) "
                          f"pair, or a pk.Batch(inputs, targets)") from error
    return data


F = TypeVar("F", bound=Callable[..., Any])


def keyword_only(function: F) -> F:
    """Keep calls that passed keyword-only options by position working, with a
    ``DeprecationWarning`` naming the keyword to use: ``verify(m, x, plan, 1e-3)`` was
    allowed before ``tolerance`` became keyword-only as it is in ``pk.prune``."""
    parameters = inspect.signature(function).parameters.values()
    positional = sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in parameters)
    keywords = [p.name for p in parameters if p.kind is p.KEYWORD_ONLY]

    @functools.wraps(function)
    def call(*args: Any, **kwargs: Any) -> Any:
        if len(args) > positional:
            extra = args[positional:]
            if len(extra) > len(keywords):
                raise TypeError(f"{function.__name__}() takes {positional} positional "
                                f"arguments but {len(args)} were given")
            named = dict(zip(keywords, extra))
            warnings.warn(f"{function.__name__}: pass {', '.join(f'{k}=' for k in named)} by "
                          f"keyword; passing it by position is deprecated", DeprecationWarning,
                          stacklevel=2)
            clash = sorted(set(named) & set(kwargs))
            if clash:
                raise TypeError(f"{function.__name__}() got multiple values for {clash[0]!r}")
            args, kwargs = args[:positional], {**named, **kwargs}
        return function(*args, **kwargs)

    return call  # type: ignore[return-value]
