"""Layer pruning on a residual CNN: candidates, criteria, removal and saving."""

import copy

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.candidates.layers import find_layer_candidates
from prunekit.measure.model import count_flops

from .helpers import outputs


class Block(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)

    def forward(self, x):
        return torch.relu(x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))


class ResNetish(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.stage1 = nn.Sequential(Block(8), Block(8), Block(8))
        self.down = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.stage2 = nn.Sequential(Block(16), Block(16))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4))

    def forward(self, x):
        return self.head(self.stage2(self.down(self.stage1(self.stem(x)))))


def model_and_data():
    torch.manual_seed(0)
    model = ResNetish().eval()
    for module in model.modules():  # non-trivial norm statistics
        if isinstance(module, nn.BatchNorm2d):
            module.running_var.uniform_(0.5, 2.0)
            module.running_mean.uniform_(-0.1, 0.1)
    generator = torch.Generator().manual_seed(1)
    data = [(torch.randn(8, 3, 8, 8, generator=generator),
             torch.randint(0, 4, (8,), generator=generator)) for _ in range(3)]
    return model, data


def silence(block: Block) -> None:
    """Make a block compute the identity on non-negative inputs."""
    with torch.no_grad():
        block.bn2.weight.zero_()
        block.bn2.bias.zero_()


def test_candidates_are_the_shape_preserving_blocks():
    model, data = model_and_data()
    candidates = pk.find_layer_candidates(model, data[0][0])
    assert candidates == ["stage1.0", "stage1.1", "stage1.2", "stage2.0", "stage2.1"]


def test_layers_outside_blocks_are_candidates_too():
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                          nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 1), nn.Flatten())
    assert pk.find_layer_candidates(plain, torch.randn(1, 3, 4, 4)) == ["2", "5"]


@pytest.mark.parametrize("criterion", ["loss", "accuracy", "influence"])
def test_a_block_that_computes_the_identity_scores_lowest(criterion):
    model, data = model_and_data()
    silence(model.stage1[1])
    scores = {s.name: s.score for s in pk.layer_importance(model, data, criterion)}
    assert scores["stage1.1"] == pytest.approx(0, abs=1e-9)
    if criterion == "influence":  # the others really change their input
        assert min(v for k, v in scores.items() if not k.startswith("stage1.1")) > 1e-3
    redundant = pk.find_redundant_layers(model, data, 1e-9, criterion=criterion)
    assert "stage1.1" in [s.name for s in redundant]


def test_removal_equals_the_original_with_the_block_replaced_by_identity(tmp_path):
    model, data = model_and_data()
    silence(model.stage2[1])
    original = copy.deepcopy(model)
    x = data[0][0]
    result = pk.prune(model, x, pk.LayerPruning(n=2, criterion="influence"), data=data)
    removed = result.plan.layers
    assert len(removed) == 2 and "stage2.1" in removed

    reference = copy.deepcopy(original)
    for name in removed:
        parent, child = name.rsplit(".", 1)
        setattr(reference.get_submodule(parent), child, nn.Identity())
    for a, b in zip(outputs(model, x), outputs(reference, x)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for name in removed:
        assert isinstance(model.get_submodule(name), nn.Identity)
    assert result.after.params < result.before.params
    assert result.after.flops == count_flops(model, x) < count_flops(original, x)
    # removing blocks changes the function: the check says what it checked, never equivalence
    assert "blocks bypassed" in str(result.report) and "outputs are not compared" in str(
        result.report)
    with pytest.raises(pk.ConfigError, match="only removes layers"):
        pk.verify(original, x, result.plan)

    pk.save(model, tmp_path / "saved", result.plan)
    reloaded = pk.load(copy.deepcopy(original), tmp_path / "saved")
    for a, b in zip(outputs(model, x), outputs(reloaded, x)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_last_removes_the_last_blocks_without_nesting():
    model, data = model_and_data()
    result = pk.prune(model, data[0][0], pk.LayerPruning(n=2, criterion="last"))
    assert result.plan.layers == ["stage2.1", "stage2.0"]


def test_asking_for_too_many_layers_is_a_clear_error_and_changes_nothing():
    model, data = model_and_data()
    before = copy.deepcopy(model)
    with pytest.raises(pk.PruneError, match="only"):
        pk.prune(model, data[0][0], pk.LayerPruning(n=50, criterion="last"))
    for a, b in zip(outputs(model, data[0][0]), outputs(before, data[0][0])):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(pk.ConfigError, match="criterion"):
        pk.LayerPruning(n=1, criterion="nope")
    with pytest.raises(pk.ConfigError, match="data="):
        pk.layer_importance(model, None, "loss", example_inputs=data[0][0])


def test_candidates_are_blocks_inside_sequential_stacks_never_their_containers():
    import timm
    import torchvision

    vit = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=3,
                                               num_heads=2, hidden_dim=16, mlp_dim=32)
    assert find_layer_candidates(vit.eval(), torch.randn(1, 3, 32, 32)) == [
        f"encoder.layers.encoder_layer_{i}" for i in range(3)]
    convnext = timm.create_model("convnext_atto", num_classes=10).eval()
    candidates = find_layer_candidates(convnext, torch.randn(1, 3, 64, 64))
    assert candidates and all(".blocks." in name for name in candidates)
    assert "stages.0" not in candidates
    mobilenet = torchvision.models.mobilenet_v3_small(num_classes=10).eval()
    candidates = find_layer_candidates(mobilenet, torch.randn(1, 3, 64, 64))
    assert candidates and all(name.count(".") == 1 for name in candidates)  # features.N only
    modules = dict(mobilenet.named_modules())
    assert not any(type(modules[name]).__name__ == "SqueezeExcitation" for name in candidates)


def test_angular_windows_never_cross_a_change_of_shape():
    import torchvision

    torch.manual_seed(0)
    model, x = torchvision.models.resnet18(num_classes=10).eval(), torch.randn(2, 3, 64, 64)
    result = pk.prune(model, x, pk.LayerPruning(n=2, criterion="angular"), data=[x])
    first, second = result.plan.layers
    assert first.split(".")[0] == second.split(".")[0]  # the same stage: same shapes


def test_inputs_that_do_not_run_are_a_trace_error_naming_them():
    model, _ = model_and_data()
    with pytest.raises(pk.TraceError, match="example inputs do not run"):
        pk.prune(model, torch.randn(1, 5), pk.LayerPruning(n=1, criterion="last"))


def test_a_config_that_refuses_a_new_layer_count_keeps_its_own_and_the_layer_still_goes():
    """ProphetNet's config raises on setting ``num_hidden_layers``: removing a block used to
    crash there, after the block was gone."""
    from prunekit.surgery.stacks import remove_blocks

    class StrictConfig:
        def __init__(self):
            self.__dict__["layers"] = 3

        @property
        def num_hidden_layers(self):
            return self.layers

        @num_hidden_layers.setter
        def num_hidden_layers(self, value):
            raise NotImplementedError("set num_encoder_layers instead")

        def to_dict(self):
            return {"num_hidden_layers": self.layers}

    model = nn.Module()
    model.config = StrictConfig()
    model.blocks = nn.ModuleList(nn.Linear(4, 4) for _ in range(3))
    remove_blocks(model, model.blocks, {"1"})
    assert len(model.blocks) == 2 and model.config.num_hidden_layers == 3
