"""``HeadPruning``: remove whole attention heads."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from ..errors import ConfigError
from ..planning import selection
from .groups import GroupPruning, refit_from


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
    alone is removed) and ``"entropy"`` read ``data=`` (see ``prunekit.importance.heads``).
    ``ratio`` is the fraction of each layer's heads removed.
    ``heads={attention module: [head indices]}`` removes exactly those heads instead, and
    ``ratio`` is not used (the module is any module of that attention layer, e.g.
    ``"encoder.layer.0.attention.self"``).

    With ``reconstruct=True`` (and calibration batches as ``data=``), each output projection
    is then re-fitted by least squares, bias included, to reproduce its original output from
    the heads that remain (``prunekit.recover.reconstruct``); no training.

    Example:
        >>> pk.prune(bert, inputs, pk.HeadPruning(ratio=0.25, criterion="l1"))
        >>> pk.prune(bert, inputs, pk.HeadPruning(heads={"encoder.layer.0.attention": [0, 3]}))
    """

    heads: dict[str, list[int]] = field(default_factory=dict)
    reconstruct: bool = False

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

    def candidates(self, graph):
        return graph.head_groups()

    def nothing_to_prune(self):
        return ("HeadPruning: the model has no attention heads the engine can find (a reshape "
                "into (heads, head_dim) in a module that keeps a head count); it was left "
                "unchanged")

    def select(self, graph, groups, scores, ratio=None, dither=False, widths=None):
        if self.heads:
            return selection.chosen_heads(groups, self.heads)
        return super().select(graph, groups, scores, ratio, dither, widths)

    def recovery(self, model, context):
        return refit_from(self, model, context)
