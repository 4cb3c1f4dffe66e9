"""What a check runs the model on: the example inputs, a few batches of data, random inputs
where those are all constant, and float64 where the model chooses by order."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, Iterator

import torch
from torch import nn
from torch.utils._pytree import tree_map

from ..core.calls import call_model, evaluating, iter_tensors, random_like
from ..errors import ConfigError


@dataclass
class CheckInputs:
    """What a check runs the model on: the example inputs (where sizes are measured), then a
    few batches of the user's data, so that control flow taken only by real data is checked
    too. Only the paths these inputs take are checked."""

    example: Any
    batches: list = field(default_factory=list)
    # why outputs are compared in float64 (None: in the model's own precision): an op that
    # chooses by order (topk over scores) turns a rounding difference between the masked
    # and the pruned model into a different choice, and float64 makes that vanishingly rare
    float64_because: str | None = None
    note: str = ""

    def __iter__(self) -> Iterator[Any]:
        yield self.example
        yield from self.batches

    def describe(self) -> str:
        if not self.batches:
            what = "the example inputs"
        else:
            count = len(self.batches)
            what = f"the example inputs and {count} batch{'es' if count > 1 else ''} of data"
        if self.float64_because:
            what += f", in float64 ({self.float64_because})"
        return what + (f" ({self.note})" if self.note else "")

    def in_float64(self) -> CheckInputs:
        return replace(self, example=_to_float64(self.example),
                       batches=[_to_float64(b) for b in self.batches])


def as_check_inputs(inputs: Any) -> CheckInputs:
    return inputs if isinstance(inputs, CheckInputs) else CheckInputs(inputs)


@contextmanager
def widened(model: nn.Module) -> Iterator[None]:
    """The model's floating parameters and buffers in float64, then given back their own
    data (the very tensors, so storage two of them shared is shared again and weights
    memory-mapped from a file stay mapped). Tensors that share storage are widened as one
    float64 copy of that storage, viewed as each of them was, so a write through one (a
    mask zeroing a shared weight in place) reaches the other, as it would in the model. The
    tensors stay the same objects, so a plan applied and undone inside still finds them."""
    tensors = {id(t): t for t in (*model.parameters(), *model.buffers())}.values()
    by_storage: dict[tuple, list[torch.Tensor]] = {}
    for tensor in tensors:
        if tensor.is_floating_point() and tensor.dtype != torch.float64:
            storage = tensor.untyped_storage()
            key = (storage.data_ptr(), storage.nbytes(), tensor.device, tensor.dtype)
            by_storage.setdefault(key, []).append(tensor)
    saved = []
    with torch.no_grad():
        for sharing in by_storage.values():
            own = [t.data for t in sharing]
            if len(sharing) == 1:
                wide = [own[0].double()]
            else:  # one float64 storage, each tensor a view of it as before
                whole = torch.empty(0, dtype=own[0].dtype, device=own[0].device)
                whole.set_(own[0].untyped_storage())
                base = whole.double()
                wide = [base.as_strided(t.shape, t.stride(), t.storage_offset()) for t in own]
            for tensor, data, widened_data in zip(sharing, own, wide):
                saved.append((tensor, data))
                tensor.data = widened_data
    try:
        yield
    finally:
        with torch.no_grad():
            for tensor, data in saved:
                tensor.data = data


def _to_float64(inputs: Any) -> Any:
    return tree_map(lambda t: t.double() if isinstance(t, torch.Tensor)
                    and t.is_floating_point() else t, inputs)


def compared_in_float64(model: nn.Module, inputs: CheckInputs,
                        selections: list[str]) -> CheckInputs:
    """``inputs`` set to be compared in float64 when the model chooses by order somewhere
    (``selections``: "Tensor.topk in model.28") and runs in float64; otherwise as they were,
    with a note saying why not."""
    if not selections:
        return inputs
    because = f"{selections[0]} chooses by order" + (
        f", and {len(selections) - 1} more" if len(selections) > 1 else "")
    try:
        with widened(model), evaluating(model), torch.no_grad():
            call_model(model, _to_float64(inputs.example))
    except Exception as error:  # a float32 constant inside forward, a dtype check …
        return replace(inputs, note=f"compared in its own precision although {because}: "
                                    f"it does not run in float64 ({type(error).__name__})")
    return replace(inputs, float64_because=because)


def _constant(inputs: Any) -> bool:
    """Whether every floating-point tensor in ``inputs`` holds one value throughout (and
    there is at least one): zeros, ones, a filled image."""
    floats = [t for t in iter_tensors(inputs) if t.is_floating_point()]
    return bool(floats) and all(t.numel() > 0 and bool((t == t.flatten()[0]).all())
                                for t in floats)


def exercising(model: nn.Module, inputs: CheckInputs) -> CheckInputs:
    """``inputs``, with random inputs of the example's shapes added when the example inputs
    and every batch are constant. A constant input can make the check vacuous: every channel
    a convolution computes is the same at every position, a BatchNorm can map it to zero,
    and a plan that changes what the model computes on real inputs passes with a difference
    of 0. Raises ``ConfigError`` if the model does not run on the random inputs."""
    if not all(_constant(x) for x in inputs):
        return inputs
    random = random_like(inputs.example)
    try:
        with evaluating(model), torch.no_grad():
            call_model(model, random)
    except Exception as error:
        raise ConfigError(
            f"example_inputs: every value is the same, which can make the check compare "
            f"nothing, and the model does not run on random inputs of that shape either "
            f"({type(error).__name__}: {error}); give varied example inputs, or data="
        ) from error
    note = "the example inputs are constant, so random inputs of their shape too"
    return replace(inputs, batches=[*inputs.batches, random],
                   note="; ".join(filter(None, [inputs.note, note])))


def check_inputs(model: nn.Module, example: Any, batches: list, selections: list[str]
                 ) -> CheckInputs:
    """What ``pk.prune`` and ``pk.verify`` check a plan on: the example inputs, the data
    batches, random inputs where those are all constant, compared in float64 where the model
    chooses by order (``selections``)."""
    inputs = exercising(model, CheckInputs(example, [b for b in batches if b is not example]))
    return compared_in_float64(model, inputs, selections)
