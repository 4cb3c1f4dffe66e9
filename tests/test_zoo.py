"""Every zoo model, both methods, every criterion: the full pruning contract."""

import pytest
import torch

import prunekit as pk

from .helpers import check_pruned
from .zoo import ZOO

METHODS = [pk.FilterPruning, pk.ChannelPruning]
CRITERIA = ["l1", "l2", "random"]


@pytest.mark.parametrize("criterion", CRITERIA)
@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.__name__)
@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_model_prunes_and_verifies(name, method, criterion, tmp_path):
    torch.manual_seed(0)
    factory, inputs = ZOO[name]
    model, x = factory().eval(), inputs()
    check_pruned(model, x, method(ratio=0.5, criterion=criterion), tmp_path)


@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_model_traces_without_unknown_ops(name):
    factory, inputs = ZOO[name]
    graph = pk.DependencyGraph(factory().eval(), inputs())
    assert graph.unknown_ops == []
    assert graph.groups, "no prunable group found"
