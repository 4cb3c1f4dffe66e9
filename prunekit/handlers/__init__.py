"""Per-module-type handlers: after a module's tensors are sliced, fix its size attributes.

Adding a layer type means registering one function here (or in a new file beside these):
``@register(MyLayer) def sync(module): ...`` sets the attributes that describe its shapes.
"""

from __future__ import annotations

from typing import Callable

from torch import nn

_HANDLERS: dict[type | str, Callable[[nn.Module], None]] = {}


def register(*types: type | str):
    """Register a handler for layer types, given as classes or, for layers of libraries
    that are optional here, as ``"module.ClassName"`` strings."""
    def wrap(fn: Callable[[nn.Module], None]):
        for kind in types:
            _HANDLERS[kind] = fn
        return fn

    return wrap


def sync_attributes(module: nn.Module) -> None:
    """Run the handler of the closest registered type in the module's class hierarchy."""
    for kind in type(module).__mro__:
        handler = _HANDLERS.get(kind) or _HANDLERS.get(f"{kind.__module__}.{kind.__qualname__}")
        if handler is not None:
            handler(module)
            return


from . import attention, conv, linear, norm  # noqa: E402,F401  (registers the built-in handlers)
