"""Hidden-size pruning: the residual stream of small Hugging Face transformers narrows
everywhere at once, the model runs, saves and reloads, and generates with its cache. The
result is not the masked model (a LayerNorm averages over the hidden channels), so the checks
here are structural, plus a known answer for the criterion."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.graph.rules import is_layer_norm

from .helpers import outputs, predicted_params
from .test_transformers import CASES, CAUSAL, HIDDEN, TOKENS, causal_lm, greedy

KEPT = HIDDEN * 3 // 4


def first_embedding(model: nn.Module) -> torch.Tensor:
    """The first embedding parameter (token table, or a ViT's class token): hidden last."""
    return next(p for n, p in model.named_parameters() if "emb" in n or n.split(".")[-2] == "wte")


@pytest.mark.parametrize("name", CASES)
def test_hidden_size_narrows_everywhere_and_reloads(name, tmp_path):
    case = CASES[name]
    model = case.build()
    original = copy.deepcopy(model)
    result = pk.prune(model, case.inputs, pk.HiddenPruning(0.25, "l2"))
    assert not result.skipped
    assert sum(p.numel() for p in model.parameters()) == predicted_params(original, result.plan)
    assert first_embedding(model).shape[-1] == KEPT
    norms = [m for m in model.modules() if is_layer_norm(m)
             and getattr(m, "weight", None) is not None and m.weight.shape[0] in (HIDDEN, KEPT)]
    assert norms and all(m.weight.shape[0] == KEPT for m in norms)
    first = outputs(model, case.inputs)[0]
    assert first.shape[-1] == KEPT and torch.isfinite(first).all()
    if result.config_matches:
        assert model.config.hidden_size == KEPT
        model.save_pretrained(tmp_path / "hf")
        import transformers

        reloaded = transformers.AutoModel.from_pretrained(tmp_path / "hf").eval()
    else:
        reloaded = pk.load(pk.save(model, tmp_path / "pk", result.plan), case.build())
    for a, b in zip(outputs(model, case.inputs), outputs(reloaded, case.inputs)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_dead_hidden_channels_are_the_ones_removed(name):
    model = CASES[name].build()
    dead = [3, 17, 40, 41]
    with torch.no_grad():  # every weight that reads or writes these channels is zero
        for _, p in model.named_parameters():
            for dim, size in enumerate(p.shape):
                if size == HIDDEN:
                    p.index_fill_(dim, torch.tensor(dead), 0.0)
    result = pk.prune(model, TOKENS, pk.HiddenPruning(len(dead) / HIDDEN, "l1"))
    name = next(n for n, p in model.named_parameters() if p is first_embedding(model))
    assert sorted(set(range(HIDDEN)) - set(result.plan.tensors[name][1])) == dead


@pytest.mark.parametrize("name", CAUSAL)
def test_a_causal_lm_generates_with_its_cache_after_hidden_pruning(name):
    model = causal_lm(name)
    pk.prune(model, TOKENS, pk.HiddenPruning(0.25, "l2"))
    assert first_embedding(model).shape[-1] == KEPT
    prompt = TOKENS["input_ids"][:1, :5]
    tokens = greedy(model, prompt)
    assert tokens.shape == (1, 11)
    assert torch.equal(tokens, greedy(model, prompt, use_cache=False))


def test_a_model_without_a_normalised_hidden_size_is_a_clear_error():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
                          nn.LazyLinear(4))
    model(torch.randn(1, 3, 8, 8))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(pk.PruneError, match="HiddenPruning: the model has no hidden size"):
        pk.prune(model, torch.randn(1, 3, 8, 8), pk.HiddenPruning(0.5))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def tiny_timm_vit() -> nn.Module:
    import timm

    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8,
                             num_classes=10).eval()


def test_a_timm_vision_transformer_narrows_and_reloads(tmp_path):
    model, images = tiny_timm_vit(), torch.randn(2, 3, 32, 32)
    result = pk.prune(model, images, pk.HiddenPruning(0.25, "l2"))
    assert model.cls_token.shape[-1] == 192 * 3 // 4 and model.head.in_features == 144
    assert all(block.norm1.normalized_shape == (144,) for block in model.blocks)
    logits = outputs(model, images)[0]
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()
    reloaded = pk.load(pk.save(model, tmp_path / "vit", result.plan), tiny_timm_vit())
    assert torch.equal(outputs(reloaded, images)[0], logits)
