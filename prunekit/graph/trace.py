"""Record one forward pass: every op that ran, and how it ties the channels of its tensors.

The tracer is a ``TorchFunctionMode``: it sees every torch function, tensor method and
``torch.nn.functional`` call with the real tensors, so Python control flow, keyword or dict
inputs, frozen parameters and ``torch.no_grad()`` all just work. For each op it looks up a
coupling rule (``graph/rules.py``) that describes the output dims in terms of the input dims.
An op without a rule is never treated as elementwise: every dim it touches is marked unprunable
and the op is listed in ``TraceResult.unknown_ops`` (or, with ``strict=True``, raises).
"""

from __future__ import annotations

import re
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ..core.calls import call_model, evaluating, iter_tensors, output_tensors
from ..errors import TraceError, UnsupportedOpError
from .axes import AxisTable, NotRepresentable, Spec
from .rules import RULES
from .rules.base import int_attributes


@dataclass
class TensorSlot:
    """A parameter or buffer seen during the trace: where it lives and its dims' channels."""

    names: list[str]  # every qualified name it is reachable by (tied weights have several)
    kind: str  # "parameter" or "buffer"
    tensor: torch.Tensor
    specs: list[Spec]
    roles: dict[int, str] = field(default_factory=dict)  # dim -> "out" | "in" | "norm"

    @property
    def name(self) -> str:
        return self.names[0]


@dataclass
class AttributeSlot:
    """An integer attribute that counts channels of an axis (``groups``, ``num_heads`` …)."""

    module: str
    attribute: str
    spec: Spec


@dataclass
class AttributeCandidates:
    """An attribute whose value equals the size of several dims of one view: which of them it
    counts is decided once the graph knows which dims can be pruned at all."""

    module: str
    attribute: str
    specs: list[Spec]
    # or "size read": weaker evidence, used only where no view sized it; or a view's fused
    # q/k/v of one head, a multiple of the head size (marks heads, never binds)
    seen_in: str = "view"


@dataclass
class UnknownOp:
    op: str
    module: str


@dataclass
class ModuleOutput:
    """The tensor one call of a module returned, and its dims' channels: where data-driven
    criteria read activations."""

    module: str
    call: int  # 0 for the module's first call in a forward pass, 1 for its second …
    specs: list[Spec]


@dataclass
class TraceResult:
    axes: AxisTable
    slots: list[TensorSlot]
    attributes: list[AttributeSlot]
    attribute_candidates: list[AttributeCandidates]
    unknown_ops: list[UnknownOp]
    module_outputs: list[ModuleOutput] = field(default_factory=list)
    # ops that choose by order (topk, argmax …): "Tensor.topk in model.28"
    selections: list[str] = field(default_factory=list)


def op_name(func: Callable) -> str:
    if isinstance(func, (torch._ops.OpOverload, torch._ops.OpOverloadPacket)):
        return str(func)  # a custom operator: "mylib.fused_gelu"
    name = getattr(func, "__qualname__", None) or getattr(func, "__name__", None) or repr(func)
    return name.replace("_VariableFunctionsClass.", "torch.").replace("TensorBase.", "Tensor.")


class TraceContext:
    """What a coupling rule may read and write while the forward pass runs."""

    def __init__(self, model: nn.Module, normalised_prunable: bool = False) -> None:
        # HiddenPruning's trace: dims a LayerNorm/RMSNorm normalises stay prunable (inexactly)
        self.normalised_prunable = normalised_prunable
        self.axes = AxisTable()
        self._specs: dict[int, tuple[weakref.ref, list[Spec]]] = {}
        self._slots: dict[int, TensorSlot] = {}
        self._names: dict[int, list[str]] = {}
        self._kinds: dict[int, str] = {}
        self.attributes: list[AttributeSlot] = []
        self.attribute_candidates: list[AttributeCandidates] = []
        self.unknown_ops: list[UnknownOp] = []
        self.selections: list[str] = []
        self.module_stack: list[str] = []
        self.module_outputs: list[ModuleOutput] = []
        self._calls: dict[str, int] = {}
        self.modules: dict[str, nn.Module] = dict(model.named_modules(remove_duplicate=False))
        self._model_tensors: dict[int, torch.Tensor] = {}
        for kind, named in (("parameter", model.named_parameters(remove_duplicate=False)),
                            ("buffer", model.named_buffers(remove_duplicate=False))):
            for name, tensor in named:
                self._names.setdefault(id(tensor), []).append(name)
                self._kinds[id(tensor)] = kind
                self._model_tensors[id(tensor)] = tensor

    # -- where we are ------------------------------------------------------------------------
    @property
    def module_name(self) -> str:
        """The running module's name in ``named_modules`` ("" for the model itself)."""
        return self.module_stack[-1] if self.module_stack else ""

    @property
    def module_path(self) -> str:
        """The running module's name for messages."""
        return self.module_name or "<model>"

    @property
    def current_module(self) -> nn.Module | None:
        return self.modules.get(self.module_name)

    # -- tensors -----------------------------------------------------------------------------
    def specs(self, tensor: torch.Tensor) -> list[Spec]:
        """The dim specs of a tensor; unseen model tensors become slots, others constants."""
        entry = self._specs.get(id(tensor))
        if entry is not None and entry[0]() is tensor:
            return entry[1]
        if id(tensor) in self._model_tensors and self._model_tensors[id(tensor)] is tensor:
            specs = [self.axes.fresh_spec(n) for n in tensor.shape]
            slot = TensorSlot(self._names[id(tensor)], self._kinds[id(tensor)], tensor, specs)
            self._slots[id(tensor)] = slot
        else:
            reason = f"constant tensor used in {self.module_path}"
            specs = [self.axes.fresh_spec(n, reason) for n in tensor.shape]
        self.set(tensor, specs)
        return specs

    def set(self, tensor: torch.Tensor, specs: list[Spec]) -> None:
        if len(specs) != tensor.dim():
            raise NotRepresentable("rule produced the wrong number of dims")
        key = id(tensor)
        self._specs[key] = (weakref.ref(tensor, lambda _, k=key: self._forget(k)), specs)

    def _forget(self, key: int) -> None:
        entry = self._specs.get(key)
        if entry is not None and entry[0]() is None:
            del self._specs[key]

    def fresh(self, tensor: torch.Tensor, reason: str) -> list[Spec]:
        specs = [self.axes.fresh_spec(n, reason) for n in tensor.shape]
        self.set(tensor, specs)
        return specs

    def fix(self, tensor: torch.Tensor, reason: str, dims: list[int] | None = None) -> None:
        specs = self.specs(tensor)
        for d in range(tensor.dim()) if dims is None else dims:
            self.axes.fix_spec(specs[d], reason)

    def unify(self, a: Spec, b: Spec) -> None:
        self.axes.unify(a, b)

    def role(self, tensor: torch.Tensor | None, dim: int, role: str) -> None:
        """Record that dim of a parameter is a layer's output, input or norm channels."""
        if tensor is not None and id(tensor) in self._slots:
            self._slots[id(tensor)].roles.setdefault(dim % max(tensor.dim(), 1), role)

    def attribute(self, module: nn.Module | None, attribute: str, spec: Spec) -> None:
        """Record that ``module.attribute`` counts the channels of ``spec``, if the module
        keeps such a count (a module calling ``F.multi_head_attention_forward`` itself may
        have no ``embed_dim``)."""
        if (module is not None and module is self.current_module
                and type(getattr(module, attribute, None)) is int):
            slot = AttributeSlot(self.module_name, attribute, spec)
            if not any((a.module, a.attribute) == (slot.module, slot.attribute)
                       for a in self.attributes):
                self.attributes.append(slot)

    def attribute_candidates_for(self, module: nn.Module, attribute: str,
                                 specs: list[Spec], seen_in: str = "view") -> None:
        if module is self.current_module:
            self.attribute_candidates.append(AttributeCandidates(self.module_name, attribute,
                                                                 specs, seen_in))

    def shape_read(self, tensor: torch.Tensor, sizes: tuple[int, ...],
                   dims: list[int]) -> None:
        """The running module read ``tensor``'s size: an integer width attribute of the same
        value (``channels``, ``out_features``, ``embed_dim`` …) may be what the size is
        compared with (``assert x.shape[1] == self.channels``), so it is a candidate count of
        that dim, bound later only if it sized no other prunable dim. Only width names: a
        size read matches other counts by coincidence (two key/value heads beside
        ``num_key_value_groups = 2``)."""
        module = self.current_module
        if module is None:
            return
        counts = {name: value for name, value in int_attributes(module).items()
                  if value > 1 and WIDTH_COUNT.match(name)}
        if not counts:
            return
        specs = self.specs(tensor)
        for name, value in counts.items():
            matching = [specs[d] for d, size in zip(dims, sizes) if size == value]
            if matching:
                self.attribute_candidates.append(AttributeCandidates(
                    self.module_name, name, matching, seen_in="size read"))

    def module_output(self, name: str, output: Any) -> None:
        """Remember a module call's single-tensor output and its channels."""
        call = self._calls.get(name, 0)
        self._calls[name] = call + 1
        entry = self._specs.get(id(output)) if isinstance(output, torch.Tensor) else None
        if entry is not None and entry[0]() is output:
            self.module_outputs.append(ModuleOutput(name, call, entry[1]))

    # -- results -----------------------------------------------------------------------------
    def result(self) -> TraceResult:
        return TraceResult(self.axes, list(self._slots.values()), self.attributes,
                           self.attribute_candidates, self.unknown_ops,
                           self.module_outputs, self.selections)


# the attribute names a size read may be compared with: widths, not counts of heads or groups
WIDTH_COUNT = re.compile(r"^(in_|out_|num_|n_|inner_|embed_|hidden_)?"
                         r"(channels|features|dim|width|planes|size|embed_dim)$")
# ops whose integer outputs say which elements came first: rounding can change the choice
_ORDERINGS = {"topk", "sort", "argsort", "argmax", "argmin", "kthvalue", "max", "min",
              "median", "nanmedian", "mode"}


_ORDERING_FUNCS: dict[Callable, bool] = {}  # func -> whether it is one of _ORDERINGS


def _chooses_by_order(func, args, outputs: list[torch.Tensor]) -> bool:
    ordering = _ORDERING_FUNCS.get(func)
    if ordering is None:  # op_name's string work once per function, not once per call
        ordering = _ORDERING_FUNCS[func] = op_name(func).rsplit(".", 1)[-1] in _ORDERINGS
    return (ordering and any(not t.is_floating_point() for t in outputs)
            and any(t.is_floating_point() for t in iter_tensors(args)))


_SHAPE_READS = {torch.Tensor.shape.__get__, torch.Tensor.size}


class _TracingMode(TorchFunctionMode):
    def __init__(self, ctx: TraceContext, rules: dict[Callable, Callable], strict: bool) -> None:
        super().__init__()
        self.ctx, self.rules, self.strict = ctx, rules, strict

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func in _SHAPE_READS and isinstance(args[0], torch.Tensor):
            self._shape_read(args, kwargs, out)
            return out
        rule = self.rules.get(func)
        outputs = list(iter_tensors(out))
        if _chooses_by_order(func, args, outputs):
            where = f"{op_name(func)} in {self.ctx.module_path}"
            if where not in self.ctx.selections:
                self.ctx.selections.append(where)
        if rule is None and not outputs:
            return out  # shape queries, .item(), printing …
        inputs = list(iter_tensors((args, kwargs)))
        try:
            if rule is None:
                self._unknown(func, inputs, outputs)
            else:
                rule(self.ctx, args, kwargs, out)
        except NotRepresentable as why:
            reason = f"{op_name(func)} in {self.ctx.module_path}: {why}"
            self._fallback(inputs, outputs, reason)
        except Exception as error:  # a rule that cannot read this call: as if it had none
            name, module = op_name(func), self.ctx.module_path
            if self.strict:
                raise UnsupportedOpError(f"the coupling rule for {name} in module {module!r} "
                                         f"failed: {type(error).__name__}: {error}") from error
            self.ctx.unknown_ops.append(UnknownOp(f"{name} (its rule failed: "
                                                  f"{type(error).__name__})", module))
            self._fallback(inputs, outputs, f"the rule for {name} failed in {module}")
        return out

    def _shape_read(self, args, kwargs, out) -> None:
        tensor = args[0]
        if isinstance(out, int):  # x.size(d)
            dim = args[1] if len(args) > 1 else kwargs.get("dim")
            if isinstance(dim, int) and -tensor.dim() <= dim < tensor.dim():
                self.ctx.shape_read(tensor, (out,), [dim % tensor.dim()])
        elif isinstance(out, tuple):  # x.shape, x.size()
            self.ctx.shape_read(tensor, tuple(out), list(range(tensor.dim())))

    def _unknown(self, func, inputs, outputs) -> None:
        name = op_name(func)
        module = self.ctx.module_path
        if self.strict:
            raise UnsupportedOpError(f"op {name} in module {module!r} has no coupling rule")
        self.ctx.unknown_ops.append(UnknownOp(name, module))
        self._fallback(inputs, outputs, f"unknown op {name} in {module}")

    def _fallback(self, inputs, outputs, reason: str) -> None:
        for tensor in inputs:
            self.ctx.fix(tensor, reason)
        for tensor in outputs:
            if not any(tensor is t for t in inputs):
                self.ctx.fresh(tensor, reason)


def trace(model: nn.Module, example_inputs: Any, strict: bool = False,
          normalised_prunable: bool = False) -> TraceResult:
    """Run ``model`` once on ``example_inputs`` in eval mode and record its channel structure.

    With ``normalised_prunable``, the dims a layer or RMS norm normalises are not fixed (see
    ``HiddenPruning``). The model's training flags are restored afterwards; nothing else about
    it changes.
    """
    ctx = TraceContext(model, normalised_prunable)

    def enter(name):
        def pre_hook(_module, _args):
            ctx.module_stack.append(name)
        return pre_hook

    def leave(name):
        def post_hook(_module, _args, output):
            ctx.module_stack.pop()
            if name:
                ctx.module_output(name, output)
            # returns None, so the module's output is unchanged
        return post_hook

    hooks = []
    for name, module in model.named_modules():
        hooks.append(module.register_forward_pre_hook(enter(name)))
        hooks.append(module.register_forward_hook(leave(name)))
    mode = _TracingMode(ctx, RULES, strict)
    try:
        for tensor in iter_tensors(example_inputs):
            ctx.fix(tensor, "model input")
        with evaluating(model), torch.no_grad(), mode:
            out = call_model(model, example_inputs)
        for tensor in output_tensors(out):
            if not normalised_prunable:  # a narrower hidden size narrows a base model's outputs
                ctx.fix(tensor, "model output")
    except TraceError:  # an unsupported op, an output with nothing to protect
        raise
    except Exception as error:  # the user's forward failed: say so, keep the cause
        where = ctx.module_path
        raise TraceError(f"the example inputs do not run through the model "
                         f"(failed in {where!r}): {type(error).__name__}: {error}") from error
    finally:
        for hook in hooks:
            hook.remove()
    return ctx.result()


class _SelectionsMode(TorchFunctionMode):
    """Records the ops that choose by order, and nothing else."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.found: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func not in _SHAPE_READS and _chooses_by_order(func, args, list(iter_tensors(out))):
            where = f"{op_name(func)} in {self.stack[-1] if self.stack else '<model>'}"
            if where not in self.found:
                self.found.append(where)
        return out


def find_selections(model: nn.Module, example_inputs: Any) -> list[str]:
    """The ops that choose by order in one eval-mode pass (``TraceResult.selections``
    without the rest of a trace): what ``pk.verify`` needs to check as ``pk.prune`` does."""
    mode = _SelectionsMode()

    def leave(*_) -> None:  # returns None: the module's output stays as it is
        mode.stack.pop()

    hooks = []
    for name, module in model.named_modules():
        hooks.append(module.register_forward_pre_hook(
            lambda _m, _a, name=name: mode.stack.append(name or "<model>")))
        hooks.append(module.register_forward_hook(leave))
    try:
        with evaluating(model), torch.no_grad(), mode:
            call_model(model, example_inputs)
    finally:
        for hook in hooks:
            hook.remove()
    return mode.found
