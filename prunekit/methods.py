"""Pruning methods: small dataclasses that check themselves and round-trip through JSON.

A method says *what* to remove and *how to rank* it; ``pk.prune`` does the rest.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

from .errors import ConfigError
from .importance import CRITERIA


@dataclass
class _ChannelMethod:
    """Shared fields of the channel-removing methods.

    Args:
        ratio: fraction of each group's channels to remove, in [0, 1).
        criterion: how channels are ranked: one of ``prunekit.importance.CRITERIA``.
        round_to: the number of channels kept in each group is a multiple of this.
        overrides: ``{module name: ratio}`` for groups that touch that module (the largest
            override among a group's modules wins).
        seed: seed for the ``"random"`` criterion.
        global_ranking: rank channels across the whole model (scores normalised by their
            group's mean, except a criterion that measures the same quantity everywhere,
            such as the heads' ``"output"``) instead of removing ``ratio`` from every group.
        max_ratio: the most any one group loses under global ranking or a budget.
        flops_target: remove this fraction of the model's FLOPs (``ratio`` is then searched
            for, within ``max_ratio``); met within 2 percentage points.
        params_target: the same for parameters.
    """

    ratio: float = 0.5
    criterion: str = "l1"
    round_to: int = 1
    overrides: dict[str, float] = field(default_factory=dict)
    seed: int = 0
    global_ranking: bool = False
    max_ratio: float = 0.9
    flops_target: float | None = None
    params_target: float | None = None

    scored_role: ClassVar[str] = ""
    prunes_heads: ClassVar[bool] = False
    prunes_hidden: ClassVar[bool] = False

    def __post_init__(self) -> None:
        name = type(self).__name__
        _check_ratio(self.ratio, f"{name}.ratio")
        for module, ratio in self.overrides.items():
            _check_ratio(ratio, f"{name}.overrides[{module!r}]")
        if self.criterion not in CRITERIA:
            raise ConfigError(f"{name}.criterion: unknown criterion {self.criterion!r}; "
                              f"choose one of {sorted(CRITERIA)}")
        if getattr(CRITERIA[self.criterion], "heads_only", False) and not self.prunes_heads:
            raise ConfigError(f"{name}.criterion: {self.criterion!r} scores attention heads; "
                              f"use it with pk.HeadPruning")
        _check_ratio(self.max_ratio, f"{name}.max_ratio")
        for target in ("flops_target", "params_target"):
            if getattr(self, target) is not None:
                _check_ratio(getattr(self, target), f"{name}.{target}")
        if self.flops_target is not None and self.params_target is not None:
            raise ConfigError(f"{name}: give flops_target or params_target, not both")
        if not isinstance(self.round_to, int) or self.round_to < 1:
            raise ConfigError(f"{name}.round_to must be a positive integer, got {self.round_to!r}")

    def channels_to_keep(self, size: int, ratio: float) -> int:
        keep = size - math.floor(size * ratio + 1e-9)
        keep = math.ceil(keep / self.round_to) * self.round_to
        return max(1, min(size, keep))

    def to_dict(self) -> dict[str, Any]:
        return {"method": type(self).__name__, **asdict(self)}

    @staticmethod
    def from_dict(data: dict[str, Any]) -> "_ChannelMethod":
        data = dict(data)
        kind = METHODS.get(data.pop("method", ""))
        if kind is None:
            raise ConfigError(f"unknown pruning method in {data!r}")
        return kind(**data)


@dataclass
class FilterPruning(_ChannelMethod):
    """Remove output filters, ranked by the producers' filters (conv/linear output rows).

    Example:
        >>> pk.prune(model, x, pk.FilterPruning(ratio=0.5, criterion="l1"))
    """

    scored_role: ClassVar[str] = "out"


@dataclass
class ChannelPruning(_ChannelMethod):
    """Remove input channels, ranked by the consumers' weights over those channels.

    The score of an input channel is the norm of the consumer's weights that read it, summed
    over output filters and kernel (the classic input-channel criterion). Removing it removes
    the whole coupled group, producers included.

    With ``reconstruct=True`` (and calibration batches as ``data=``), every layer that lost
    input channels is then re-fitted by least squares to reproduce its original output
    (``prunekit.recover.reconstruct``).

    Example:
        >>> pk.prune(model, x, pk.ChannelPruning(ratio=0.5, criterion="l2"))
    """

    reconstruct: bool = False

    scored_role: ClassVar[str] = "in"


# criteria that score heads; "taylor" on heads is the mask gradient (Michel et al.)
HEAD_CRITERIA = ("l1", "l2", "fpgm", "random", "gradient", "taylor", "entropy", "output")


@dataclass
class HeadPruning(_ChannelMethod):
    """Remove whole attention heads: every head's query/key/value slices, its output
    projection columns and its position tables go together, and the attention module's head
    counts (``num_heads``, ``num_attention_heads``, ``all_head_size`` …) are updated. In
    grouped-query attention a key/value head goes with the query heads that read it.

    The engine finds the heads itself: the outer factor of the view that splits a projection
    into ``(heads, head_dim)``, in a module that keeps a head count or a head size. Criteria:
    the weight criteria score each head over all of its q/k/v/o weights (``"l1"``, ``"l2"``,
    ``"fpgm"``, ``"random"``); ``"gradient"`` (Michel et al.; ``"taylor"`` is the same here),
    ``"output"`` (the output change when the head alone is removed) and ``"entropy"`` read
    ``data=`` (see ``prunekit.importance.heads``). ``ratio`` is the fraction of each layer's
    heads removed.
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

    scored_role: ClassVar[str] = "every member"  # no member has this role: all are scored
    prunes_heads: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.criterion not in HEAD_CRITERIA:
            raise ConfigError(f"HeadPruning.criterion: {self.criterion!r} does not score heads; "
                              f"choose one of {list(HEAD_CRITERIA)}")
        for module, indices in self.heads.items():
            if (not isinstance(indices, (list, tuple))
                    or not all(isinstance(i, int) and i >= 0 for i in indices)):
                raise ConfigError(f"HeadPruning.heads[{module!r}] must be a list of head "
                                  f"indices, got {indices!r}")
        if self.heads and (self.overrides or self.flops_target or self.params_target
                           or self.global_ranking):
            raise ConfigError("HeadPruning: give heads= (exact heads) or overrides/a budget, "
                              "not both")


@dataclass
class HiddenPruning(_ChannelMethod):
    """Narrow a transformer's residual stream (its hidden size): every embedding, norm and
    projection that reads or writes it loses the same channels, in every layer.

    Unlike the other methods this one is not exact: a LayerNorm or RMSNorm averages over all
    the hidden channels, so the pruned model cannot compute what the original computed with
    those channels zeroed. ``pk.prune`` checks that the pruned model runs with the same output
    shapes, not that its outputs agree; expect to fine-tune or distil afterwards. Channels are
    ranked over every member's weights (``"l1"``, ``"l2"``, ``"fpgm"``, ``"random"``, or the
    activation criteria). A config whose ``hidden_size`` can describe the result is updated.

    Example:
        >>> pk.prune(bert, inputs, pk.HiddenPruning(ratio=0.25, criterion="l2"))
    """

    scored_role: ClassVar[str] = "every member"  # no member has this role: all are scored
    prunes_hidden: ClassVar[bool] = True


@dataclass
class LayerPruning:
    """Remove ``n`` whole layers or blocks, the least important by ``criterion`` (one of
    ``"loss"``, ``"accuracy"``, ``"influence"``, ``"last"``; see ``prunekit.layers``).

    With ``flops_target``, as many layers as it takes (least important first) to remove that
    fraction of FLOPs, or every candidate if even that is not enough.

    Example:
        >>> pk.prune(model, x, pk.LayerPruning(n=2, criterion="influence"), data=batches)
    """

    n: int = 1
    criterion: str = "loss"
    flops_target: float | None = None

    def __post_init__(self) -> None:
        from .layers import LAYER_CRITERIA

        if isinstance(self.n, bool) or not isinstance(self.n, int) or self.n < 1:
            raise ConfigError(f"LayerPruning.n must be a positive integer, got {self.n!r}")
        if self.flops_target is not None:
            _check_ratio(self.flops_target, "LayerPruning.flops_target")
        if self.criterion not in LAYER_CRITERIA:
            raise ConfigError(f"LayerPruning.criterion: unknown criterion {self.criterion!r}; "
                              f"choose one of {list(LAYER_CRITERIA)}")

    def to_dict(self) -> dict[str, Any]:
        return {"method": type(self).__name__, **asdict(self)}


METHODS = {cls.__name__: cls for cls in (FilterPruning, ChannelPruning, HeadPruning,
                                         HiddenPruning, LayerPruning)}


def _check_ratio(ratio: Any, what: str) -> None:
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio < 1:
        raise ConfigError(f"{what} must be a number in [0, 1), got {ratio!r}")
