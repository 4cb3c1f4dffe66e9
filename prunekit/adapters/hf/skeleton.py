"""A Hugging Face model without its weights: parameters on the meta device (shapes, no
memory), buffers real, and the parts streamed pruning needs loaded from the checkpoint one at a
time and released again."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch
import transformers
from torch import nn

from ...errors import ConfigError
from .checkpoint import CheckpointReader
from .conversion import LoadedView
from .memory import return_freed_memory


@contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Modules built inside the block keep their parameters on the meta device, so neither
    the memory nor the time of initialising them is spent. Buffers stay real: a rotary
    embedding's frequencies are computed at construction and are in no checkpoint."""
    register = nn.Module.register_parameter

    def on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        register(module, name, param)
        if param is not None and param.device.type != "meta":
            module._parameters[name] = nn.Parameter(param.to("meta"),
                                                    requires_grad=param.requires_grad)

    nn.Module.register_parameter = on_meta
    try:
        yield
    finally:
        nn.Module.register_parameter = register


def saved_class(config: Any) -> type | None:
    """The transformers class a folder was saved from (``config.architectures``: the model
    with its task head, ``LlamaForCausalLM``), or None where it names none transformers
    has."""
    names = getattr(config, "architectures", None) or []
    found = getattr(transformers, names[0], None) if names and isinstance(names[0], str) else None
    return found if isinstance(found, type) and issubclass(
        found, transformers.PreTrainedModel) else None


def empty_model(config: Any) -> nn.Module:
    """The class the folder was saved from (``config.architectures``), else a causal LM,
    built from ``config`` with no weights, in eval mode."""
    model_class = saved_class(config)
    with parameters_on_meta():
        if model_class is not None:
            model = model_class(config)
        else:
            model = transformers.AutoModelForCausalLM.from_config(config)
    return model.eval()


def load_module(module: nn.Module, reader: CheckpointReader | LoadedView, prefix: str,
                dtype: torch.dtype | None = None) -> dict[str, torch.dtype]:
    """Give ``module`` its weights from the checkpoint (the tensors named ``prefix…``, as the
    loaded model names them), in the checkpoint's dtype or, floating-point ones, in
    ``dtype``; returns each tensor's dtype in the checkpoint."""
    tensors, stored = {}, {}
    for key, tensor in reader.under_lazily(prefix):  # cast one at a time: no second copy
        stored[key] = tensor.dtype
        cast = dtype is not None and tensor.is_floating_point()
        tensors[key] = tensor.to(dtype) if cast else tensor
    expected = set(module.state_dict())
    if set(tensors) != expected:
        missing = sorted(expected - set(tensors))[:3]
        extra = sorted(set(tensors) - expected)[:3]
        raise ConfigError(f"{reader.folder}: the checkpoint's tensors under {prefix!r} are not "
                          f"the model's (missing {missing}, unexpected {extra}), even as "
                          f"transformers converts them when it loads them; prune it in "
                          f"memory with pk.prune")
    module.load_state_dict(tensors, strict=True, assign=True)
    return stored


def release(module: nn.Module) -> None:
    """Drop ``module``'s weights, keeping their shapes on the meta device, and hand the
    memory they held back to the system."""
    for sub in module.modules():
        for name, param in list(sub._parameters.items()):
            if param is not None and param.device.type != "meta":
                sub._parameters[name] = nn.Parameter(torch.empty_like(param, device="meta"),
                                                     requires_grad=param.requires_grad)
    return_freed_memory()


def parameter_places(model: nn.Module) -> list[list[tuple[nn.Module, str, str]]]:
    """Every parameter, once, with each place it sits: ``(module, attribute, full name)``;
    a tied tensor (embeddings shared with the output layer) has several places, so what is
    put in one of them can be put in all and the ties hold."""
    places: dict[int, list[tuple[nn.Module, str, str]]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        for leaf, param in module._parameters.items():
            if param is not None:
                full = f"{name}.{leaf}" if name else leaf
                places.setdefault(id(param), []).append((module, leaf, full))
    return list(places.values())


def output_embeddings(model: nn.Module) -> set[str]:
    """Names of the output layer's parameters (a language model's head): not needed to
    calibrate, the blocks come before it."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        return set()
    return {name for name, module in model.named_modules() if module is head}
