"""Where ``--model`` finds a model: a registry of sources, each a prefix (``torchvision:``,
``hf:`` …) and a function that builds the model its name asks for.

A library adds its own with one call::

    register_model_source("mylib", lambda name, option, trust_pickle: mylib.build(name),
                          example="mylib:NAME")

after which ``--model mylib:tiny`` builds ``mylib.build("tiny")``. Anything not led by a
registered prefix is a factory, ``path/to/file.py:NAME`` or ``package.module:NAME``, run only
because the user named it. The built-in sources are registered at the end of this file.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from torch import nn

from ..errors import ConfigError, did_you_mean
from .text import is_gguf, load_gguf

# load(name, option, trust_pickle): the model ``name`` asks for; ``option`` ("--model 'x:y'")
# leads every error, and ``trust_pickle`` says the user trusts pickled files
Loader = Callable[[str, str, bool], nn.Module]


@dataclass(frozen=True)
class ModelSource:
    """A registered source: its prefix, how it builds a model, and how ``--help`` shows it."""

    prefix: str
    load: Loader
    example: str


_SOURCES: dict[str, ModelSource] = {}


def register_model_source(prefix: str, load: Loader, *, example: str = "") -> None:
    """Make ``--model PREFIX:NAME`` build ``load(NAME, option, trust_pickle)``.

    Args:
        prefix: what leads the spec, without its colon (``"torchvision"``).
        load: builds the model; raises ``ConfigError`` naming ``option`` for a bad name.
        example: how ``--help`` shows the source (default ``PREFIX:NAME``).
    """
    if not isinstance(prefix, str) or not prefix.isidentifier():
        raise ConfigError(f"register_model_source: prefix must be a name such as 'timm', "
                          f"got {prefix!r}")
    if not callable(load):
        raise ConfigError(f"register_model_source({prefix!r}): load must be callable")
    _SOURCES[prefix] = ModelSource(prefix, load, example or f"{prefix}:NAME")


def model_help() -> str:
    """The ``--model`` help: every registered source, then the factory form."""
    return ", ".join(s.example for s in _SOURCES.values()) + " or path/to/file.py:factory"


def build_model(spec: str, trust_pickle: bool = False) -> nn.Module:
    """The model ``spec`` names, with random weights (or the weights its file holds)."""
    prefix, _, name = spec.partition(":")
    option = f"--model {spec!r}"
    if prefix in _SOURCES and name:
        return _SOURCES[prefix].load(name, option, trust_pickle)
    source, name = split_spec(spec, "torchvision:resnet18", "--model")
    try:
        model = call_factory(source, name, option)
    except ConfigError as error:
        if "." in source or "/" in source:  # a module or file path: no source was meant
            raise
        raise ConfigError(f"{error}{did_you_mean(source, list(_SOURCES))}") from error
    if not isinstance(model, nn.Module):
        raise ConfigError(f"{option}: the factory returned {type(model).__name__}, "
                          f"not a torch.nn.Module")
    return model


def _torchvision(name: str, option: str, trust_pickle: bool) -> nn.Module:
    import torchvision

    names = torchvision.models.list_models()
    if name not in names:
        raise ConfigError(f"{option}: torchvision has no model {name!r}"
                          f"{did_you_mean(name, names)}")
    return torchvision.models.get_model(name, weights=None)


def _timm(name: str, option: str, trust_pickle: bool) -> nn.Module:
    timm = _package("timm", option)
    names = timm.list_models()
    if name not in names:
        raise ConfigError(f"{option}: timm has no model {name!r}{did_you_mean(name, names)}")
    return timm.create_model(name, pretrained=False)


def _ultralytics(name: str, option: str, trust_pickle: bool) -> nn.Module:
    """An Ultralytics model's network: built from one of its YAML configs (``yolo11n.yaml``,
    ``rtdetr-l.yaml``: random weights) or read from a ``.pt`` checkpoint on disk: safely
    (no code in the file runs), or with ``trust_pickle`` as Ultralytics reads it (a pickle
    that can run code: only for a file the user trusts)."""
    ultralytics = _package("ultralytics", option)
    if name.endswith(".pt"):
        if not Path(name).is_file():  # Ultralytics would try to download it
            raise ConfigError(f"{option}: no checkpoint {name!r} on disk (give a file "
                              f"path, or a YAML config such as yolo11n.yaml)")
    elif not name.endswith((".yaml", ".yml")):
        raise ConfigError(f"{option}: give a YAML config (yolo11n.yaml, "
                          f"rtdetr-l.yaml) or a .pt checkpoint file")
    if name.endswith(".pt") and not trust_pickle:
        from ..adapters.ultralytics import load_network_safely

        return load_network_safely(name, option)
    builder = ultralytics.RTDETR if "rtdetr" in Path(name).name else ultralytics.YOLO
    try:
        return builder(name).model
    except (FileNotFoundError, ValueError, KeyError) as error:
        raise ConfigError(f"{option}: Ultralytics cannot build it "
                          f"({type(error).__name__}: {first_line(error)})") from error


def _open_clip(name: str, option: str, trust_pickle: bool) -> nn.Module:
    """The image tower of an open_clip model (random weights): its ``visual`` module."""
    open_clip = _package("open_clip", option)
    names = open_clip.list_models()
    if name not in names:
        raise ConfigError(f"{option}: open_clip has no model {name!r}"
                          f"{did_you_mean(name, names)}")
    return open_clip.create_model(name, pretrained=None).visual


def _package(module: str, option: str):
    try:
        return importlib.import_module(module)
    except ImportError as error:
        pip_name = {"open_clip": "open-clip-torch"}.get(module, module)
        raise ConfigError(f"{option} needs the {module} package: pip install "
                          f"{pip_name}") from error


def _hugging_face(path: str, option: str, trust_pickle: bool) -> nn.Module:
    if is_gguf(path):  # a GGUF file holds the weights, the config and the tokenizer
        return load_gguf(path, option)
    if not (Path(path) / "config.json").is_file():
        raise ConfigError(f"{option}: not a Hugging Face model directory (no "
                          f"config.json) nor a .gguf file")
    import transformers

    from ..adapters.hf.skeleton import saved_class

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()  # ("Loading weights" bars in a log)
    try:
        # the class the folder was saved from, with its task head (a causal LM's lm_head, a
        # classifier), as streamed pruning builds it; AutoModel would drop the head
        model_class = saved_class(transformers.AutoConfig.from_pretrained(path))
        return (model_class or transformers.AutoModel).from_pretrained(path)
    except Exception as error:
        raise ConfigError(f"{option}: transformers cannot load it: "
                          f"{type(error).__name__}: {error}") from error


def first_line(error: BaseException) -> str:
    return next((line.strip() for line in str(error).splitlines() if line.strip()), "")[:300]


def split_spec(spec: str, example: str, option: str) -> tuple[str, str]:
    source, _, name = spec.rpartition(":")
    if not source or not name:
        raise ConfigError(f"{option} {spec!r}: expected SOURCE:NAME, e.g. {example}")
    return source, name


def call_factory(source: str, name: str, option: str) -> Any:
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


# the order --help lists them in
register_model_source("torchvision", _torchvision)
register_model_source("timm", _timm)
register_model_source("hf", _hugging_face, example="hf:PATH (a folder or .gguf)")
register_model_source("ultralytics", _ultralytics, example="ultralytics:yolo11n.yaml (or a .pt file)")
register_model_source("open_clip", _open_clip, example="open_clip:NAME (its image tower)")
