"""Real architectures from torchvision, pruned through the public API."""

import pytest
import torch
import torchvision

import prunekit as pk

from .helpers import check_pruned

MODELS = ["resnet18", "mobilenet_v3_small", "densenet121"]


@pytest.mark.parametrize("method", [pk.FilterPruning(0.5, "l1"), pk.ChannelPruning(0.5, "l2")],
                         ids=lambda m: type(m).__name__)
@pytest.mark.parametrize("name", MODELS)
def test_torchvision_model(name, method, tmp_path):
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None).eval()
    x = torch.randn(1, 3, 64, 64)
    result = check_pruned(model, x, method, tmp_path)
    assert result.flop_reduction > 0.3
    # the classifier keeps its 1000 outputs without being told
    assert "fc.weight" not in result.plan.tensors or 0 not in result.plan.tensors["fc.weight"]
