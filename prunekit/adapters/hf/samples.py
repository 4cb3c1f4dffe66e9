"""Text a language model writes itself, to calibrate and recover it on.

Calibration text decides which neurons look unimportant: a model calibrated on Python's
documentation keeps what Python's documentation uses and drops what it does not (on
SmolLM2-135M, a quarter of the MLP pruned by FLAP's criterion on such text forgets that
Paris is the capital of France; calibrated on its own samples, it does not). Samples drawn
from the model's own distribution, starting from nothing but its first token, exercise what
the model knows in proportion to how it uses it, and need no corpus (as self-data
distillation does; Thangarasa et al., 2024).
"""

from __future__ import annotations

import torch
from torch import nn

from ...core.progress import ProgressOption, Step, reporter
from ...errors import ConfigError


def sample_text(model: nn.Module, sequences: int = 64, length: int = 256, *, batch: int = 16,
                seed: int = 0, temperature: float = 1.0,
                progress: ProgressOption = None) -> torch.Tensor:
    """``sequences`` token sequences of ``length`` tokens, sampled from ``model``.

    Each starts from the model's beginning-of-text token (its end-of-text token where it
    has none) and runs ``length - 1`` sampled tokens on, the end-of-text token never
    chosen, so every sequence is whole. The random state of the caller is left as it was.

    Args:
        model: a transformers causal language model (one with ``generate``); left in the
            mode it was in and never changed.
        sequences: how many sequences.
        length: tokens in each, the first one included.
        batch: sequences generated at once (memory grows with it).
        seed: the sampling seed: the same seed gives the same text.
        temperature: the sampling temperature (1.0: the model's own distribution).
        progress: ``True``, ``False``/``None`` or a callable taking a ``pk.Step``.

    Returns:
        A ``(sequences, length)`` tensor of token ids on the model's device.

    Example:
        >>> ids = pk.sample_text(model, sequences=64)
        >>> calibration = [{"input_ids": ids[i:i + 4]} for i in range(0, 64, 4)]
    """
    generate = getattr(model, "generate", None)
    if not callable(generate):
        raise ConfigError(f"model: pk.sample_text needs a language model that generates "
                          f"(a transformers ...ForCausalLM); {type(model).__name__} has no "
                          f"generate")
    for name, value, least in (("sequences", sequences, 1), ("length", length, 2),
                               ("batch", batch, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ConfigError(f"{name}={value!r}: give a whole number of at least {least}")
    if not temperature > 0:
        raise ConfigError(f"temperature={temperature!r}: give a positive temperature")
    first = _first_token(model)
    report = reporter(progress, "pk.sample_text progress")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    pieces = []
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            for start in range(0, sequences, batch):
                count = min(batch, sequences - start)
                ids = torch.full((count, 1), first, dtype=torch.long, device=device)
                with torch.no_grad():
                    out = generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                   do_sample=True, temperature=temperature, top_k=0,
                                   top_p=1.0, max_new_tokens=length - 1,
                                   min_new_tokens=length - 1, pad_token_id=first)
                pieces.append(out[:, :length])
                report(Step("sampling text", start + count, sequences,
                            detail=f"{length} tokens each"))
    finally:
        model.train(was_training)
    return torch.cat(pieces)


def _first_token(model: nn.Module) -> int:
    config = getattr(model, "generation_config", None) or getattr(model, "config", None)
    for name in ("bos_token_id", "eos_token_id"):
        token = getattr(config, name, None)
        if isinstance(token, (list, tuple)):
            token = token[0] if token else None
        if token is not None:
            return int(token)
    raise ConfigError("model: its config names no beginning- or end-of-text token to start "
                      "sampling from; set model.config.bos_token_id")
