"""Recovery with low-rank adapters (``pk.distill(lora_rank=...)``): only the adapters train,
they are merged into the weights at the end, and an interrupt leaves the student as it was."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import prunekit as pk

transformers = pytest.importorskip("transformers")
pytest.importorskip("peft")


def pruned_pair() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    teacher = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2)).eval()
    student = copy.deepcopy(teacher)
    pk.prune(student, {"input_ids": torch.randint(0, 100, (2, 8))}, pk.FilterPruning(0.5, "l2"))
    return teacher, student


DATA = [{"input_ids": torch.randint(0, 100, (4, 16), generator=torch.Generator().manual_seed(i))}
        for i in range(4)]


def test_adapters_train_and_merge_into_the_weights():
    teacher, student = pruned_pair()
    before = {name: p.detach().clone() for name, p in student.state_dict().items()}
    result = pk.distill(student, teacher, DATA, steps=40, lora_rank=4, lr=1e-2, hidden=False,
                        schedule="constant", warmup=0)
    assert sum(result.losses[-5:]) < sum(result.losses[:5]) * 0.8
    after = student.state_dict()
    assert set(after) == set(before)  # no adapter left behind
    assert all(type(m) is nn.Linear for m in student.modules() if isinstance(m, nn.Linear))
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert "model.layers.0.mlp.down_proj.weight" in changed
    # only linear layers learn: embeddings and norms are as they were
    assert not any("embed" in name or "norm" in name for name in changed)
    assert all(p.requires_grad for p in student.parameters())


def test_an_interrupt_leaves_the_student_as_it_was():
    teacher, student = pruned_pair()
    before = {name: p.detach().clone() for name, p in student.state_dict().items()}

    def stop(step):
        if step.done == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pk.distill(student, teacher, DATA, steps=10, lora_rank=4, lr=1e-2, progress=stop)
    after = student.state_dict()
    assert set(after) == set(before)
    for name, value in before.items():
        assert torch.equal(after[name], value), name


@pytest.mark.parametrize("options, message", [
    ({"lora_rank": 0}, "lora_rank"),
    ({"lora_rank": 4, "checkpoint": "somewhere"}, "neither checkpoint"),
])
def test_bad_adapter_settings_are_one_line(options, message):
    with pytest.raises(pk.ConfigError, match=message):
        pk.Distillation(**options)


def test_adapters_go_exactly_on_the_linear_layers_named():
    from prunekit.recover.lora import adapted_layers, low_rank_adapters

    model = nn.Sequential(nn.Linear(4, 4), nn.Sequential(nn.Conv1d(4, 4, 1), nn.Linear(4, 4)))
    assert adapted_layers(model) == ["0", "1.1"]
    with low_rank_adapters(model, 2):
        adapted = [name for name, module in model.named_modules() if hasattr(module, "lora_A")]
        assert adapted == ["0", "1.1"]  # not the convolution "1.0", whose name ends in "0"
    assert type(model[1][0]) is nn.Conv1d and type(model[0]) is nn.Linear
