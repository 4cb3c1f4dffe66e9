"""``HeadPruning``: remove whole attention heads."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from ..core.arguments import check_whole
from ..errors import ConfigError
from ..importance.heads import silenced_heads
from ..selection import channels as selection
from .groups import GroupPruning


@dataclass
class HeadPruning(GroupPruning):
    """Remove whole attention heads: every head's query/key/value slices, its output
    projection columns and its position tables go together, and the attention module's head
    counts (``num_heads``, ``num_attention_heads``, ``all_head_size`` …) are updated. In
    grouped-query attention a key/value head goes with the query heads that read it.

    The engine finds the heads itself: the outer factor of the view that splits a projection
    into ``(heads, head_dim)``, in a module that keeps a head count or a head size. Criteria
    (``pk.criterion_names("heads")``): the weight criteria score each head over all of its
    q/k/v/o weights (``"l1"``, ``"l2"``, ``"fpgm"``, ``"random"``); ``"gradient"`` (Michel et
    al.; ``"taylor"`` is the same on heads), ``"output"`` (the output change when the head
    alone is removed), ``"reconstruction"`` (what re-fitting the output projection cannot
    make up for without the head; pair it with ``reconstruct=True``) and ``"entropy"`` read
    ``data=`` (see ``prunekit.importance.heads``).
    ``ratio`` is the fraction of each layer's heads removed.
    ``heads={attention module: [head indices]}`` removes exactly those heads instead, and
    ``ratio`` is not used (the module is any module of that attention layer, e.g.
    ``"encoder.layer.0.attention.self"``).

    With ``reconstruct=True`` (and calibration batches as ``data=``), each output projection
    is then re-fitted by least squares, bias included, to reproduce its original output from
    the heads that remain (``prunekit.recover.reconstruct``); no training.

    With ``rounds=k`` the heads go in k rounds, each removing an equal share of them, and a
    data criterion scores the heads left with those already chosen silenced: a head whose
    work another head duplicates looks unimportant only until that other head goes, which
    one scoring of the whole model cannot see. It costs k scorings; for ``ratio`` only (no
    budget, no model-wide ranking).

    Example:
        >>> pk.prune(bert, inputs, pk.HeadPruning(ratio=0.25, criterion="l1"))
        >>> pk.prune(bert, inputs, pk.HeadPruning(heads={"encoder.layer.0.attention": [0, 3]}))
    """

    streams: ClassVar[bool] = True

    heads: dict[str, list[int]] = field(default_factory=dict)
    reconstruct: bool = False
    rounds: int = 1

    target: ClassVar[str] = "heads"
    cli_name: ClassVar[str] = "heads"

    def __post_init__(self) -> None:
        super().__post_init__()
        for module, indices in self.heads.items():
            if (not isinstance(indices, (list, tuple))
                    or not all(isinstance(i, int) and i >= 0 for i in indices)):
                raise ConfigError(f"HeadPruning.heads[{module!r}] must be a list of head "
                                  f"indices, got {indices!r}")
        if self.heads and (self.overrides or self.flops_target or self.params_target
                           or self.global_ranking):
            raise ConfigError("HeadPruning: give heads= (exact heads) or overrides/a budget, "
                              "not both")
        check_whole(self.rounds, "HeadPruning.rounds")
        if self.rounds > 1 and (self.budget() is not None or self.global_ranking or self.heads):
            raise ConfigError("HeadPruning.rounds > 1 re-scores between rounds at a ratio per "
                              "layer; it does not combine with a budget, global_ranking or "
                              "heads=")

    def candidates(self, graph):
        return graph.head_groups()

    def nothing_to_prune(self):
        return ("HeadPruning: the model has no attention heads the engine can find (a reshape "
                "into (heads, head_dim) in a module that keeps a head count); it was left "
                "unchanged")

    def score(self, graph, groups, data=None, loss_fn=None):
        if self.rounds == 1:
            return super().score(graph, groups, data, loss_fn)
        return rescored(self, graph, groups, data, loss_fn)

    def select(self, graph, groups, scores, ratio=None, dither=False, widths=None):
        if self.heads:
            return selection.chosen_heads(groups, self.heads)
        return super().select(graph, groups, scores, ratio, dither, widths)


def rescored(method: HeadPruning, graph, groups, data, loss_fn) -> dict[int, torch.Tensor]:
    """Scores whose ranking is the order of ``method.rounds`` rounds of removal: in each
    round the heads chosen so far are silenced and the rest scored again; the lowest go
    until the round's share of ``method.ratio`` has gone. Heads removed in round r score
    below every head kept and below those removed later; the heads kept keep their last
    scores."""
    removed_in: dict[int, torch.Tensor] = {g.axis: torch.zeros(g.size, dtype=torch.long)
                                           for g in groups}
    scores: dict[int, torch.Tensor] = {}
    for round_ in range(1, method.rounds + 1):
        gone = {axis: (when > 0).nonzero().flatten().tolist() for axis, when in removed_in.items()}
        with silenced_heads(graph, groups, gone):
            scores = GroupPruning.score(method, graph, groups, data, loss_fn)
        ratio = method.ratio * round_ / method.rounds
        for group in groups:
            when = removed_in[group.axis]
            wanted = group.size - method.channels_to_keep(group.size,
                                                          method.group_ratio(group, ratio))
            left = (when == 0).nonzero().flatten()
            extra = wanted - (group.size - len(left))
            if extra > 0:
                lowest = scores[group.axis][left].double().topk(extra, largest=False).indices
                when[left[lowest]] = round_
    final = {}
    for axis, when in removed_in.items():
        kept = scores[axis].double()
        floor = kept[when == 0].min() if (when == 0).any() else kept.new_zeros(())
        # a removed head's score: below every kept head, earlier rounds lower still
        rank = (floor - 1 - (method.rounds + 1 - when).double()).where(when > 0, kept)
        final[axis] = rank
    return final
