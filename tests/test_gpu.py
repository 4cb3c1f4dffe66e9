"""The GPU tier: verification in float32 with TF32 off and in bfloat16, distillation and
export, on a CUDA device. Every test skips cleanly where there is none; run the tier with
``pytest -m gpu`` on a machine that has one. Nothing here is claimed until it has run there.
"""

import copy

import pytest
import torch
import torchvision
from torch import nn

import prunekit as pk

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]


@pytest.fixture
def no_tf32():
    """Float32 matrix multiplies in float32: with TF32 on, the masked and the pruned model
    round differently (10 mantissa bits) and an exact check would compare rounding."""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def resnet(dtype=torch.float32):
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=10).eval().to("cuda", dtype)


def test_a_cuda_model_is_pruned_and_verified_in_float32(no_tf32):
    model = resnet()
    original = copy.deepcopy(model)
    x = torch.randn(2, 3, 64, 64, device="cuda")
    result = pk.prune(model, x, pk.FilterPruning(0.5, "l1"))
    assert result.report.ok and "float32" in str(result.report)
    assert all(p.device.type == "cuda" for p in model.parameters())
    assert pk.verify(original, x, result.plan).ok
    with torch.no_grad():  # a fresh input, compared against the masked original
        fresh = torch.randn(2, 3, 64, 64, device="cuda")
        assert model(fresh).shape == original(fresh).shape


def test_a_bfloat16_model_is_verified_at_bfloat16_precision():
    model = resnet(torch.bfloat16)
    x = torch.randn(2, 3, 64, 64, device="cuda", dtype=torch.bfloat16)
    result = pk.prune(model, x, pk.ChannelPruning(0.5, "l2"))
    assert result.report.ok and "bfloat16" in str(result.report)
    assert next(model.parameters()).dtype == torch.bfloat16


def test_a_data_criterion_and_reconstruction_run_on_the_device(no_tf32):
    model = resnet()
    batches = [torch.randn(4, 3, 32, 32, device="cuda") for _ in range(2)]
    result = pk.prune(model, batches[0], pk.ChannelPruning(0.4, "reconstruction",
                                                           reconstruct=True), data=batches)
    assert result.report.ok and result.flop_reduction > 0.3


def test_distillation_trains_on_the_device():
    teacher = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 8)).cuda().eval()
    student = copy.deepcopy(teacher)
    x = torch.randn(8, 16, device="cuda")
    plan = pk.prune(student, x, pk.FilterPruning(0.5)).plan
    batches = [torch.randn(8, 16, device="cuda") for _ in range(4)]
    result = pk.distill(student, teacher, batches, steps=10, lr=1e-2, plan=plan)
    assert result.steps == 10 and result.losses[-1] < result.losses[0]
    assert all(p.device.type == "cuda" for p in student.parameters())


def test_a_pruned_cuda_model_exports_and_is_checked(tmp_path, no_tf32):
    model = resnet()
    x = torch.randn(1, 3, 64, 64, device="cuda")
    pk.prune(model, x, pk.FilterPruning(0.5, round_to=8))
    report = pk.export(model, x, tmp_path / "resnet.pt2")
    assert report.largest_difference <= report.tolerance and (tmp_path / "resnet.pt2").exists()
