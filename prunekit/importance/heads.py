"""Data-driven attention-head criteria.

- ``gradient``: the head importance of Michel et al. (2019). A mask ``m_h`` multiplies each
  head's output where it enters the output projection; the score is |∂L/∂m_h| per sample,
  averaged. At ``m = 1`` that derivative is Σ (head output × its gradient) over the head's
  channels and positions, so the engine reads it with a hook on the output projection's
  input, without changing the model. The loss is the user's ``loss_fn``, else the model's own
  loss (a Hugging Face model given ``labels``), else cross-entropy against batch targets.
  Unlabelled batches with none of those get a self-supervised loss: a random projection
  ⟨r, output⟩ drawn afresh per batch, whose squared mask-gradient estimates how far removing
  the head moves the output (E[(rᵀJ)²] = ‖J‖²); the score is then the root mean square.
- ``output``: how far the model's output moves when the head alone is removed: its channels
  are zeroed where they enter the output projection, and the score is the mean 1 − cosine
  between the output so changed and the unpruned output (per token for sequences), over
  ``data``. Label-free and exact for one head at a time (what first-order scores estimate),
  at one forward pass per head and batch.
- ``reconstruction``: what the output projection could not make up for without the head,
  if it were re-fitted by least squares on the heads left (what ``reconstruct=True`` does).
  Per attention layer the heads go greedily, each time the one whose loss the others can
  best stand in for, and a head's score is the fraction of the projection's output variance
  left unexplained once it and those before it are gone; the last head scores 1. Two heads
  that duplicate each other are not both spared, which scoring heads one at a time cannot
  see. Label-free, read with a hook on the output projection (one ``(inputs + 1)²`` matrix
  per attention layer, and one forward pass per batch).
- ``entropy``: how focused each head's attention is, ``1 − H / log(keys)`` averaged over
  queries and samples (H the entropy of the head's attention distribution): heads that
  spread attention uniformly score near 0 and go first. Read from the attention
  probabilities a Hugging Face model returns with ``output_attentions=True`` (in eager
  attention, switched on for the measurement and back off after).

Padded positions (``attention_mask`` 0 in a batch) take no part in the label-free measures.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar, Iterable, Iterator

import torch
from torch import nn

from ..core.batches import LossFn, batch_loss, model_loss, split_batch
from ..core.calls import call_model, evaluating, iter_tensors
from ..core.distributed import require_data_everywhere, sum_across
from ..errors import ConfigError
from ..graph.dependency import channel_matrix
from .base import DataCriterion
from .distance import first_tensor, mean_output_distance, query_weights, token_weights
from .elimination import Fit, elimination_scores


@dataclass(frozen=True)
class HeadGradient(DataCriterion):
    """Michel et al.'s gradient head importance (see the module docstring)."""

    reads_loss: ClassVar[bool] = True  # labelled batches, or a loss_fn

    def score_groups(self, graph, groups, data: Iterable,
                     loss_fn: LossFn | None = None) -> dict[int, torch.Tensor]:
        model = graph.model
        sites = {g.axis: _projection_input(graph, g) for g in groups}
        sites = {axis: site for axis, site in sites.items() if site is not None}
        captured: dict[str, torch.Tensor] = {}
        modules = dict(model.named_modules())

        def capture(name: str):
            def pre_hook(_module, args):
                captured[name] = args[0]
            return pre_hook

        handles = [modules[name].register_forward_pre_hook(capture(name))
                   for name in {name for name, _ in sites.values()}]
        totals: dict[int, torch.Tensor] = {}
        samples = batches = 0
        generator = torch.Generator().manual_seed(0)
        try:
            with evaluating(model):
                for batch in data:
                    captured.clear()
                    batches += 1
                    with torch.enable_grad():
                        outputs = call_model(model, split_batch(batch)[0])
                        if not captured:  # no output projection ran as a module
                            continue
                        loss, projected = _head_loss(outputs, batch, loss_fn, generator)
                        names = list(captured)
                        gradients = dict(zip(names, torch.autograd.grad(
                            loss, [captured[n] for n in names], allow_unused=True)))
                    for axis, (name, heads_of) in sites.items():
                        if name not in captured:  # see _called
                            continue
                        x, g = captured[name].detach().double(), gradients[name]
                        g = torch.zeros_like(x) if g is None else g.double()
                        per_sample = (x * g).flatten(1, -2).sum(1) if x.dim() > 2 else x * g
                        per_head = per_sample[:, heads_of].sum(-1)  # (samples, heads)
                        value = per_head.square() if projected else per_head.abs()
                        totals[axis] = totals.get(axis, 0) + value.sum(0)
                    samples += next(iter(captured.values())).shape[0] if captured else 0
        finally:
            for handle in handles:
                handle.remove()
            captured.clear()
        if batches and not totals:  # nothing readable (see _called): the weights decide
            return {}
        require_data_everywhere(samples, "criterion 'gradient'")
        (samples,) = sum_across(samples)
        totals = {axis: sum_across(totals[axis])[0] for axis in sorted(totals)}
        mean = {axis: total / samples for axis, total in totals.items()}
        return {axis: m.sqrt() if projected else m for axis, m in mean.items()}


@dataclass(frozen=True)
class HeadAblation(DataCriterion):
    """The output change when one head alone is removed (see the module docstring)."""

    def score_groups(self, graph, groups, data: Iterable,
                     loss_fn: LossFn | None = None) -> dict[int, torch.Tensor]:
        model = graph.model
        sites = {g.axis: _projection_input(graph, g) for g in groups}
        batches = [split_batch(batch)[0] for batch in data]
        require_data_everywhere(len(batches), "criterion 'output'")
        modules = dict(model.named_modules())
        scores = {}
        with evaluating(model), torch.no_grad():
            with _called(modules, {site[0] for site in sites.values() if site}) as called:
                reference = [first_tensor(call_model(model, inputs)) for inputs in batches]
            per_token = reference[0].dim() >= 3
            for axis, site in sites.items():
                if site is None or site[0] not in called:
                    continue
                name, heads_of = site
                scores[axis] = torch.tensor(
                    [self._distance(model, modules[name], channels, batches, reference, per_token)
                     for channels in heads_of], dtype=torch.float64)
        return scores

    @staticmethod
    def _distance(model: nn.Module, projection: nn.Module, channels: torch.Tensor,
                  batches: list, reference: list, per_token: bool) -> float:
        def silence(_module, args):
            silenced = args[0].clone()
            silenced[..., channels] = 0
            return (silenced, *args[1:])

        handle = projection.register_forward_pre_hook(silence)
        try:
            return mean_output_distance(model, batches, reference, per_token)
        finally:
            handle.remove()


@dataclass(frozen=True)
class HeadReconstruction(DataCriterion):
    """The output projection's error, re-fitted without the head (see the module docstring)."""

    skips_padding: ClassVar[bool] = True  # padded positions (attention_mask 0) are left out

    def score_groups(self, graph, groups, data: Iterable,
                     loss_fn: LossFn | None = None) -> dict[int, torch.Tensor]:
        model = graph.model
        sites = {g.axis: site for g in groups
                 if (site := _projection_input(graph, g)) is not None}
        modules = dict(model.named_modules())
        captured: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        moments: dict[str, list[torch.Tensor]] = {}  # name: [AᵀA, AᵀY, Σ‖y‖²], A = [x, 1]

        def capture(name: str):
            def hook(_module, args, output):
                captured[name] = (args[0].detach(), output.detach())
            return hook

        names = sorted({name for name, _ in sites.values()})
        handles = [modules[name].register_forward_hook(capture(name)) for name in names]
        batches = 0
        try:
            with evaluating(model), torch.no_grad():
                for batch in data:
                    inputs = split_batch(batch)[0]
                    captured.clear()
                    call_model(model, inputs)
                    for name, (x, y) in captured.items():
                        parts = _moments(x, y, token_weights(inputs, x))
                        moments[name] = parts if name not in moments else [
                            m + p for m, p in zip(moments[name], parts)]
                    batches += 1
        finally:
            for handle in handles:
                handle.remove()
            captured.clear()
        require_data_everywhere(batches, "criterion 'reconstruction'")
        # every process fits the same projection (torchrun); a projection whose module is never
        # called (nn.MultiheadAttention applies out_proj's weights itself) has no scores, and
        # the method ranks its heads by their weights
        for name in names:
            if name in moments:
                moments[name] = list(sum_across(*moments[name]))
        return {axis: _head_scores(*moments[name], heads_of)
                for axis, (name, heads_of) in sites.items() if name in moments}


def _head_scores(gram: torch.Tensor, cross: torch.Tensor, energy: torch.Tensor,
                 heads_of: torch.Tensor) -> torch.Tensor:
    """Heads removed one at a time from the projection's least-squares fit
    (``elimination.py``), each scored by the fraction of the output variance unexplained
    after its removal."""
    samples = gram[-1, -1].clamp_min(1e-12)
    variance = energy - cross[-1].square().sum() / samples
    return elimination_scores([Fit(gram, heads_of, variance, cross=cross, energy=energy)])


def _moments(x: torch.Tensor, y: torch.Tensor,
             weights: torch.Tensor | None) -> list[torch.Tensor]:
    """``[AᵀA, AᵀY, Σ‖y‖²]`` of one batch, ``A`` its input rows with a column of ones for the
    bias; rows weighted by ``weights`` (padding 0)."""
    rows = x.reshape(-1, x.shape[-1]).double()
    wanted = y.reshape(-1, y.shape[-1]).double()
    rows = torch.cat([rows, torch.ones(len(rows), 1, dtype=rows.dtype)], dim=1)
    weighted = rows if weights is None else rows * weights.reshape(-1, 1)
    return [weighted.T @ rows, weighted.T @ wanted, (weighted[:, -1:] * wanted.square()).sum()]


@contextmanager
def _called(modules: dict[str, nn.Module], names: set[str]) -> Iterator[set[str]]:
    """The names, of ``names``, whose modules are called inside the block. An output
    projection that is never called as a module (``nn.MultiheadAttention`` applies its
    ``out_proj`` weights itself) cannot be hooked: silencing a head there changes nothing,
    so a criterion scores none of its heads and the method ranks them by their weights."""
    called: set[str] = set()
    handles = [modules[name].register_forward_pre_hook(
        lambda _module, _args, name=name: called.add(name)) for name in names]
    try:
        yield called
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def silenced_heads(graph, groups, heads: dict[int, list[int]]) -> Iterator[None]:
    """Inside the block, the heads listed per group axis contribute nothing: their channels
    are zeroed where they enter the output projection, as their removal would leave it."""
    modules = dict(graph.model.named_modules())
    handles = []
    try:
        for group in groups:
            chosen = heads.get(group.axis)
            site = _projection_input(graph, group) if chosen else None
            if site is None:
                continue
            name, heads_of = site
            channels = heads_of[torch.as_tensor(chosen)].flatten()

            def silence(_module, args, channels=channels):
                silenced = args[0].clone()
                silenced[..., channels] = 0
                return (silenced, *args[1:])

            handles.append(modules[name].register_forward_pre_hook(silence))
        yield
    finally:
        for handle in handles:
            handle.remove()


def _head_loss(outputs: Any, batch: Any, loss_fn: LossFn | None,
               generator: torch.Generator) -> tuple[torch.Tensor, bool]:
    """The loss to differentiate, and whether it is the random output projection."""
    if loss_fn is not None:
        return loss_fn(outputs, batch), False
    own = model_loss(outputs)
    if own is not None:
        return own, False
    if split_batch(batch)[1] is not None:
        return batch_loss(outputs, batch, None, "criterion 'gradient'"), False
    output = next(iter_tensors(outputs))
    direction = torch.randn(output.shape, generator=generator, dtype=output.dtype)
    weights = token_weights(split_batch(batch)[0], output)
    if weights is not None:  # padded positions are no one's output
        direction = direction * weights.to(output.dtype).reshape(
            *weights.shape, *[1] * (output.dim() - 2))
    return (output * direction).sum(), True


def _projection_input(graph, group) -> tuple[str, torch.Tensor] | None:
    """Where a head's output enters its output projection: ``(module name, index matrix)``,
    the matrix listing each head's channels of that module's input (last dim)."""
    for member in group.members:
        module_name = member.name.rsplit(".", 1)[0]
        weight = member.slot.tensor
        if member.role != "in" or member.slot.kind != "parameter" or weight.dim() != 2:
            continue
        channels = torch.arange(weight.shape[member.dim])
        heads_of = channel_matrix(graph.axes, channels, 0, member.segments, group.axis)
        return module_name, heads_of
    return None


@dataclass(frozen=True)
class AttentionEntropy(DataCriterion):
    """Focus of each head's attention, 1 − normalised entropy (see the module docstring)."""

    def score_groups(self, graph, groups, data: Iterable,
                     loss_fn: LossFn | None = None) -> dict[int, torch.Tensor]:
        model = graph.model
        totals: list[torch.Tensor] = []
        batches = 0
        implementation = _eager_attention(model)
        try:
            with evaluating(model):
                for batch in data:
                    inputs = split_batch(batch)[0]
                    if not isinstance(inputs, dict):
                        raise ConfigError("criterion 'entropy' reads attention probabilities "
                                          "from a Hugging Face model called with a dict of "
                                          "inputs")
                    with torch.no_grad():
                        outputs = model(**inputs, output_attentions=True)
                    attentions = getattr(outputs, "attentions", None)
                    if not attentions or any(a is None for a in attentions):
                        raise ConfigError(f"criterion 'entropy': {type(model).__name__} "
                                          f"returned no attention probabilities")
                    samples, _, queries, _ = attentions[0].shape
                    real = query_weights(inputs, samples, queries)
                    focus = [_focus(a.double(), real) for a in attentions]
                    totals = focus if not totals else [t + f for t, f in zip(totals, focus)]
                    batches += 1
        finally:
            if implementation is not None:
                model.set_attn_implementation(implementation)
        require_data_everywhere(batches, "criterion 'entropy'")
        batches, *totals = sum_across(batches, *totals)
        return _match_layers(groups, [t / batches for t in totals])


def _eager_attention(model: nn.Module) -> str | None:
    """Switch a Hugging Face model to eager attention, which returns its probabilities;
    the implementation to restore afterwards, or None if nothing was switched."""
    config = getattr(model, "config", None)
    current = getattr(config, "_attn_implementation", None)
    if current in (None, "eager") or not hasattr(model, "set_attn_implementation"):
        return None
    model.set_attn_implementation("eager")
    return current


def _focus(probabilities: torch.Tensor, real: torch.Tensor | None) -> torch.Tensor:
    """Per head: 1 − entropy / log(number of keys attended), averaged over the real queries
    (``real``: (samples, queries) weights, or all of them), then over samples."""
    entropy = -(probabilities * probabilities.clamp_min(1e-12).log()).sum(-1)
    support = (probabilities > 0).sum(-1).clamp_min(2).double()
    focus = 1 - entropy / support.log()  # (samples, heads, queries)
    if real is None:
        return focus.mean(dim=(0, 2))
    per_sample = (focus * real[:, None]).sum(-1) / real.sum(-1, keepdim=True).clamp_min(1)
    return per_sample.mean(0)


def _match_layers(groups, per_layer: list[torch.Tensor]) -> dict[int, torch.Tensor]:
    """Attention layers in call order ↔ head groups in trace order; grouped-query layers'
    query heads are averaged per key/value head."""
    if len(groups) != len(per_layer):
        raise ConfigError(f"criterion 'entropy': the model returned {len(per_layer)} attention "
                          f"maps but has {len(groups)} attention layers the engine can prune")
    scores = {}
    for group, focus in zip(groups, per_layer):
        if focus.numel() % group.size:
            raise ConfigError(f"criterion 'entropy': {focus.numel()} attention heads do not "
                              f"divide into {group.size} heads of {group.modules()[0]}")
        scores[group.axis] = focus.reshape(group.size, -1).mean(1)
    return scores
