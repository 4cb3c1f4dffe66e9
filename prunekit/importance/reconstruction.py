"""The channels' ``reconstruction`` criterion: what the layers reading a group's channels
could not make up for without each, if re-fitted by least squares on the channels left
(what ``reconstruct=True`` then does).

A weight or activation criterion scores each channel alone. Re-fitting changes the question:
a channel whose contribution the kept channels can reproduce costs nothing, however large
its weights, and of two channels carrying the same signal one is enough. Per group, channels
go greedily (``elimination.py``), each time the one whose loss the remaining inputs of its
consumers can best stand in for, and a channel's score is the mean fraction of the consumers'
output variance left unexplained once it and those before it are gone (ThiNet, Luo et al.
2017, selects channels for the re-fit by a greedy search of this kind; the cost here is the
exact block least-squares one).

The consumers are the layers whose input channels belong to the group and that the re-fit
covers: ``nn.Linear``, ungrouped ``nn.Conv2d``, and the input weights of one-layer recurrent
layers (each direction's ``W_ih x + b_ih``). Their inputs are read with hooks, one forward
pass per batch: a convolution's patches at up to ``MAX_ROWS`` random output positions in all,
other layers' rows (every step of every sequence) likewise, summed into one Gram matrix per
layer. A group that something else also reads (a recurrent layer's hidden units feed back
into it through ``W_hh``, which the re-fit leaves as pruned) is ranked by its weights, as is
one read by a layer with more than ``MAX_COLUMNS`` input columns (a classifier on flattened
feature maps): the cost the criterion sees would leave out what such a reader loses. On the
OCR benchmark's recognizer, scoring the LSTMs' hidden units by the linear layer after them
alone read fewer words at 70, 80 and 90% of FLOPs removed than ranking them by weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Iterable

import torch
from torch import nn

from ..core.batches import LossFn, split_batch
from ..core.calls import call_model, evaluating
from ..core.distributed import require_data_everywhere, sum_across
from ..graph.dependency import channel_matrix
from .base import DataCriterion
from .elimination import Fit, elimination_scores
from .refit_rows import MAX_ROWS, conv_patches, refits

MAX_COLUMNS = 8192  # a Gram matrix and its inverse: 0.5 GB each in float64


@dataclass(frozen=True)
class ChannelReconstruction(DataCriterion):
    """What the consumers' least-squares re-fit misses without each channel, channels
    removed greedily (see the module docstring)."""

    skips_padding: ClassVar[bool] = True  # padded positions (attention_mask 0) are left out

    seed: int = 0

    def score_groups(self, graph, groups, data: Iterable,
                     loss_fn: LossFn | None = None) -> dict[int, torch.Tensor]:
        model = graph.model
        modules = dict(model.named_modules())
        consumers = {g.axis: found for g in groups if (found := _consumers(graph, g, modules))}
        names = sorted({name for found in consumers.values() for name, _, _ in found})
        batches = [split_batch(batch)[0] for batch in data]
        require_data_everywhere(len(batches), "criterion 'reconstruction'")
        grams = _input_grams(model, {name: modules[name] for name in names}, batches,
                             torch.Generator().manual_seed(self.seed))
        scores = {}
        for axis, found in consumers.items():
            if all(name in grams for name, _, _ in found):  # every reader was called
                scores[axis] = elimination_scores([
                    _fit(modules[name], weight, grams[name], columns)
                    for name, weight, columns in found])
        return scores


def _consumers(graph, group, modules: dict[str, nn.Module]) -> list[tuple[str, str, torch.Tensor]]:
    """``(layer name, weight name, columns)`` for each re-fitted weight reading the group's
    channels, ``columns[c]`` channel ``c``'s columns of that layer's input rows; none when
    anything else reads them."""
    found = []
    for member in group.members:
        if member.role != "in" or member.slot.kind != "parameter":
            continue
        name, _, weight = member.name.rpartition(".")
        layer = modules.get(name)
        if member.dim != 1 or not refits(layer, weight):
            return []
        tensor = layer.get_parameter(weight)
        if tensor[0].numel() > MAX_COLUMNS:
            return []
        columns = channel_matrix(graph.axes, torch.arange(tensor.shape[1]), 0, member.segments,
                                 group.axis)
        if isinstance(layer, nn.Conv2d):  # a patch row: input channels by kernel position
            taps = math.prod(layer.kernel_size)
            columns = (columns[:, :, None] * taps + torch.arange(taps)).flatten(1)
        found.append((name, weight, columns))
    return found


def _input_grams(model: nn.Module, layers: dict[str, nn.Module], batches: list,
                 generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Per layer, ``Σ a aᵀ`` over its sampled input rows ``a`` (a last column of ones),
    in float64; summed over every process (torchrun)."""
    per_batch = max(1, MAX_ROWS // len(batches))
    grams: dict[str, torch.Tensor] = {}

    def hook_for(name: str):
        def hook(layer, args, output):
            x = args[0]
            if not isinstance(x, torch.Tensor):  # a packed sequence: not read
                return
            x = x.detach()
            if isinstance(layer, nn.Conv2d):
                if x.dim() == 3:  # unbatched
                    x, output = x[None], output[None]
                n, _, height, width = output.shape
                picked = torch.randperm(n * height * width, generator=generator)[:per_batch]
                rows = conv_patches(layer, x, picked // (height * width),
                                    picked // width % height, picked % width)
            else:  # a linear or recurrent layer: every position, every step is a row
                rows = x.reshape(-1, x.shape[-1])
                rows = rows[torch.randperm(len(rows), generator=generator)[:per_batch]]
            rows = torch.cat([rows, rows.new_ones(len(rows), 1)], dim=1)
            product = (rows.T @ rows).double()  # in the model's precision: float32 is plenty
            grams[name] = grams[name] + product if name in grams else product
        return hook

    handles = [layer.register_forward_hook(hook_for(name)) for name, layer in layers.items()]
    try:
        with evaluating(model), torch.no_grad():
            for inputs in batches:
                call_model(model, inputs)
    finally:
        for handle in handles:
            handle.remove()
    return {name: sum_across(gram)[0] for name, gram in sorted(grams.items())}


def _fit(layer: nn.Module, weight: str, gram: torch.Tensor, columns: torch.Tensor) -> Fit:
    """The ``Fit`` of one re-fitted weight: the weight itself as the starting solution, its
    output's variance from the inputs' covariance."""
    weights = layer.get_parameter(weight).detach().flatten(1).double()  # (outputs, columns)
    count, sums = gram[-1, -1].clamp_min(1), gram[-1, :-1]
    centred = gram[:-1, :-1] - torch.outer(sums, sums) / count
    variance = (weights @ centred * weights).sum()
    bias = getattr(layer, weight.replace("weight", "bias"), None)
    if isinstance(bias, torch.Tensor):
        solution = torch.cat([weights.T, bias.detach().double()[None]])
        return Fit(gram, columns, variance, bias=True, weights=solution)
    # no bias to absorb the lost channels' mean: fitted without the ones column
    return Fit(gram[:-1, :-1], columns, variance, bias=False, weights=weights.T)
