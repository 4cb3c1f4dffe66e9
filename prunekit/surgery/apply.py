"""Apply a plan to a model: slice tensors, set counted attributes, fix module attributes,
remove layers.

Applying is transactional: everything is checked and computed before the model is touched,
and if anything fails afterwards (including the caller's ``check``) every touched module is
restored to exactly what it was. A Hugging Face config is never changed in place: the pruned
model gets its own copy, since the config object may be shared with another model.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from typing import Any, Callable, Iterator, TypeVar

import torch
from torch import nn

from ..errors import PlanError
from ..plan import Plan
from .handlers import sync_attributes
from .stacks import model_config, remove_blocks


def tensor_owners(model: nn.Module) -> dict[str, tuple[nn.Module, str, str]]:
    """name -> (owning module, attribute name, "parameter" | "buffer"), tied names included."""
    owners = {}
    for module_name, module in model.named_modules(remove_duplicate=False):
        prefix = f"{module_name}." if module_name else ""
        for name, value in module._parameters.items():
            if value is not None:
                owners[prefix + name] = (module, name, "parameter")
        for name, value in module._buffers.items():
            if value is not None:
                owners[prefix + name] = (module, name, "buffer")
    return owners


def _ancestors(name: str) -> list[str]:
    parts = name.split(".") if name else []
    return [".".join(parts[:i]) for i in range(len(parts))]


def _parent(name: str) -> str:
    return name.rsplit(".", 1)[0] if "." in name else ""


def _sliced(name: str, tensor: torch.Tensor, dims: dict[int, list[int]],
            checked: dict[tuple, torch.Tensor] | None = None) -> torch.Tensor:
    """A new tensor holding the kept indices of ``tensor`` (never a view of it). ``checked``
    remembers index lists already checked and made tensors (a group's members share theirs)."""
    checked = {} if checked is None else checked
    result = tensor.detach()
    for dim, indices in sorted(dims.items()):
        if not 0 <= dim < tensor.dim():
            raise PlanError(f"plan prunes dim {dim} of {name!r}, which has {tensor.dim()} dims")
        key = (tuple(indices), tensor.shape[dim], tensor.device)
        if key not in checked:
            if not indices:
                raise PlanError(f"plan removes every channel of dim {dim} of {name!r}")
            if (min(indices) < 0 or max(indices) >= tensor.shape[dim]
                    or len(set(indices)) != len(indices)):
                raise PlanError(f"plan indices for dim {dim} of {name!r} are out of range or "
                                f"repeated")
            checked[key] = torch.as_tensor(indices, dtype=torch.long, device=tensor.device)
        result = result.index_select(dim, checked[key])  # copies
    return result if dims else result.clone()


def _check_attribute(module_name: str, module: nn.Module, attribute: str, value: Any) -> None:
    """Only the counts a trace records (a public integer attribute such as ``groups`` or
    ``num_heads``), and only to a smaller positive count: an edited plan cannot set any other
    attribute of a module."""
    current = getattr(module, attribute, None)
    if attribute.startswith("_") or type(current) is not int:
        raise PlanError(f"plan sets {attribute!r} of module {module_name!r}, which is not a "
                        f"channel count prunekit changes")
    if type(value) is not int or not 0 < value <= current:
        raise PlanError(f"plan sets {module_name}.{attribute} to {value!r}; it must be a whole "
                        f"number from 1 to its current {current}")


def prepare(model: nn.Module, plan: Plan) -> dict[int, torch.Tensor]:
    """Check the plan against the model and compute every new tensor, touching nothing."""
    owners = tensor_owners(model)
    new: dict[int, torch.Tensor] = {}
    checked: dict[tuple, torch.Tensor] = {}
    for name, dims in plan.tensors.items():
        if name not in owners:
            raise PlanError(f"plan names tensor {name!r}, which the model does not have")
        module, attr, _ = owners[name]
        tensor = getattr(module, attr)
        expected = plan.shapes.get(name)
        if expected is not None and list(tensor.shape) != list(expected):
            raise PlanError(f"plan expects {name!r} of shape {expected}, "
                            f"the model has {list(tensor.shape)}")
        new[id(tensor)] = _sliced(name, tensor, dims, checked)
    for name in plan.untied:
        if name not in owners or owners[name][2] != "parameter":
            raise PlanError(f"plan unties {name!r}, which is not a parameter of the model")
    modules = dict(model.named_modules())
    for name in plan.biased:
        if not isinstance(modules.get(name), nn.Linear) or modules[name].bias is not None:
            raise PlanError(f"plan gives {name!r} a bias, and the model has no linear layer "
                            f"of that name without one")
    for name in plan.layers:
        if not name or name not in modules:
            raise PlanError(f"plan removes layer {name!r}, which the model does not have")
        if any(other != name and name.startswith(other + ".") for other in plan.layers):
            raise PlanError(f"plan removes layer {name!r} and also a module containing it")
        _check_removable(name, modules[name])
    for module_name, attributes in plan.attributes.items():
        if module_name not in modules:
            raise PlanError(f"plan names module {module_name!r}, which the model does not have")
        for attribute, value in attributes.items():
            _check_attribute(module_name, modules[module_name], attribute, value)
            _check_implied(module_name, modules[module_name], attribute, value, plan, owners)
    return new


_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)


def _check_removable(name: str, module: nn.Module) -> None:
    """A removed layer is a block that holds weights, as layer pruning removes: removing an
    activation, a norm or anything else without weights would change what the model
    computes while saving nothing, which no method proposes."""
    if isinstance(module, _NORMS) or next(module.parameters(), None) is None:
        what = "is a normalisation layer" if isinstance(module, _NORMS) else "holds no weights"
        raise PlanError(f"plan removes layer {name!r} ({type(module).__name__}), which {what}; "
                        f"layer pruning removes blocks that hold weights")


def _check_implied(module_name: str, module: nn.Module, attribute: str, value: int,
                   plan: Plan, owners: dict[str, tuple[nn.Module, str, str]]) -> None:
    """A count may only shrink as the plan's own indices shrink what it counts: ``value``
    must be the current count times the kept fraction of a dim the plan prunes in this
    module or below it (4 heads in 64 rows, 32 rows kept: 2 heads). A module without tensors
    of its own (a reshape) may follow any dim the plan prunes."""
    current = getattr(module, attribute)
    if value == current:
        return
    prefix = f"{module_name}." if module_name else ""
    own = any(name.startswith(prefix) for name in owners)
    # counts of this module that split one dim between them (split(x, [self.c1, self.c2])),
    # in the plan's order: each may instead count the kept indices of its own piece
    names = list(plan.attributes[module_name])
    widths = [width if type(width := getattr(module, n, None)) is int else 0 for n in names]
    start, split_total = sum(widths[:names.index(attribute)]), sum(widths)
    implied = set()
    for name, dims in plan.tensors.items():
        if own and not name.startswith(prefix):
            continue
        shape = plan.shapes.get(name) or list(getattr(*owners[name][:2]).shape)
        for dim, kept in dims.items():
            if not 0 <= dim < len(shape) or not shape[dim]:
                continue
            if current * len(kept) % shape[dim] == 0:
                implied.add(current * len(kept) // shape[dim])
            if split_total == shape[dim]:  # this count's own piece of the dim
                implied.add(sum(start <= index < start + current for index in kept))
    if value not in implied:
        implied_text = sorted(implied) or "none of its tensors is pruned"
        raise PlanError(f"plan sets {module_name}.{attribute} to {value}, which the indices it "
                        f"keeps do not imply ({implied_text}); a plan shrinks a count only as "
                        f"it shrinks what the count divides")


@contextmanager
def transaction(modules: list[nn.Module]) -> Iterator[None]:
    """Restore the modules' attributes, parameters and buffers if the block raises (an
    interrupt included)."""
    saved = [(module, type(module), dict(module.__dict__), dict(module._parameters),
              dict(module._buffers), dict(module._modules)) for module in modules]
    try:
        yield
    except BaseException:
        for module, cls, attributes, parameters, buffers, children in saved:
            module.__class__ = cls  # a handler may change the class
            module.__dict__.clear()  # attributes added on the way go too
            module.__dict__.update(attributes)
            for registry, content in ((module._parameters, parameters),
                                      (module._buffers, buffers), (module._modules, children)):
                registry.clear()
                registry.update(content)
        raise


def apply_plan(model: nn.Module, plan: Plan,
               check: Callable[[nn.Module], None] | None = None) -> nn.Module:
    """Physically prune ``model`` in place as ``plan`` says, then run ``check(model)``.

    Raises:
        PlanError: the plan does not fit the model; the model is unchanged.
        Any error from ``check``: the model is restored before it propagates.
    """
    new = prepare(model, plan)
    owners = tensor_owners(model)
    touched = {id(m): m for m, attr, _ in owners.values() if id(getattr(m, attr)) in new}
    modules = dict(model.named_modules())
    touched.update({id(modules[name]): modules[name] for name in plan.attributes})
    touched.update({id(owners[name][0]): owners[name][0] for name in plan.untied})
    touched.update({id(modules[name]): modules[name] for name in plan.biased})
    parents = [modules[_parent(name)] for name in plan.layers]
    touched.update({id(m): m for m in parents})
    for stack in plan.stacks:  # blocks renumbered after a deletion
        if stack in modules:
            touched.update({id(m): m for m in modules[stack].modules()})
    # containers that record their children's width (nn.Transformer's d_model) sync too
    for name, module in list(modules.items()):
        if id(module) in touched:
            touched.update({id(modules[a]): modules[a] for a in _ancestors(name)})
    config = model_config(model)
    holders = [m for m in modules.values() if config is not None
               and m.__dict__.get("config") is config]
    touched.update({id(m): m for m in holders})
    with transaction(list(touched.values())):
        if holders:  # the config may be shared with another model (a teacher): never mutate it
            private = copy.deepcopy(config)
            for holder in holders:
                holder.config = private
        _remove_layers(model, modules, plan.layers, plan.stacks)
        replaced: dict[int, torch.Tensor] = {}
        for module, attr, kind in owners.values():
            old = getattr(module, attr)
            if id(old) not in new:
                continue
            if id(old) not in replaced:  # tied tensors stay tied: one new tensor for all names
                value = new[id(old)]
                replaced[id(old)] = (nn.Parameter(value, requires_grad=old.requires_grad)
                                     if kind == "parameter" else value)
            if kind == "parameter":
                module._parameters[attr] = replaced[id(old)]
            else:
                module._buffers[attr] = replaced[id(old)]
        for name in plan.untied:  # its own tensor, holding what the tied one holds
            module, attr, _ = owners[name]
            old = module._parameters[attr]
            module._parameters[attr] = nn.Parameter(old.detach().clone(),
                                                    requires_grad=old.requires_grad)
        for name in plan.biased:  # zeros: the saved weights, or bias compensation, fill it
            give_zero_bias(modules[name])
        for module_name, attributes in plan.attributes.items():
            for attribute, value in attributes.items():
                setattr(modules[module_name], attribute, value)
        for module in touched.values():
            sync_attributes(module)
        if check is not None:
            check(model)
    return model


def give_zero_bias(layer: nn.Linear) -> None:
    """A linear layer without a bias gets one of zeros (trained if its weight is)."""
    layer.bias = nn.Parameter(layer.weight.new_zeros(layer.weight.shape[0]),
                              requires_grad=layer.weight.requires_grad)


def _remove_layers(model: nn.Module, modules: dict[str, nn.Module], names: list[str],
                   stacks: list[str]) -> None:
    """The network skips these modules: deleted from a stack the plan names (see
    ``prunekit.surgery.stacks``), replaced by an identity anywhere else."""
    by_parent: dict[str, set[str]] = {}
    for name in names:
        by_parent.setdefault(_parent(name), set()).add(name.rsplit(".", 1)[-1])
    for parent_name, children in by_parent.items():
        parent = modules[parent_name]
        if parent_name in stacks and isinstance(parent, nn.ModuleList):
            remove_blocks(model, parent, children)
        else:
            for child in children:
                setattr(parent, child, nn.Identity())


class Rollback(Exception):
    """Raised inside ``apply_plan``'s check to undo the pruning after reading the model."""


T = TypeVar("T")


def evaluate_applied(model: nn.Module, plan: Plan, evaluate: Callable[[nn.Module], T]) -> T:
    """``evaluate(model)`` with the plan applied, then the model restored exactly.

    Errors from ``evaluate`` (a pruned model that no longer runs, say) propagate after the
    model is restored.
    """
    result: list[T] = []

    def evaluate_and_undo(pruned: nn.Module) -> None:
        result.append(evaluate(pruned))
        raise Rollback

    try:
        apply_plan(model, plan, check=evaluate_and_undo)
    except Rollback:
        pass
    return result[0]
