"""The plan: which indices every tensor keeps, as plain, versioned, JSON-able data.

A plan is replayable: applied to a freshly built model of the same architecture it produces
the same shapes, which is how ``pk.load`` rebuilds a pruned model before loading its weights.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import PlanError

PLAN_FORMAT = "prunekit.plan"
PLAN_VERSION = 1


@dataclass
class Plan:
    """What pruning keeps.

    Attributes:
        method: the method that made the plan, as a dict (``FilterPruning.to_dict()``).
        tensors: ``{parameter or buffer name: {dim: kept indices}}`` for every changed dim.
        shapes: the original shape of every tensor in ``tensors``, checked on replay.
        attributes: ``{module name: {attribute: new value}}`` for counts such as ``groups``.
        groups: a readable summary of each pruned group.
        layers: names of modules removed whole (layer pruning): each is replaced by an
            identity, so the network skips it, or deleted from its ``nn.ModuleList``.
        stacks: the ``nn.ModuleList`` stacks that ``layers`` are deleted from, whose later
            blocks are renumbered (a transformer's layers).
        untied: names of tied tensors that get a tensor of their own (a rotated hidden size
            gives the output layer other weights than the embedding).
        biased: names of linear layers without a bias that get one (bias compensation gives
            back the mean of the inputs a layer lost); replayed as zeros, which the saved
            weights then fill.
    """

    method: dict[str, Any] = field(default_factory=dict)
    tensors: dict[str, dict[int, list[int]]] = field(default_factory=dict)
    shapes: dict[str, list[int]] = field(default_factory=dict)
    attributes: dict[str, dict[str, int]] = field(default_factory=dict)
    groups: list[dict[str, Any]] = field(default_factory=list)
    layers: list[str] = field(default_factory=list)
    stacks: list[str] = field(default_factory=list)
    untied: list[str] = field(default_factory=list)
    biased: list[str] = field(default_factory=list)

    @property
    def is_empty(self) -> bool:
        return not self.tensors and not self.attributes and not self.layers

    def then(self, later: "Plan") -> "Plan":
        """One plan doing this plan and then ``later`` (made on the model this one pruned),
        so a model pruned in several steps saves and reloads with a single plan."""
        later = self._renamed_back(later)
        # what this plan did inside a block that ``later`` deletes is moot: the block is gone,
        # and its tensors are no longer in the model a save checks the plan against
        gone = tuple(layer + "." for layer in later.layers)
        tensors = {name: dict(dims) for name, dims in self.tensors.items()
                   if not name.startswith(gone)}
        for name, dims in later.tensors.items():
            mine = tensors.setdefault(name, {})
            for dim, kept in dims.items():
                mine[dim] = [mine[dim][i] for i in kept] if dim in mine else list(kept)
        shapes = {name: shape for name, shape in {**later.shapes, **self.shapes}.items()
                  if not name.startswith(gone)}  # the shapes before the first step
        attributes = {name: dict(values) for name, values in self.attributes.items()
                      if not (name + ".").startswith(gone)}
        for name, values in later.attributes.items():
            attributes.setdefault(name, {}).update(values)
        steps = self.method.get("steps", [self.method] if self.method else [])
        return Plan(method={"steps": steps + later.method.get("steps", [later.method])},
                    tensors=tensors, shapes=shapes, attributes=attributes,
                    groups=self.groups + later.groups, layers=self.layers + later.layers,
                    stacks=list(dict.fromkeys(self.stacks + later.stacks)),
                    untied=list(dict.fromkeys(self.untied + later.untied)),
                    biased=[n for n in dict.fromkeys(self.biased + later.biased)
                            if not (n + ".").startswith(gone)])

    def _renamed_back(self, later: "Plan") -> "Plan":
        """``later`` with names from before this plan deleted blocks from its stacks."""
        if not self.stacks:
            return later

        def back(name: str) -> str:
            return original_name(name, self.layers, self.stacks)

        return Plan(method=later.method,
                    tensors={back(n): dims for n, dims in later.tensors.items()},
                    shapes={back(n): shape for n, shape in later.shapes.items()},
                    attributes={back(n): values for n, values in later.attributes.items()},
                    groups=later.groups, layers=[back(n) for n in later.layers],
                    stacks=later.stacks, untied=[back(n) for n in later.untied],
                    biased=[back(n) for n in later.biased])

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["tensors"] = {name: {str(d): idx for d, idx in dims.items()}
                           for name, dims in self.tensors.items()}
        return {"format": PLAN_FORMAT, "version": PLAN_VERSION, **data}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Plan":
        if not isinstance(data, dict):
            raise PlanError(f"not a prunekit plan (it holds a {type(data).__name__}, not a "
                            f"table with format {PLAN_FORMAT!r})")
        if data.get("format") != PLAN_FORMAT:
            raise PlanError(f"not a prunekit plan (format is {data.get('format')!r})")
        if data.get("version") != PLAN_VERSION:
            raise PlanError(f"plan version {data.get('version')!r} is not supported "
                            f"(this prunekit reads version {PLAN_VERSION})")
        try:
            tensors = {_text(name): {_dim(d): [_whole(i) for i in idx] for d, idx in dims.items()}
                       for name, dims in data.get("tensors", {}).items()}
            shapes = {_text(k): [_whole(n) for n in v] for k, v in data.get("shapes", {}).items()}
            attributes = {_text(module): {_text(a): v for a, v in values.items()}
                          for module, values in data.get("attributes", {}).items()}
            layers = [_text(n) for n in data.get("layers", [])]
            stacks = [_text(n) for n in data.get("stacks", [])]
            untied = [_text(n) for n in data.get("untied", [])]
            biased = [_text(n) for n in data.get("biased", [])]
        except (AttributeError, TypeError, ValueError) as error:
            raise PlanError(f"malformed plan: {error}") from error
        return cls(method=data.get("method", {}), tensors=tensors, shapes=shapes,
                   attributes=attributes, groups=data.get("groups", []), layers=layers,
                   stacks=stacks, untied=untied, biased=biased)

    @classmethod
    def from_json(cls, text: str) -> "Plan":
        return cls.from_dict(json.loads(text))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> "Plan":
        try:
            return cls.from_json(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError) as error:  # not UTF-8, not JSON, too deep
            if isinstance(error, PlanError):
                raise
            raise PlanError(f"cannot read plan {str(path)!r}: {type(error).__name__}: "
                            f"{str(error)[:200]}") from error


def _whole(value: Any) -> int:
    """An index or size: a whole number, never a float truncated to one."""
    if type(value) is not int:
        raise ValueError(f"{value!r} is not a whole number")
    return value


def _dim(key: Any) -> int:
    if not (isinstance(key, str) and key.isdigit()) and type(key) is not int:
        raise ValueError(f"dim {key!r} is not a whole number")
    return int(key)


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a name")
    return value


def original_name(name: str, removed_layers: list[str], stacks: list[str]) -> str:
    """A name in a model whose stacks lost ``removed_layers``, as it was before the removal."""
    for stack in stacks:
        prefix = stack + "."
        if not name.startswith(prefix):
            continue
        index, _, rest = name[len(prefix):].partition(".")
        if not index.isdigit():
            continue
        gone = sorted(int(r[len(prefix):]) for r in removed_layers
                      if r.startswith(prefix) and r[len(prefix):].isdigit())
        position = int(index)
        for removed in gone:  # the position-th survivor, counting the removed ones back in
            if removed <= position:
                position += 1
        return prefix + str(position) + ("." + rest if rest else "")
    return name
