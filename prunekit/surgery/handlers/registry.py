"""The handler registry: which function fixes a module type's size attributes after its
tensors are sliced (the handlers themselves live beside this file, one file per family)."""

from __future__ import annotations

from typing import Callable

from torch import nn

from ...errors import ConfigError

_HANDLERS: dict[type | str, Callable[[nn.Module], None]] = {}


def register(*types: type | str):
    """Register a handler for layer types, given as classes or, for layers of libraries
    that are optional here, as ``"module.ClassName"`` strings."""
    def wrap(fn: Callable[[nn.Module], None]):
        for kind in types:
            _HANDLERS[kind] = fn
        return fn

    return wrap


def register_handler(module_type: type | str, sync: Callable[[nn.Module], None]) -> None:
    """After pruning, ``sync(module)`` runs on every changed module of ``module_type`` (and its
    subclasses) to make its size attributes match its tensors.

    Example:
        >>> pk.register_handler(MyConv, lambda m: setattr(m, "channels", m.weight.shape[0]))
    """
    if not (isinstance(module_type, (type, str))) or not callable(sync):
        raise ConfigError(f"register_handler(module_type, sync) takes a module class and a "
                          f"function of the module; got {module_type!r} and {sync!r}")
    _HANDLERS[module_type] = sync


def sync_attributes(module: nn.Module) -> None:
    """Run the handler of the closest registered type in the module's class hierarchy."""
    for kind in type(module).__mro__:
        handler = _HANDLERS.get(kind) or _HANDLERS.get(f"{kind.__module__}.{kind.__qualname__}")
        if handler is not None:
            handler(module)
            return
