"""Keep a Hugging Face model's config true to its pruned shapes.

After pruning, the config's size fields (``num_attention_heads``, ``num_key_value_heads``,
``intermediate_size`` …) are inferred from the parameters, one field at a time: the field is
doubled on a copy of the config, a model is built from it on the meta device (no memory, no
weights), and the parameter dims that change are the ones the field sizes; the pruned
model's size of those dims gives the field's new value, kept if more shapes then agree. The
new config is kept only if a model built from it has exactly the pruned model's shapes, so
``save_pretrained``/``from_pretrained`` round-trips.
Models no single config can describe (heads differing per layer, BERT-style attention whose
head size is ``hidden_size / num_attention_heads``) keep their config and save with
``pk.save``.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn

from ...surgery.configs import register_bias_companions, register_config_updater
from ...surgery.stacks import model_config

SIZE_FIELDS = ("num_attention_heads", "num_key_value_heads", "intermediate_size", "hidden_dim",
               "head_dim", "hidden_size")


@register_config_updater
def update_config(model: nn.Module) -> bool | None:
    """Make ``model.config`` describe the pruned model if one config can; True if it does
    (``save_pretrained`` then reloads it with plain ``from_pretrained``), False if not,
    None for a model without a Hugging Face config."""
    config = model_config(model)
    if config is None or not hasattr(model, "config_class"):
        return None
    _untie(model, config)
    actual = {name: tuple(p.shape) for name, p in model.named_parameters()}
    try:
        original = _shapes(model, config)
        flagged = _with_bias_flags(model, config, original, actual)
        if flagged is not config:
            original = _shapes(model, flagged)
    except Exception:  # a model its own config cannot rebuild: nothing to keep true
        return False
    if _fits(original, actual):
        if not _same_scalars(model, flagged):
            return False
        _copy_flags(flagged, config)
        return True
    candidate, current = _with_pinned_head_dim(model, flagged, original), original
    for name in SIZE_FIELDS:  # one field at a time, kept only if more shapes then agree
        value = getattr(candidate, name, None)
        if not isinstance(value, int) or value <= 0 or _derived(candidate, name):
            continue
        inferred = _infer(model, candidate, name, value, current, actual)
        if inferred is None or inferred == value:
            continue
        trial = copy.deepcopy(candidate)
        setattr(trial, name, inferred)
        try:
            shapes = _shapes(model, trial)
        except Exception:
            continue
        if _mismatches(shapes, actual) < _mismatches(current, actual):
            candidate, current = trial, shapes
    if not _fits(current, actual) or not _same_scalars(model, candidate):
        return False
    if not _reloads(model, candidate, actual):
        return False
    for name in SIZE_FIELDS:
        if hasattr(candidate, name) and not _derived(candidate, name):
            setattr(config, name, getattr(candidate, name))
    _copy_flags(candidate, config)
    return True


def _bias_flags(config: Any) -> list[str]:
    """The config's switched-off bias switches (Llama's ``attention_bias``, ``mlp_bias``)."""
    return [name for name, value in config.to_dict().items()
            if name.endswith("bias") and value is False]


def _with_bias_flags(model: nn.Module, config: Any, original: dict[str, tuple],
                     actual: dict[str, tuple]) -> Any:
    """``config`` with each bias switch on that builds biases the pruned model has and the
    config does not (bias compensation gave them): a copy, or ``config`` itself if none."""
    missing = set(actual) - set(original)
    switches = [name for name, added in _bias_switches(model, config, set(original)).items()
                if added & missing] if missing else []
    if not switches:
        return config
    flagged = copy.deepcopy(config)
    for name in switches:
        setattr(flagged, name, True)
    return flagged


def _bias_switches(model: nn.Module, config: Any, built: set[str]) -> dict[str, set[str]]:
    """Per switched-off bias switch of ``config``, the parameters a model built with it on
    has beyond ``built`` (the names a model built from ``config`` has)."""
    added = {}
    for name in _bias_flags(config):
        trial = copy.deepcopy(config)
        setattr(trial, name, True)
        try:
            added[name] = set(_shapes(model, trial)) - built
        except Exception:
            continue
    return added


def _copy_flags(source: Any, config: Any) -> None:
    for name in _bias_flags(config):
        if getattr(source, name, False) is True:
            setattr(config, name, True)


@register_bias_companions
def companion_biases(model: nn.Module, layers: list[str]) -> list[str] | None:
    """The layers a switch of the model's config gives a bias together with ``layers``:
    Llama's ``mlp_bias`` gives the gate and up projections one too, ``attention_bias`` the
    query, key and value projections with the output projection."""
    config = model_config(model)
    if config is None or not hasattr(model, "config_class"):
        return None
    wanted = {f"{name}.bias" for name in layers}
    try:
        current = set(_shapes(model, config))
    except Exception:
        return []
    found = {n.removesuffix(".bias") for added in _bias_switches(model, config, current).values()
             if added & wanted for n in added if n.endswith(".bias")}
    return sorted(found - set(layers))


def _untie(model: nn.Module, config: Any) -> None:
    """An output layer given its own weight (a hidden-size rotation folds the final norm's
    scale into it alone) is no longer tied: the config says so, or a reload would tie them
    back."""
    if not getattr(config, "tie_word_embeddings", False):
        return
    inputs, outputs = model.get_input_embeddings(), model.get_output_embeddings()
    if inputs is not None and outputs is not None and inputs.weight is not outputs.weight:
        config.tie_word_embeddings = False


def _reloads(model: nn.Module, config: Any, actual: dict[str, tuple]) -> bool:
    """Whether ``config`` survives what ``save_pretrained`` and ``from_pretrained`` do with
    it under the installed transformers: written out as a dict, read back (which validates
    it: 6 heads of 16 in a hidden size of 128 is refused), and a model built from what was
    read has the pruned model's shapes."""
    try:
        reread = type(config).from_dict(config.to_dict())
        validate = getattr(reread, "validate", None)
        if callable(validate):
            validate()
        return _fits(_shapes(model, reread), actual)
    except Exception:  # transformers' own validation errors have no common base
        return False


def _derived(config: Any, name: str) -> bool:
    """A size the config computes from others (Falcon's ``head_dim`` property): it follows
    them and cannot be set."""
    return isinstance(getattr(type(config), name, None), property)


def _with_pinned_head_dim(model: nn.Module, config: Any, original: dict[str, tuple]) -> Any:
    """A config that states ``head_dim`` where the model reads it but the config left it to
    be ``hidden_size // num_attention_heads`` (Qwen2), so that the head count can change."""
    heads, hidden = getattr(config, "num_attention_heads", None), getattr(config, "hidden_size", None)
    if (getattr(config, "head_dim", None) is not None or not heads or not hidden
            or hidden % heads or _derived(config, "head_dim")):
        return config
    pinned = copy.deepcopy(config)
    pinned.head_dim = hidden // heads
    try:
        return pinned if _shapes(model, pinned) == original else config
    except Exception:
        return config


def _infer(model: nn.Module, config: Any, name: str, value: int,
           original: dict[str, tuple], actual: dict[str, tuple]) -> int | None:
    """The field's value the pruned shapes imply, if every dim it sizes agrees."""
    perturbed = copy.deepcopy(config)
    setattr(perturbed, name, value * 2)
    try:
        doubled = _shapes(model, perturbed)
    except Exception:
        return None
    implied: set[int | None] = set()
    for param, shape in original.items():
        if param not in actual or doubled.get(param) == shape:
            continue
        for before, after, pruned in zip(shape, doubled.get(param, shape), actual[param]):
            if before != after and before:  # (an empty dim implies nothing)
                implied.add(pruned * value // before if pruned * value % before == 0 else None)
    return implied.pop() if len(implied) == 1 and None not in implied else None


def _shapes(model: nn.Module, config: Any) -> dict[str, tuple]:
    with torch.device("meta"):
        built = type(model)(config)
    return {name: tuple(p.shape) for name, p in built.named_parameters()}


def _same_scalars(model: nn.Module, config: Any) -> bool:
    """Whether a model built from ``config`` keeps the same float settings on every module.
    Some are computed from sizes when a module is built and not saved (Gemma scales its
    embeddings by √hidden_size): a narrower hidden size rebuilt from the config would
    change them, so such a model must be reloaded with ``pk.load``."""
    with torch.device("meta"):
        built = dict(type(model)(config).named_modules())
    for name, module in model.named_modules():
        twin = built.get(name)
        for key, value in vars(module).items():
            if isinstance(value, float) and twin is not None:
                other = getattr(twin, key, None)
                if isinstance(other, float) and not math.isclose(value, other, rel_tol=1e-9):
                    return False
    return True


def _mismatches(built: dict[str, tuple], actual: dict[str, tuple]) -> int:
    return len(set(built) ^ set(actual)) + sum(built.get(n) != shape for n, shape in actual.items())


def _fits(built: dict[str, tuple], actual: dict[str, tuple]) -> bool:
    return _mismatches(built, actual) == 0
