"""Prune torchvision's ResNet-18 by half its filters, check it, measure it, save and reload it."""

import copy
import tempfile

import torch
import torchvision

import prunekit as pk

model = torchvision.models.resnet18(weights=None).eval()
original = copy.deepcopy(model)
x = torch.randn(1, 3, 224, 224)

result = pk.prune(model, x, pk.FilterPruning(ratio=0.5, criterion="l1"))
print(result)
print(pk.verify(original, x, result.plan))
print("layer1.0.conv1:", model.layer1[0].conv1)

with tempfile.TemporaryDirectory() as directory:
    pk.save(model, directory, result.plan)
    restored = pk.load(torchvision.models.resnet18(weights=None).eval(), directory)
    with torch.no_grad():
        print("reloaded outputs identical:", torch.equal(model(x), restored(x)))
