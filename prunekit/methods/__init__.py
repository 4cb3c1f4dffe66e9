"""Pruning methods: dataclasses that check themselves, round-trip through JSON and own
their behaviour (see ``base.PruningMethod``)."""

from .base import (
    METHODS,
    Preview,
    PreviewRow,
    Proposal,
    PruneContext,
    PruningMethod,
    Trial,
    cli_methods,
    method_from_dict,
)
from .groups import ChannelPruning, FilterPruning, GroupProposal, GroupPruning
from .heads import HeadPruning
from .hidden import HiddenPruning
from .layers import LayerProposal, LayerPruning
from .width import WidthPruning

__all__ = ["METHODS", "ChannelPruning", "FilterPruning", "GroupProposal", "GroupPruning",
           "HeadPruning", "HiddenPruning", "LayerProposal", "LayerPruning", "Preview", "PreviewRow",
           "Proposal", "PruneContext", "PruningMethod", "Trial", "WidthPruning",
           "cli_methods", "method_from_dict"]
