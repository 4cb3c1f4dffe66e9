"""The correctness oracle: a masked copy and a physically pruned copy must agree.

Masking zeroes, in every member tensor, the channels the plan removes. Because a group holds
every tensor that reads or writes those channels, the zeroed channels contribute nothing, so
the masked model computes exactly what the smaller model computes.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterator, TypeVar

import torch
from torch import nn
from torch.utils._pytree import tree_map

from ..arguments import check_model, keyword_only
from ..calls import call_model, copied_inputs, evaluating, iter_tensors, named_tensors
from ..errors import ConfigError
from ..graph.trace import find_selections
from ..measure import Measurement, size_and_outputs
from ..plan import Plan
from ..surgery.apply import Rollback, apply_plan, evaluate_applied, tensor_owners
from .comparison import DEFAULT_TOLERANCE, VerifyReport, compare_outputs

T = TypeVar("T")
R = TypeVar("R")


class PrunedModelFailed(Exception):
    """Applying a plan or running the pruned model raised ``error``: the plan broke the
    model (as opposed to a fault in the check itself, which propagates as it is)."""

    def __init__(self, error: BaseException):
        super().__init__(f"{type(error).__name__}: {error}")
        self.error = error


def run_pruned(model: nn.Module, plan: Plan, evaluate: Callable[[nn.Module], T]) -> T:
    """``evaluate`` on the model with ``plan`` applied, then restored; whatever applying or
    running it raises comes out as ``PrunedModelFailed``."""
    return judge_pruned(model, plan, evaluate, lambda read: read)


def judge_pruned(model: nn.Module, plan: Plan, evaluate: Callable[[nn.Module], T],
                 judge: Callable[[T], R], keep: Callable[[nn.Module, Plan], None] | None = None
                 ) -> R:
    """The report ``judge`` makes of what ``evaluate`` reads from the model with ``plan``
    applied in place.

    The model is restored afterwards, unless ``keep`` is given and the report is ok: then
    ``keep(pruned, plan)`` runs inside the transaction that applied the plan, and the model stays
    pruned. That saves undoing a plan that passed only to apply it again. Whatever applying
    the plan or ``evaluate`` raises comes out as ``PrunedModelFailed`` (the plan broke the
    model); an error in ``judge`` or ``keep`` is the caller's own and propagates as it is,
    the model restored either way.
    """
    reports: list[R] = []
    applied = False

    def read_judge_keep_or_undo(pruned: nn.Module) -> None:
        nonlocal applied
        applied = True
        try:
            read = evaluate(pruned)
        except Exception as error:
            raise PrunedModelFailed(error) from error
        reports.append(judge(read))
        if keep is None or not reports[0].ok:
            raise Rollback
        keep(pruned, plan)

    try:
        apply_plan(model, plan, check=read_judge_keep_or_undo)
    except Rollback:
        pass
    except PrunedModelFailed:
        raise
    except Exception as error:
        if applied:  # from judge or keep
            raise
        raise PrunedModelFailed(error) from error
    return reports[0]


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


COPY_LIMIT = 16 * 2**20  # bytes: a tensor this size or smaller is copied to be masked


def _kept_factor(tensor: torch.Tensor, removed: dict[int, torch.Tensor]) -> torch.Tensor:
    """1 where every dim's index is kept, 0 where any is removed, in ``tensor``'s dtype and
    shaped to broadcast over it (``removed``: dim -> True at each removed index)."""
    factor = torch.ones((), dtype=tensor.dtype, device=tensor.device)
    for dim, along in removed.items():
        shape = [1] * tensor.dim()
        shape[dim] = tensor.shape[dim]
        factor = factor * (~along).to(tensor.dtype).view(shape)
    return factor


def _zero_in_place(tensor: torch.Tensor, removed: dict[int, torch.Tensor]
                   ) -> Callable[[], None]:
    """Zero the removed channels of a large ``tensor`` in place (``removed``: dim -> True at
    each removed index) and return what puts them back.

    Only the zeroed values are kept: the removed slices along one dim; along two dims, the
    removed rows whole plus the kept rows' removed columns (3/4 of a tensor that loses half
    along each, where a copy would be all of it: the difference decides whether the largest
    models fit in memory while they are checked)."""
    indices = {dim: along.nonzero().flatten() for dim, along in removed.items()}
    if len(indices) == 1:
        (dim, index), = indices.items()
        saved = tensor.index_select(dim, index)
        tensor.index_fill_(dim, index, 0)
        return lambda: tensor.index_copy_(dim, index, saved)
    if len(indices) > 2:
        saved = tensor.clone()
        for dim, index in indices.items():
            tensor.index_fill_(dim, index, 0)
        return lambda: tensor.copy_(saved)
    # rows: the outer of the two dims, whose removed slices are copied whole and fast
    first, second = sorted(indices, key=tensor.stride, reverse=True)
    view = tensor.movedim((first, second), (0, 1))  # writes go through to the tensor
    rows, columns = indices[first], indices[second]
    kept_rows = (~removed[first]).nonzero().flatten()[:, None]
    saved_rows = view.index_select(0, rows)
    saved_columns = view[kept_rows, columns[None, :]]
    view.index_fill_(0, rows, 0)
    view.index_fill_(1, columns, 0)

    def restore() -> None:
        view[kept_rows, columns[None, :]] = saved_columns
        view.index_copy_(0, rows, saved_rows)

    return restore


def _zero_copies(tensors: list[torch.Tensor], factors: list[torch.Tensor]
                 ) -> list[Callable[[], None]]:
    """Give each small tensor a zeroed copy as its data (its product with its 0/1 factor)
    and return what gives each its own data back: no copy to save, none to restore.

    The products are taken in one batched call (``torch._foreach_mul``, as optimizers step
    their parameters), and their finiteness read in one more: per tensor, the few small ops
    of a product and its check cost more than the product itself on MobileNet-sized layers.
    A product is three to ten times faster than ``torch.where`` with a broadcast mask, which
    is used only where a product is not finite (an infinite or NaN weight, which times 0 is
    NaN, not 0; a finite sum that overflows just takes the slower way to the same copy)."""
    if not tensors:
        return []
    owns = [t.data for t in tensors]
    products = torch._foreach_mul(owns, factors)
    finite = torch.stack(torch._foreach_norm(products, 1)).isfinite().tolist()
    for tensor, own, factor, product, ok in zip(tensors, owns, factors, products, finite):
        tensor.data = product if ok else torch.where(factor != 0, own, 0)

    def giver(tensor: torch.Tensor, own: torch.Tensor) -> Callable[[], None]:
        def give_back() -> None:
            tensor.data = own

        return give_back

    return [giver(tensor, own) for tensor, own in zip(tensors, owns)]


def _zero_through_hooks(layer: nn.Linear, removed: dict[int, torch.Tensor]
                        ) -> Callable[[], None]:
    """Mask a large linear layer's weight without writing to it: its removed input features
    are zeroed on the way in (``removed[1]``), its removed outputs replaced on the way out
    (``removed[0]``). What the layer computes is what the zeroed weight gives (each removed
    column meets a zero input, each removed row's output is its bias), and nothing needs saving
    or restoring: on VGG16's 392 MB classifier layer, saving, zeroing and restoring in place
    took 0.3 s and copied 3/4 of it. Only for a weight held by this layer alone, all finite
    (an infinite weight times a zero input is NaN, where a zeroed weight gives 0)."""
    handles = []
    if 1 in removed:
        keep_in = ~removed[1]

        def zero_removed_inputs(_layer, args, kwargs):
            if args:
                return (args[0] * keep_in.to(args[0].dtype), *args[1:]), kwargs
            x = kwargs["input"]
            return args, {**kwargs, "input": x * keep_in.to(x.dtype)}

        handles.append(layer.register_forward_pre_hook(zero_removed_inputs, with_kwargs=True))
    if 0 in removed:
        keep_out = ~removed[0]

        def zero_removed_outputs(layer, _args, output):
            # a zeroed row gives its bias alone (zero too when the plan removes it as well)
            return torch.where(keep_out, output, 0 if layer.bias is None else layer.bias)

        # first of the layer's forward hooks: what a user's hook sees is the masked output
        handles.append(layer.register_forward_hook(zero_removed_outputs, prepend=True))

    def remove() -> None:
        for handle in handles:
            handle.remove()

    return remove


def _maskable_through_hooks(tensor: torch.Tensor, removed: dict[int, torch.Tensor],
                            module: nn.Module, attr: str,
                            owners: dict[str, tuple[nn.Module, str, str]]) -> bool:
    """Whether ``_zero_through_hooks`` masks ``tensor`` exactly: the weight of a plain linear
    layer, held by no other module or attribute (a tied weight is used elsewhere too),
    pruned along its own dims only, all finite."""
    if type(module) is not nn.Linear or attr != "weight" or not set(removed) <= {0, 1}:
        return False
    holders = {(id(m), a) for m, a, kind in owners.values()
               if kind == "parameter" and m._parameters.get(a) is tensor}
    return len(holders) == 1 and bool(tensor.sum().isfinite())


def _mask_parameters(model: nn.Module, plan: Plan, through_hooks: bool = True
                     ) -> list[Callable[[], None]]:
    """Zero the removed channels of every parameter; return what puts each back. A tensor
    up to ``COPY_LIMIT`` bytes gets a zeroed copy as its data (``_zero_copies``); a larger
    one is zeroed in place (``_zero_in_place``), or, the weight of a linear layer, masked by
    hooks on the layer (``_zero_through_hooks``) when ``through_hooks``."""
    owners = tensor_owners(model)
    # a group's members keep the same indices: its mask, and the factor each shape of
    # member is multiplied by, are built once
    masks: dict[tuple[tuple[int, ...], int, torch.device], torch.Tensor] = {}
    factors: dict[tuple, torch.Tensor] = {}

    def removed_along(kept: list[int], size: int, device: torch.device) -> torch.Tensor:
        key = (tuple(kept), size, device)  # hashing the tuple costs a tenth of as_tensor
        if key not in masks:
            along = torch.ones(size, dtype=torch.bool)
            along[torch.as_tensor(kept, dtype=torch.long)] = False
            masks[key] = along.to(device)
        return masks[key]

    def factor_for(tensor: torch.Tensor, removed: dict[int, torch.Tensor]) -> torch.Tensor:
        key = (tensor.dim(), tensor.dtype, tensor.device,
               tuple((dim, id(along)) for dim, along in removed.items()))
        if key not in factors:  # (the masks above live as long as this dict)
            factors[key] = _kept_factor(tensor, removed)
        return factors[key]

    # by tensor: a tensor under two names (tied) is masked once, on what both remove
    removed_from: dict[int, tuple[torch.Tensor, dict[int, torch.Tensor], nn.Module, str]] = {}
    for name, dims in plan.tensors.items():
        module, attr, kind = owners[name]
        if kind != "parameter":
            continue
        tensor = getattr(module, attr)
        _, removed, _, _ = removed_from.setdefault(id(tensor), (tensor, {}, module, attr))
        for dim, kept in dims.items():
            along = removed_along(kept, tensor.shape[dim], tensor.device)
            removed[dim] = along if dim not in removed else removed[dim] | along
    undo: list[Callable[[], None]] = []
    small: list[torch.Tensor] = []
    small_factors: list[torch.Tensor] = []
    with torch.no_grad():
        for tensor, removed, module, attr in removed_from.values():
            if tensor.numel() * tensor.element_size() <= COPY_LIMIT:
                small.append(tensor)
                small_factors.append(factor_for(tensor, removed))
            elif through_hooks and _maskable_through_hooks(tensor, removed, module, attr,
                                                           owners):
                undo.append(_zero_through_hooks(module, removed))
            else:
                undo.append(_zero_in_place(tensor, removed))
        undo += _zero_copies(small, small_factors)
    return undo


def mask(model: nn.Module, plan: Plan) -> nn.Module:
    """Zero, in place, every parameter channel the plan removes (shapes unchanged)."""
    _mask_parameters(model, plan, through_hooks=False)
    return model


def _owned(outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Outputs copied into memory of their own: an output that is a buffer of the model, or
    the caller's input written in place, would otherwise be overwritten by the next run, and
    the masked and the pruned model's outputs would be one tensor compared with itself."""
    return {name: tensor.clone() for name, tensor in outputs.items()}


def _outputs_on(model: nn.Module, inputs: CheckInputs
                ) -> tuple[Measurement, list[dict[str, torch.Tensor]]]:
    """The model's size (measured on the example inputs) and its outputs on every input,
    each run on its own copy of the inputs and each output copied."""
    size, first = size_and_outputs(model, copied_inputs(inputs.example))
    if not inputs.batches:  # the common case: no eval-mode walk of the model for nothing
        return size, [_owned(first)]
    rest = []
    with evaluating(model), torch.no_grad():
        for batch in inputs.batches:
            output = call_model(model, copied_inputs(batch))
            rest.append(_owned({name: t.detach() for name, t in named_tensors(output)}))
    return size, [_owned(first), *rest]


def _masked_outputs(model: nn.Module, inputs: CheckInputs, plan: Plan
                    ) -> tuple[Measurement | None, list[dict[str, torch.Tensor]]]:
    if plan.layers:  # a removed layer's "mask" is the identity it is replaced by
        rest = Plan(tensors=plan.tensors, shapes=plan.shapes)
        _, outputs = evaluate_applied(model, Plan(layers=plan.layers, stacks=plan.stacks),
                                      lambda swapped: _masked_outputs(swapped, inputs, rest))
        return None, outputs  # the swapped model is not the unpruned one: no size to report
    undo = _mask_parameters(model, plan)
    try:
        return _outputs_on(model, inputs)  # masking changes no shape: the unpruned size
    finally:
        with torch.no_grad():
            for restore in undo:
                restore()


def compare_in_place(model: nn.Module, inputs: Any, plan: Plan,
                     tolerance: float = DEFAULT_TOLERANCE,
                     keep: Callable[[nn.Module, Plan], None] | None = None) -> VerifyReport:
    """Masked vs pruned outputs of ``model`` on every input of ``inputs`` (example inputs or
    ``CheckInputs``), computed in place and undone afterwards; in float64 when
    ``inputs.float64_because`` says why, if the model runs in float64 (otherwise in its own
    precision, and the report says so).

    With ``keep``, a plan that passes stays applied and ``keep(pruned, plan)`` runs before the
    transaction that applied it closes (see ``judge_pruned``).

    Raises ``PrunedModelFailed`` when the plan does not apply or the pruned model no longer
    runs (the model is restored); anything the masked model raises propagates as it is.
    """
    inputs = as_check_inputs(inputs)
    if not inputs.float64_because:
        return _compare(model, inputs, plan, tolerance, keep)
    with widened(model):  # the pruned model's new tensors would stay in float64: not kept
        report = _compare(model, inputs.in_float64(), plan, tolerance)
    if report.ok and keep is not None:
        apply_plan(model, plan, check=lambda pruned: keep(pruned, plan))
    return report


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


def _random_like(inputs: Any, seed: int = 0) -> Any:
    """``inputs`` with every floating-point tensor replaced by standard normal values of its
    shape and dtype (seeded); other tensors (token ids, masks) kept."""
    generator = torch.Generator().manual_seed(seed)
    return tree_map(lambda t: torch.randn(t.shape, generator=generator).to(t)
                    if isinstance(t, torch.Tensor) and t.is_floating_point() else t, inputs)


def exercising(model: nn.Module, inputs: CheckInputs) -> CheckInputs:
    """``inputs``, with random inputs of the example's shapes added when the example inputs
    and every batch are constant. A constant input can make the check vacuous: every channel
    a convolution computes is the same at every position, a BatchNorm can map it to zero,
    and a plan that changes what the model computes on real inputs passes with a difference
    of 0. Raises ``ConfigError`` if the model does not run on the random inputs."""
    if not all(_constant(x) for x in inputs):
        return inputs
    random = _random_like(inputs.example)
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


def _compare(model: nn.Module, inputs: CheckInputs, plan: Plan, tolerance: float,
             keep: Callable[[nn.Module, Plan], None] | None = None) -> VerifyReport:
    unpruned, expected = _masked_outputs(model, inputs, plan)

    def judge(read: tuple[Measurement, list[dict[str, torch.Tensor]]]) -> VerifyReport:
        pruned, actual = read
        comparisons = []
        for i, (e, a) in enumerate(zip(expected, actual)):
            comparisons += compare_outputs(e, a, tolerance, f" (batch {i})" if i else "")
        return VerifyReport(comparisons, tolerance, inputs.describe(), list(plan.layers),
                            unpruned, pruned)

    return judge_pruned(model, plan, lambda m: _outputs_on(m, inputs), judge, keep)


@keyword_only
def verify(original_model: nn.Module, example_inputs: Any, plan: Plan, *,
           tolerance: float = DEFAULT_TOLERANCE) -> VerifyReport:
    """Check that the plan's masked and pruned versions of a model give the same outputs:
    every output tensor, each within ``tolerance`` of its own largest value (looser for
    half-precision outputs, see ``tolerance_for``), all finite.

    A plan that only removes layers changes what the model computes, so there is nothing to
    be equivalent to: it is refused (its check is ``pk.checks.BlocksBypassed``). Layers
    removed by a plan that also prunes channels are removed from both models.

    Args:
        original_model: the unpruned model; it is copied, never changed.
        example_inputs: inputs as for ``pk.prune``, or ``CheckInputs`` for several.
        plan: the plan to check.
        tolerance: largest allowed max-abs difference relative to each output's scale.

    Returns:
        A ``VerifyReport``; ``report.ok`` is the verdict, ``str(report)`` says what was
        compared.

    Example:
        >>> report = pk.verify(original, x, result.plan); assert report.ok, report
    """
    check_model(original_model)
    if plan.layers and not plan.tensors:
        raise ConfigError("pk.verify: this plan only removes layers, which changes what the "
                          "model computes, so there is no equivalent model to compare with; "
                          "check it with pk.checks.BlocksBypassed (what pk.prune does)")
    model = copy.deepcopy(original_model)
    if isinstance(example_inputs, CheckInputs):
        inputs = example_inputs
    else:  # the inputs pk.prune's own check would have used
        inputs = check_inputs(model, example_inputs, [], find_selections(model, example_inputs))
    try:
        return compare_in_place(model, inputs, plan, tolerance)
    except PrunedModelFailed as failed:
        raise failed.error
