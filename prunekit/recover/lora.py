"""Low-rank adapters for recovery on a small budget: peft's LoRA on every linear layer of
the student, trained in its place and merged back into the weights afterwards, so the
recovered model has the pruned model's architecture and nothing of peft in it."""

from __future__ import annotations

import re
from contextlib import contextmanager
from typing import Iterator

from torch import nn

from ..core.arguments import check_whole
from ..errors import ConfigError


def adapted_layers(student: nn.Module) -> list[str]:
    """The linear layers that get adapters: every ``nn.Linear`` except a language model's
    output layer (vocabulary-sized, and its weight is often the embedding's)."""
    output = getattr(student, "get_output_embeddings", lambda: None)()
    return [name for name, module in student.named_modules()
            if isinstance(module, nn.Linear) and module is not output]


@contextmanager
def low_rank_adapters(student: nn.Module, rank: int) -> Iterator[None]:
    """Inside the block only the adapters train (rank ``rank``, scaled by 1, no dropout);
    after it each is merged into its layer's weight. An error or an interrupt inside the
    block removes the adapters unmerged: the student is left with the weights it had."""
    check_whole(rank, "lora_rank")
    try:
        from peft import LoraConfig
        from peft.tuners.lora import LoraModel
    except ImportError:
        raise ConfigError('lora_rank needs peft: pip install "prunekit[lora]"') from None
    targets = adapted_layers(student)
    if not targets:
        raise ConfigError("lora_rank: the student has no linear layer to adapt")
    trainable = {name: p.requires_grad for name, p in student.named_parameters()}
    # one pattern matched against whole names (a list would match by suffix: "0" would
    # adapt every module whose name ends in ".0")
    pattern = "|".join(re.escape(name) for name in targets)
    config = LoraConfig(r=rank, lora_alpha=rank, lora_dropout=0.0,
                        target_modules=f"(?:{pattern})")
    tuner = LoraModel(student, config, "default")
    merged = False
    try:
        yield
        tuner.merge_and_unload()
        merged = True
    finally:
        if not merged:
            tuner.unload()
        for name, parameter in student.named_parameters():
            parameter.requires_grad_(trainable.get(name, parameter.requires_grad))
