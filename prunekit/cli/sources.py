"""Where the command line gets models, inputs and data from.

A model is ``torchvision:NAME``, ``timm:NAME``, ``hf:PATH`` (a Hugging Face model directory),
``ultralytics:CONFIG.yaml`` or ``ultralytics:FILE.pt``, ``open_clip:NAME`` (its image tower)
or a factory ``path/to/file.py:NAME`` / ``package.module:NAME``; ``--checkpoint`` loads a
state dict into it. Data is a factory in the same form that
returns ``(train, test)``: two re-iterable collections of ``(inputs, labels)`` batches, such as
``DataLoader``s (``prunekit.cli.data:digits_loaders`` is one).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.batches import split_batch
from ..errors import ConfigError
from .model_sources import build_model, call_factory, first_line, split_spec


def load_model(spec: str, checkpoint: Path | None = None, trust_pickle: bool = False
               ) -> nn.Module:
    """A registered source's model (``torchvision:NAME``, ``hf:PATH`` …, see
    ``model_sources``) or ``path/to/file.py:factory`` (or ``package.module:factory``), with
    random weights or, given ``checkpoint``, the weights of that state dict. No file is unpickled in a way that can run code unless
    ``trust_pickle`` (``--trust-pickle``) says the user trusts it."""
    model = build_model(spec, trust_pickle)
    if checkpoint is not None:
        load_checkpoint(model, checkpoint)
    return model


def load_checkpoint(model: nn.Module, path: Path) -> None:
    """Load a state dict into ``model``: a safetensors file, or a PyTorch file read with
    ``weights_only=True`` (a bare state dict, or one under ``"state_dict"`` or ``"model"``)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--checkpoint {str(path)!r} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ConfigError(f"--checkpoint {str(path)!r} cannot be read as a state dict "
                          f"({type(error).__name__}: {first_line(error)})") from error
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor)
                                              for v in state.values()):
        raise ConfigError(f"--checkpoint {str(path)!r} holds a {type(state).__name__}, not a "
                          f"state dict of tensors")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:  # torch lists each mismatch on a line of its own
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        raise ConfigError(f"--checkpoint {str(path)!r} does not fit the model: "
                          f"{(lines[1] if len(lines) > 1 else lines[0])[:300]}") from error


def load_data(spec: str) -> tuple[Any, Any]:
    """``(train, test)`` batches from the factory ``spec`` names."""
    source, name = split_spec(spec, "prunekit.cli.data:digits_loaders", "--data")
    loaded = call_factory(source, name, f"--data {spec!r}")
    if not (isinstance(loaded, tuple) and len(loaded) == 2):
        raise ConfigError(f"--data {spec!r}: the factory must return (train, test), "
                                 f"got {type(loaded).__name__}")
    return loaded


def first_inputs(batches: Any, labels: bool = True) -> Any:
    """The inputs of the first batch, as example inputs. A batch is ``(inputs, labels)`` or a
    ``pk.Batch``; with ``labels=False`` (pruning, which reads no labels unless its criterion
    does) the model's inputs alone are a batch too."""
    try:
        batch = next(iter(batches))
    except (StopIteration, TypeError):
        raise ConfigError("--data: the factory's batches must be iterable, with at least one "
                          "batch") from None
    inputs, targets = split_batch(batch)
    if labels and targets is None:
        raise ConfigError("--data: the batches must be (inputs, labels) pairs or "
                          "pk.Batch(inputs, labels): this command evaluates the model")
    return inputs


def example_inputs(network: nn.Module, input_shape: str | None):
    """Random inputs for the model: ``input_ids`` (batch, tokens) for a Hugging Face text
    model, ``pixel_values`` for a vision one, else a tensor of ``input_shape``."""
    config = getattr(network, "config", None)
    main_input = getattr(network, "main_input_name", None)
    generator = torch.Generator().manual_seed(0)
    if config is not None and main_input == "input_ids":
        shape = parse_shape(input_shape or "2,16")
        if len(shape) != 2:
            raise ConfigError(f"--input-shape {input_shape!r}: a text model takes "
                              f"BATCH,TOKENS")
        return {"input_ids": torch.randint(0, config.vocab_size, shape, generator=generator)}
    if config is not None and main_input == "pixel_values":
        size = getattr(config, "image_size", 224)
        default = f"1,{getattr(config, 'num_channels', 3)},{size},{size}"
        return {"pixel_values": torch.randn(parse_shape(input_shape or default),
                                            generator=generator)}
    return torch.randn(parse_shape(input_shape or "1,3,224,224"), generator=generator)


def parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise ConfigError(f"--input-shape {text!r}: expected comma-separated integers, "
                          f"e.g. 1,3,224,224")
    if not shape or min(shape) < 1:
        raise ConfigError(f"--input-shape {text!r}: every size must be positive")
    return shape


def parse_ratios(text: str) -> tuple[float, ...]:
    try:
        ratios = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise ConfigError(f"--ratios {text!r}: expected comma-separated ratios, e.g. 0.25,0.5")
    if not ratios or not all(0 <= r < 1 for r in ratios):
        raise ConfigError(f"--ratios {text!r}: every ratio must be in [0, 1)")
    return ratios
