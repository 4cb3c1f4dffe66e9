"""The coupling-rule registry and what a rule works with.

A rule is ``rule(ctx, args, kwargs, out)``: it reads the inputs' dim specs with
``ctx.specs(t)``, ties dims with ``ctx.unify``, marks dims that must not change with
``ctx.fix`` and records the output's specs with ``ctx.set`` (``TraceContext`` in
``graph/trace.py`` is the context; ``ctx.axes`` is the ``AxisTable``). Rules are registered by
name with ``@rule(...)`` and resolved once to the real function objects in ``torch``,
``torch.Tensor`` and ``torch.nn.functional``; a user's own op or ``autograd.Function`` is
registered with ``register_rule``. An op that resolves to no rule is handled as unknown by the
tracer.
"""

from __future__ import annotations

import re
from typing import Any, Callable

import torch
import torch.nn.functional as F

from ...errors import ConfigError
from ..axes import NotRepresentable, Spec

RULES: dict[Callable, Callable] = {}
_NAMESPACES = (torch, torch.Tensor, F, torch._C._nn, torch.special)


def rule(*names: str):
    """Register a rule for every function or method called ``name`` in torch's namespaces."""

    def register(fn: Callable) -> Callable:
        for name in names:
            for namespace in _NAMESPACES:
                func = getattr(namespace, name, None)
                if callable(func):
                    RULES[func] = fn
        return fn

    return register


def register_rule(op: Callable | str, coupling: Callable) -> None:
    """Teach the tracer how ``op`` couples the channels of its inputs and outputs.

    The tracer sees every torch function, tensor method and custom operator
    (``torch.library.custom_op``, ``torch.ops.mylib.op``) a model calls; an op without a rule
    fixes the dims it touches. (A ``torch.autograd.Function`` needs no rule: the torch ops in
    its ``forward`` are traced one by one.)

    Args:
        op: the function, method or custom operator the model calls, or a name looked up in
            ``torch``, ``torch.Tensor`` and ``torch.nn.functional``.
        coupling: ``coupling(ctx, args, kwargs, out)``; see the module docstring. For an
            elementwise op, ``pk.rules.pointwise`` is the rule.

    Example:
        >>> pk.register_rule(torch.ops.mylib.fused_gelu, pk.rules.pointwise)
    """
    if not callable(coupling):
        raise ConfigError(f"register_rule: coupling must be a function (ctx, args, kwargs, "
                          f"out), got {coupling!r}")
    if isinstance(op, str):
        found = [getattr(ns, op) for ns in _NAMESPACES if callable(getattr(ns, op, None))]
        if not found:
            raise ConfigError(f"register_rule: no torch function or method is called {op!r}; "
                              f"pass the function object itself")
    elif callable(op):
        # a custom operator is seen as its packet (torch.ops.lib.op) or one overload of it
        found = [op] + [getattr(op, name) for name in ("_opoverload", "default", "overloadpacket")
                        if getattr(op, name, None) is not None]
        found += [f.overloadpacket for f in found if getattr(f, "overloadpacket", None)]
    else:
        raise ConfigError(f"register_rule: op must be a function, method or custom operator, "
                          f"got {op!r}")
    for func in found:
        RULES[func] = coupling


def arg(args: tuple, kwargs: dict, index: int, name: str, default: Any = None) -> Any:
    if name in kwargs:
        return kwargs[name]
    return args[index] if len(args) > index else default


def tensors_of(obj: Any) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for item in obj for t in tensors_of(item)]
    return []


def dims_of(value: Any, ndim: int) -> list[int]:
    if value is None:
        return list(range(ndim))
    if isinstance(value, int):
        value = [value]
    return [d % ndim for d in value]


# -- pointwise ---------------------------------------------------------------------------------
def broadcast(ctx, tensors: list[torch.Tensor], out: torch.Tensor) -> None:
    """Tie the dims that line up (right-aligned) in a broadcasting op; size-1 dims stay free."""
    specs: list[Spec | None] = [None] * out.dim()
    for tensor in tensors:
        offset = out.dim() - tensor.dim()
        if offset < 0:
            raise NotRepresentable("input has more dims than the output")
        for d, spec in enumerate(ctx.specs(tensor)):
            size = out.shape[offset + d]
            if tensor.shape[d] != size or size == 1:
                continue
            if specs[offset + d] is None:
                specs[offset + d] = spec
            else:
                ctx.unify(specs[offset + d], spec)
    ctx.set(out, [s if s is not None else ctx.axes.fresh_spec(out.shape[d], "broadcast")
                  for d, s in enumerate(specs)])


def attributes_equal_to(module, size: int) -> list[str]:
    """The module's own integer attributes (``split_size``) whose value is ``size``; the
    ones named for splitting when there are several."""
    names = [name for name, value in int_attributes(module).items() if value == size]
    return [name for name in names if "split" in name] or names


# integer attributes that say where a module is, not how wide: an attention layer's
# ``layer_idx`` of 2 beside two heads is a coincidence, and updating it breaks the cache
POSITION_NAME = re.compile(r"(^|_)(idx|index|id|number|position)$")


def int_attributes(module) -> dict[str, int]:
    """A module's public integer attributes that may be counts: what a view or split may be
    sized by (not its position, ``layer_idx``)."""
    if module is None:
        return {}
    return {name: value for name, value in vars(module).items()
            if not name.startswith("_") and type(value) is int
            and not POSITION_NAME.search(name)}
