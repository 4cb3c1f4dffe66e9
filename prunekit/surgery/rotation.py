"""Rotate a transformer's residual stream onto its principal directions, then slice it.

A pre-norm transformer computes the same thing in any orthonormal basis of its residual
stream (SliceGPT's computational invariance, Ashkboos et al. 2024): an RMSNorm commutes with a
rotation once its scale is folded into the layers that read it, every layer that writes the
stream is multiplied by ``Q`` on its output side and every layer that reads it by ``Q`` on
its input side. With ``Q``'s columns the principal directions of the stream on calibration
data, the last directions carry the least of it, and removing them is hidden-size pruning
that loses the least.

Unlike SliceGPT, one ``Q`` serves the whole stream: the model keeps its architecture (no
matrices on the residual connections) and a Hugging Face model reloads with plain
``from_pretrained``. The rotated, unsliced model is checked equal to the original before
anything is sliced. What this costs: an embedding tied to the output layer is untied (the
final norm's scale is folded into one of them), and the stream's directions are shared by
every layer instead of chosen per layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch
from torch import nn

from ..core.calls import call_model, evaluating, largest_difference_on, outputs_on, random_like
from ..errors import PruneError
from ..graph.dependency import Group

TOLERANCE = 1e-4  # the rotated model's largest change, relative to each output's scale
CHECKED_BATCHES = 2  # calibration batches the rotated model is checked on besides the example


@dataclass
class Layout:
    """Where the residual stream is written, read and normalised: ``{parameter name: dim}``
    for the writers (embeddings, layers adding to the stream) and the readers (layers reading
    a norm's output), and the norms by module name."""

    writers: dict[str, int] = field(default_factory=dict)
    readers: dict[str, int] = field(default_factory=dict)
    norms: list[str] = field(default_factory=list)


@dataclass
class Rotation:
    """A rotation of the residual stream, ready to slice.

    Attributes:
        basis: ``Q`` (hidden × hidden, float64), its columns the principal directions,
            largest variance first.
        tensors: every rotated parameter by name; a tied tensor read and written under two
            names gets a value per name.
        norms: ``{norm module name: (weight that makes it a plain RMSNorm, its covariance)}``.
        checked: what the rotated model was checked on, and the largest change.
    """

    basis: torch.Tensor
    tensors: dict[str, torch.Tensor]
    dims: dict[str, int]
    norms: dict[str, tuple[float, torch.Tensor]]
    checked: str = ""

    def slice(self, model: nn.Module, kept: torch.Tensor) -> None:
        """Write the rotated parameters into ``model``, whose hidden size a plan has cut to
        the directions ``kept`` (indices into ``basis``'s columns). Each norm's scale makes up
        for the energy of the directions cut, since its RMS is now taken over fewer."""
        size, width = len(self.basis), len(kept)
        for name, value in self.tensors.items():
            _set_parameter(model, name, value.index_select(self.dims[name], kept))
        projected = self.basis[:, kept]
        for name, (identity, covariance) in self.norms.items():
            kept_energy = float((projected.T @ covariance @ projected).trace()
                                / covariance.trace())
            scale = math.sqrt(size / width * kept_energy)
            norm = model.get_submodule(name)
            _set_parameter(model, name + ".weight",
                           torch.full((width,), scale - 1 + identity).to(norm.weight))


def layout(model: nn.Module, group: Group) -> Layout:
    """The group's members sorted into writers, readers and norms; a ``PruneError`` naming
    a member that is none of them (a bias-carrying LayerNorm, a convolution …)."""
    found = Layout()
    for member in group.members:
        dim = member.dim
        for name in member.slot.names:
            owner_name, _, attribute = name.rpartition(".")
            owner = model.get_submodule(owner_name)
            if isinstance(owner, nn.Embedding) and attribute == "weight" and dim == 1:
                found.writers[name] = 1
            elif isinstance(owner, nn.Linear) and dim == 0 and attribute in ("weight", "bias"):
                found.writers[name] = 0
            elif isinstance(owner, nn.Linear) and attribute == "weight" and dim == 1:
                found.readers[name] = 1
            elif attribute == "weight" and member.slot.tensor.dim() == 1 and \
                    getattr(owner, "bias", None) is None:
                found.norms.append(owner_name)
            else:
                raise PruneError(f"HiddenPruning(rotate=True): cannot rotate {name} "
                                 f"({type(owner).__name__}, dim {dim}); rotation takes "
                                 f"embeddings, linear layers and RMSNorm-style norms")
    return found


def norm_identity(model: nn.Module, name: str, size: int) -> float:
    """The weight value at which norm ``name`` is a plain RMSNorm, ``x / rms(x)`` (1 for most;
    0 for a norm that scales by ``1 + weight``), found by trying both; a ``PruneError`` when
    neither is (a LayerNorm subtracts the mean, which a rotation does not commute with)."""
    norm = model.get_submodule(name)
    x = torch.randn(4, size, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    plain = x / x.pow(2).mean(dim=1, keepdim=True).sqrt()
    weight = norm.weight
    for identity in (1.0, 0.0):
        with torch.no_grad():
            norm._parameters["weight"] = nn.Parameter(torch.full_like(weight, identity),
                                                      requires_grad=False)
            try:
                got = norm(x.to(weight.dtype)).double()
            finally:
                norm._parameters["weight"] = weight
        if torch.allclose(got, plain, atol=1e-3):
            return identity
    raise PruneError(f"HiddenPruning(rotate=True): {name} ({type(norm).__name__}) is not an "
                     f"RMSNorm and does not commute with a rotation (a LayerNorm subtracts "
                     f"the mean); rotation needs RMSNorm-style norms")


def norm_readers(model: nn.Module, inputs: Any, norms: list[str], readers: Iterable[str]
                 ) -> dict[str, str]:
    """``{reader parameter name: the norm whose output it reads}``, seen in one forward pass
    (a view of the output counts: a language model's head may read the last positions
    only); a ``PruneError`` for a reader that reads anything else. A wrong guess here cannot
    pass unseen: the rotated model is checked against the original."""
    made: dict[int, str] = {}
    read: dict[str, set[str]] = {}
    owners = {name.rpartition(".")[0]: name for name in readers}
    handles = []
    for name in norms:
        handles.append(model.get_submodule(name).register_forward_hook(
            lambda _m, _a, out, name=name: made.__setitem__(_storage(out), name)))
    for owner, parameter in owners.items():
        handles.append(model.get_submodule(owner).register_forward_pre_hook(
            lambda _m, args, parameter=parameter: read.setdefault(parameter, set()).add(
                made.get(_storage(args[0]), "") if args else "")))
    try:
        with torch.no_grad():
            call_model(model, inputs)
    finally:
        for handle in handles:
            handle.remove()
    found = {}
    for parameter in owners.values():
        sources = read.get(parameter, {""})
        if len(sources) != 1 or "" in sources:
            raise PruneError(f"HiddenPruning(rotate=True): {parameter} reads the hidden "
                             f"states other than through a norm's output; its norm's scale "
                             f"cannot be folded into it")
        found[parameter] = sources.pop()
    return found


def covariances(model: nn.Module, batches: list, norms: list[str], size: int
                ) -> dict[str, torch.Tensor]:
    """Each norm's input covariance (float64), every token normalised to unit RMS first: the
    directions a norm's readers see, with no token or layer outweighing the rest because its
    stream is larger."""
    sums = {name: torch.zeros(size, size, dtype=torch.float64) for name in norms}

    def record(name: str) -> Callable:
        def hook(_module, args) -> None:
            x = args[0].detach().reshape(-1, size).double()
            x = x / x.pow(2).mean(dim=1, keepdim=True).sqrt().clamp_min(1e-12)
            sums[name].add_(x.T @ x)
        return hook

    handles = [model.get_submodule(name).register_forward_pre_hook(record(name))
               for name in norms]
    try:
        with torch.no_grad():
            for batch in batches:
                call_model(model, batch)
    finally:
        for handle in handles:
            handle.remove()
    return sums


def rotation(model: nn.Module, group: Group, example_inputs: Any, batches: list) -> Rotation:
    """The rotation of the residual stream ``group`` by the principal directions of its
    normalised activations on ``batches`` (model inputs), checked: the rotated model's
    outputs equal the original's on the example inputs and the first batches, within
    ``TOLERANCE`` of each output's scale, or a ``PruneError`` says by how much they moved."""
    found = layout(model, group)
    size = group.size
    with evaluating(model):
        identities = {name: norm_identity(model, name, size) for name in found.norms}
        sources = norm_readers(model, example_inputs, found.norms, found.readers)
        stats = covariances(model, batches, found.norms, size)
    values, vectors = torch.linalg.eigh(sum(stats.values()))
    order = values.argsort(descending=True)
    basis = vectors[:, order]
    tensors: dict[str, torch.Tensor] = {}
    for name, dim in found.writers.items():
        value = model.get_parameter(name).detach().double()
        tensors[name] = (basis.T @ value if dim == 0 else value @ basis).to(
            model.get_parameter(name).dtype)
    for name, norm in sources.items():
        scale = model.get_submodule(norm).weight.detach().double()
        scale = scale + (1 - identities[norm])  # the scale it applies, in either form
        value = model.get_parameter(name).detach().double()
        tensors[name] = ((value * scale) @ basis).to(model.get_parameter(name).dtype)
    result = Rotation(basis, tensors, {**found.writers, **found.readers},
                      {name: (identities[name], stats[name]) for name in found.norms})
    result.checked = _check(model, result, size, [example_inputs, *batches[:CHECKED_BATCHES]])
    return result


def _check(model: nn.Module, rotated: Rotation, size: int, inputs: list) -> str:
    """Run the rotated, unsliced model against the original; the model is left as it was."""
    inputs = inputs + [random_like(inputs[0], seed=1)]
    with evaluating(model), torch.no_grad():
        expected = outputs_on(model, inputs)
        originals = {name: model.get_parameter(name) for name in rotated.tensors}
        norms = {name: model.get_parameter(name + ".weight") for name in rotated.norms}
        try:
            for name, value in rotated.tensors.items():
                _set_parameter(model, name, value)
            for name, (identity, _) in rotated.norms.items():
                _set_parameter(model, name + ".weight", torch.full_like(norms[name], identity))
            actual = outputs_on(model, inputs)
        finally:
            for name, parameter in {**originals,
                                    **{n + ".weight": p for n, p in norms.items()}}.items():
                owner, _, attribute = name.rpartition(".")
                model.get_submodule(owner)._parameters[attribute] = parameter
    difference = largest_difference_on(actual, expected)
    where = f"{len(inputs)} inputs (the example, calibration batches, a fresh one)"
    if not difference <= TOLERANCE:
        raise PruneError(f"HiddenPruning(rotate=True): the rotated model is not the original "
                         f"(outputs moved {difference:.2g} of their scale on {where}); its "
                         f"hidden states pass through something a rotation changes")
    return f"rotated model equal to the original on {where}: largest change {difference:.1e}"


def _set_parameter(model: nn.Module, name: str, value: torch.Tensor) -> None:
    """A new parameter under ``name`` alone: never written into the old one (the user's own
    tensor, which a rollback puts back), and a tied name gets its own tensor."""
    owner, _, attribute = name.rpartition(".")
    module = model.get_submodule(owner)
    old = module._parameters[attribute]
    module._parameters[attribute] = nn.Parameter(value.detach().to(old).contiguous(),
                                                 requires_grad=old.requires_grad)


def _storage(tensor: Any) -> int | None:
    return tensor.untyped_storage().data_ptr() if isinstance(tensor, torch.Tensor) else None
