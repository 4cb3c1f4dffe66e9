"""Text for a language model on the command line: a Hugging Face model read from a GGUF file,
its tokenizer, ``--data text:PATH`` (plain text files cut into token sequences),
``--data samples:N`` (N sequences the model writes itself) and both, joined by ``+``."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError

TEXT_PREFIX = "text:"
SAMPLES_PREFIX = "samples:"
SEQUENCE = 256  # tokens per sequence of --data text:
BATCH = 4  # sequences per batch
# sequences per step of --recover-minutes (--recover-batch): on two cores a time budget buys
# as many sequences in fours as in pairs, in half the steps. On SmolLM2, one run each: the
# 50% recipe after 15 minutes ×1.50 on held-out help topics in pairs, ×1.57 in fours (×2.66
# and ×2.64 on text unlike the calibration); 20% of it after 10, ×1.12 and ×1.13 (×1.45 both)
RECOVERY_BATCH = 2
SUFFIXES = (".txt", ".md", ".rst")  # what a folder given to --data text: is read for


def is_gguf(path: str) -> bool:
    return path.endswith(".gguf")


def load_gguf(path: str, option: str) -> nn.Module:
    """A causal LM from a GGUF file, dequantized to float32 (transformers reads the file; it
    needs the gguf package)."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"{option}: no GGUF file {path!r}")
    import transformers

    _needs("gguf", option)
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(
            str(file.parent), gguf_file=file.name, dtype=torch.float32)
    except Exception as error:
        raise ConfigError(f"{option}: transformers cannot read the GGUF file: "
                          f"{type(error).__name__}: {str(error).splitlines()[0][:200]}") from error
    return dequantized(model)


def dequantized(model: nn.Module) -> nn.Module:
    """A model transformers dequantized from GGUF, no longer marked as quantized: its
    weights are plain float32 tensors, but the GGUF quantizer it keeps makes
    ``save_pretrained`` refuse it ("quantized with gguf and is not serializable")."""
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model


def tokenizer_for(model: str, option: str = "--data") -> Any:
    """The tokenizer of ``--model hf:PATH`` (a folder, or a GGUF file, which holds one)."""
    if not model.startswith("hf:"):
        raise ConfigError(f"{option}: text is read with the model's tokenizer; give --model "
                          f"hf:PATH (a Hugging Face folder or a .gguf file), not {model!r}")
    import transformers

    path = Path(model[3:])
    try:
        if is_gguf(str(path)):
            return transformers.AutoTokenizer.from_pretrained(str(path.parent),
                                                              gguf_file=path.name)
        return transformers.AutoTokenizer.from_pretrained(str(path))
    except Exception as error:
        raise ConfigError(f"{option}: the model has no tokenizer transformers can load "
                          f"({type(error).__name__}: {str(error).splitlines()[0][:200]})"
                          ) from error


def is_language_data(spec: str) -> bool:
    """Whether ``--data`` names text or samples (``text:…``, ``samples:N``, joined by ``+``)."""
    return spec.startswith((TEXT_PREFIX, SAMPLES_PREFIX))


def language_batches(spec: str, model: str, network: nn.Module | None,
                     progress: Any = None) -> list[dict[str, torch.Tensor]]:
    """The batches of ``--data text:PATH``, ``samples:N`` or ``text:PATH+samples:N``; with
    both, their batches alternate, so the first calibration batches hold both."""
    sources = []
    for part in spec.split("+"):
        if part.startswith(TEXT_PREFIX):
            sources.append(text_batches(part, tokenizer_for(model)))
        elif part.startswith(SAMPLES_PREFIX):
            sources.append(sample_batches(part, network, progress))
        else:
            raise ConfigError(f"--data {spec!r}: {part!r} is neither text:PATH nor "
                              f"samples:N; join the two with +")
    return alternating(*sources)


def alternating(*sources: list) -> list:
    """A batch of each source in turn, then the rest of the longer ones."""
    return [batch for row in itertools.zip_longest(*sources) for batch in row
            if batch is not None]


def recovery_batches(batches: list[dict[str, torch.Tensor]],
                     size: int = RECOVERY_BATCH) -> list[dict[str, torch.Tensor]]:
    """The sequences of ``batches`` (all of one length, as text and samples are), in order,
    in batches of ``size``; the last may hold fewer."""
    return in_batches(torch.cat([batch["input_ids"] for batch in batches]), size)


def in_batches(ids: torch.Tensor, size: int) -> list[dict[str, torch.Tensor]]:
    """``ids`` (sequences × tokens) as model inputs, ``size`` sequences each; the last may
    hold fewer."""
    return [{"input_ids": ids[start:start + size]} for start in range(0, len(ids), size)]


def sample_batches(part: str, network: nn.Module,
                   progress: Any = None) -> list[dict[str, torch.Tensor]]:
    """``samples:N``: N sequences of ``SEQUENCE`` tokens sampled from the model itself (seed
    0), in batches of ``BATCH``."""
    from ..adapters.hf.samples import sample_text

    count = part[len(SAMPLES_PREFIX):]
    if not count.isdigit() or int(count) < 1:
        raise ConfigError(f"--data {part!r}: give the number of sequences to sample, e.g. "
                          f"samples:64")
    return in_batches(sample_text(network, int(count), SEQUENCE, progress=progress), BATCH)


def text_batches(spec: str, tokenizer: Any) -> list[dict[str, torch.Tensor]]:
    """``text:PATH[,PATH…]`` (files, or folders of .txt/.md/.rst files) tokenised and cut
    into batches of ``BATCH`` sequences of ``SEQUENCE`` tokens, in order; the last partial
    batch is dropped, unless the text holds fewer than ``BATCH`` sequences (one batch of
    them all)."""
    files = []
    for part in spec[len(TEXT_PREFIX):].split(","):
        path = Path(part)
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.suffix in SUFFIXES and p.is_file())
        elif path.is_file():
            files.append(path)
        else:
            raise ConfigError(f"--data {spec!r}: no file or folder {part!r}")
    try:
        text = "\n\n".join(file.read_text(encoding="utf-8") for file in files)
    except UnicodeDecodeError as error:
        raise ConfigError(f"--data {spec!r}: not UTF-8 text ({error.reason})") from None
    ids = torch.as_tensor(tokenizer(text)["input_ids"], dtype=torch.long)
    count = len(ids) // SEQUENCE
    if count == 0:
        raise ConfigError(f"--data {spec!r}: {len(ids)} tokens, fewer than one sequence of "
                          f"{SEQUENCE}; give more text")
    sequences = ids[:count * SEQUENCE].view(count, SEQUENCE)
    return [{"input_ids": sequences[start:start + BATCH]}
            for start in range(0, count, BATCH) if start + BATCH <= count] or [
        {"input_ids": sequences}]


def _needs(package: str, option: str) -> None:
    import importlib.util

    if importlib.util.find_spec(package) is None:
        raise ConfigError(f"{option}: reading GGUF needs the {package} package: pip install "
                          f"\"prunekit[gguf]\"")
