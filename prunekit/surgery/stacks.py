"""Stacks of blocks held in an ``nn.ModuleList`` (a transformer's layers).

Removing a block from such a stack deletes it, so the list, the blocks' ``layer_idx`` (which
key the KV cache) and the model config's ``num_hidden_layers`` and per-layer lists all
describe the shorter stack, and the model saves and reloads as the smaller architecture.
"""

from __future__ import annotations

from typing import Any

from torch import nn


def find_block_stack(model: nn.Module) -> str | None:
    """The ``nn.ModuleList`` of two or more blocks of one class holding the most parameters,
    if it holds at least half of the model's outside embedding tables: a transformer's
    layers."""
    embeddings = {id(p) for m in model.modules() if isinstance(m, nn.Embedding)
                  for p in m.parameters()}
    total = sum(p.numel() for p in model.parameters() if id(p) not in embeddings)
    best, best_size = None, 0
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) < 2:
            continue
        if len({type(block) for block in module}) != 1:
            continue
        size = sum(p.numel() for p in module.parameters())
        if size > best_size:
            best, best_size = name, size
    return best if best is not None and best_size * 2 >= total else None


def stack_blocks(model: nn.Module, stack: str) -> list[str]:
    return [f"{stack}.{index}" for index in range(len(model.get_submodule(stack)))]


def remove_blocks(model: nn.Module, stack: nn.ModuleList, removed: set[str]) -> None:
    """Delete the blocks named ``removed`` (keys of ``stack``), renumber the rest and the
    layer counts of the model's config."""
    blocks = list(stack._modules.items())
    kept_positions = [i for i, (key, _) in enumerate(blocks) if key not in removed]
    kept = [blocks[i][1] for i in kept_positions]
    before = len(blocks)
    stack._modules.clear()
    stack._modules.update({str(i): block for i, block in enumerate(kept)})
    for index, block in enumerate(kept):
        for module in block.modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = index
    config = model_config(model)
    if config is not None and getattr(config, "num_hidden_layers", None) == before:
        try:
            config.num_hidden_layers = len(kept)
        except (AttributeError, NotImplementedError):  # ProphetNet's config refuses it: the
            return  # config keeps the old count, and the model saves with pk.save
        # the lists with an entry per layer (``layer_types``, ``mlp_layer_types`` …) lose the
        # removed layers' entries, or the config no longer validates
        for key, value in list(vars(config).items()):
            if "layer" in key and isinstance(value, list) and len(value) == before:
                setattr(config, key, [value[i] for i in kept_positions])


def model_config(model: nn.Module) -> Any:
    """The Hugging Face-style config object of a model, if it has one."""
    config = getattr(model, "config", None)
    return config if config is not None and hasattr(config, "to_dict") else None
