"""Where the command line gets models, inputs and data from.

A model is ``torchvision:NAME``, ``timm:NAME``, ``hf:PATH`` (a Hugging Face model directory),
``ultralytics:CONFIG.yaml`` or ``ultralytics:FILE.pt``, ``open_clip:NAME`` (its image tower)
or a factory ``path/to/file.py:NAME`` / ``package.module:NAME``; ``--checkpoint`` loads a
state dict into it. Data is a factory in the same form that
returns ``(train, test)``: two re-iterable collections of ``(inputs, labels)`` batches, such as
``DataLoader``s (``prunekit.cli.data:digits_loaders`` is one).
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..batches import split_batch
from ..errors import ConfigError, did_you_mean


def load_model(spec: str, checkpoint: Path | None = None, trust_pickle: bool = False
               ) -> nn.Module:
    """``torchvision:NAME``, ``timm:NAME``, ``hf:PATH`` or ``path/to/file.py:factory`` (or
    ``package.module:factory``), with random weights or, given ``checkpoint``, the weights
    of that state dict. No file is unpickled in a way that can run code unless
    ``trust_pickle`` (``--trust-pickle``) says the user trusts it."""
    model = _build_model(spec, trust_pickle)
    if checkpoint is not None:
        load_checkpoint(model, checkpoint)
    return model


def _build_model(spec: str, trust_pickle: bool = False) -> nn.Module:
    if spec.startswith("hf:"):
        return _load_hf(spec[3:])
    source, name = _split(spec, "torchvision:resnet18", "--model")
    if source == "torchvision":
        import torchvision

        names = torchvision.models.list_models()
        if name not in names:
            raise ConfigError(f"--model {spec!r}: torchvision has no model {name!r}"
                              f"{did_you_mean(name, names)}")
        return torchvision.models.get_model(name, weights=None)
    if source == "timm":
        import timm

        names = timm.list_models()
        if name not in names:
            raise ConfigError(f"--model {spec!r}: timm has no model {name!r}"
                              f"{did_you_mean(name, names)}")
        return timm.create_model(name, pretrained=False)
    if source == "ultralytics":
        return _load_ultralytics(spec, name, trust_pickle)
    if source == "open_clip":
        return _load_open_clip(spec, name)
    model = _call_factory(source, name, f"--model {spec!r}")
    if not isinstance(model, nn.Module):
        raise ConfigError(f"--model {spec!r}: the factory returned {type(model).__name__}, "
                          f"not a torch.nn.Module")
    return model


def _load_ultralytics(spec: str, name: str, trust_pickle: bool = False) -> nn.Module:
    """An Ultralytics model's network: built from one of its YAML configs (``yolo11n.yaml``,
    ``rtdetr-l.yaml``: random weights) or read from a ``.pt`` checkpoint on disk: safely
    (no code in the file runs), or with ``trust_pickle`` as Ultralytics reads it (a pickle
    that can run code: only for a file the user trusts)."""
    ultralytics = _package("ultralytics", spec)
    if name.endswith(".pt"):
        if not Path(name).is_file():  # Ultralytics would try to download it
            raise ConfigError(f"--model {spec!r}: no checkpoint {name!r} on disk (give a file "
                              f"path, or a YAML config such as yolo11n.yaml)")
    elif not name.endswith((".yaml", ".yml")):
        raise ConfigError(f"--model {spec!r}: give a YAML config (yolo11n.yaml, "
                          f"rtdetr-l.yaml) or a .pt checkpoint file")
    if name.endswith(".pt") and not trust_pickle:
        from ..integrations.ultralytics import load_network_safely

        return load_network_safely(name, f"--model {spec!r}")
    builder = ultralytics.RTDETR if "rtdetr" in Path(name).name else ultralytics.YOLO
    try:
        return builder(name).model
    except (FileNotFoundError, ValueError, KeyError) as error:
        raise ConfigError(f"--model {spec!r}: Ultralytics cannot build it "
                          f"({type(error).__name__}: {_first_line(error)})") from error


def _load_open_clip(spec: str, name: str) -> nn.Module:
    """The image tower of an open_clip model (random weights): its ``visual`` module."""
    open_clip = _package("open_clip", spec)
    names = open_clip.list_models()
    if name not in names:
        raise ConfigError(f"--model {spec!r}: open_clip has no model {name!r}"
                          f"{did_you_mean(name, names)}")
    return open_clip.create_model(name, pretrained=None).visual


def _package(module: str, spec: str):
    try:
        return importlib.import_module(module)
    except ImportError as error:
        pip_name = {"open_clip": "open-clip-torch"}.get(module, module)
        raise ConfigError(f"--model {spec!r} needs the {module} package: pip install "
                          f"{pip_name}") from error


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
                          f"({type(error).__name__}: {_first_line(error)})") from error
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


def _first_line(error: BaseException) -> str:
    return next((line.strip() for line in str(error).splitlines() if line.strip()), "")[:300]


def load_data(spec: str) -> tuple[Any, Any]:
    """``(train, test)`` batches from the factory ``spec`` names."""
    source, name = _split(spec, "prunekit.cli.data:digits_loaders", "--data")
    loaded = _call_factory(source, name, f"--data {spec!r}")
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


def _split(spec: str, example: str, option: str) -> tuple[str, str]:
    source, _, name = spec.rpartition(":")
    if not source or not name:
        raise ConfigError(f"{option} {spec!r}: expected SOURCE:NAME, e.g. {example}")
    return source, name


def _call_factory(source: str, name: str, option: str) -> Any:
    """What the factory returns; any failure is one ConfigError led by ``option``."""
    try:
        return _factory(source, name)()
    except ConfigError as error:
        raise ConfigError(f"{option}: {error}") from error
    except Exception as error:
        raise ConfigError(f"{option}: the factory raised {type(error).__name__}: "
                          f"{error}") from error


def _factory(source: str, name: str) -> Callable[[], Any]:
    if source.endswith(".py"):
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"{source!r} does not exist")
        module_spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(source)
        except ImportError as error:
            raise ConfigError(f"{source!r} cannot be imported: {error}")
    factory = getattr(module, name, None)
    if not callable(factory):
        raise ConfigError(f"{source!r} has no factory {name!r}")
    return factory


def _load_hf(path: str) -> nn.Module:
    if not (Path(path) / "config.json").is_file():
        raise ConfigError(f"--model hf:{path}: not a Hugging Face model directory (no "
                          f"config.json)")
    import transformers

    from ..hf.skeleton import saved_class

    transformers.logging.set_verbosity_error()
    try:
        # the class the folder was saved from, with its task head (a causal LM's lm_head, a
        # classifier), as streamed pruning builds it; AutoModel would drop the head
        model_class = saved_class(transformers.AutoConfig.from_pretrained(path))
        return (model_class or transformers.AutoModel).from_pretrained(path)
    except Exception as error:
        raise ConfigError(f"--model hf:{path}: transformers cannot load it: "
                          f"{type(error).__name__}: {error}") from error
