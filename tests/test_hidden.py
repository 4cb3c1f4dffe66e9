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
from .test_heads import torchvision_vit
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
        reloaded = pk.load(case.build(), pk.save(model, tmp_path / "pk", result.plan))
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
    reloaded = pk.load(tiny_timm_vit(), pk.save(model, tmp_path / "vit", result.plan))
    assert torch.equal(outputs(reloaded, images)[0], logits)


class TokenTransformer(nn.Module):
    """Token embeddings into ``nn.Transformer`` (encoder and decoder), then a classifier."""

    def __init__(self, norm_first: bool):
        super().__init__()
        torch.manual_seed(0)
        self.source, self.target = nn.Embedding(50, 64), nn.Embedding(50, 64)
        self.transformer = nn.Transformer(64, 4, 2, 2, 128, dropout=0.0, batch_first=True,
                                          norm_first=norm_first)
        self.classify = nn.Linear(64, 5)

    def forward(self, source, target):
        return self.classify(self.transformer(self.source(source), self.target(target)))


MULTIHEAD = {
    "torchvision_vit": (torchvision_vit, torch.randn(2, 3, 32, 32)),
    "transformer_post_norm": (lambda: TokenTransformer(False).eval(),
                              (torch.randint(0, 50, (2, 7)), torch.randint(0, 50, (2, 5)))),
    "transformer_pre_norm": (lambda: TokenTransformer(True).eval(),
                             (torch.randint(0, 50, (2, 7)), torch.randint(0, 50, (2, 5)))),
}


@pytest.mark.parametrize("name", MULTIHEAD)
def test_models_built_on_multihead_attention_narrow_and_reload(name, tmp_path):
    from prunekit.surgery.handlers.attention import PrunedMultiheadAttention

    build, inputs = MULTIHEAD[name]
    model, original = build(), build()
    expected_shapes = [o.shape for o in outputs(model, inputs)]
    result = pk.prune(model, inputs, pk.HiddenPruning(0.25, "l2"))
    assert not result.skipped
    assert sum(p.numel() for p in model.parameters()) == predicted_params(original, result.plan)
    attentions = [m for m in model.modules() if isinstance(m, nn.MultiheadAttention)]
    assert attentions and all(type(m) is PrunedMultiheadAttention for m in attentions)
    for attention in attentions:  # reads and writes 48 channels, keeps 4 heads of 16 inside
        assert (attention.embed_dim, attention.kdim, attention.vdim) == (48, 48, 48)
        assert attention.in_proj_weight.shape == (3 * 64, 48)
        assert attention.out_proj.weight.shape == (48, 64)
    norms = [m for m in model.modules() if isinstance(m, nn.LayerNorm)]
    assert norms and all(m.normalized_shape == (48,) for m in norms)
    got = outputs(model, inputs)
    assert [o.shape for o in got] == expected_shapes and all(torch.isfinite(o).all() for o in got)
    if name == "torchvision_vit":  # the width its forward reshapes patches to
        assert model.hidden_dim == 48 and model.class_token.shape == (1, 1, 48)
    reloaded = pk.load(build(), pk.save(model, tmp_path / name, result.plan))
    for a, b in zip(got, outputs(reloaded, inputs)):
        assert torch.equal(a, b)


def test_a_narrowed_multihead_attention_computes_what_the_wide_one_does_on_zeroed_channels():
    """Reading fewer embedding channels (the inner width kept) is exactly the original module
    fed zeros in the removed channels, its removed output channels dropped."""
    from prunekit.surgery.handlers import sync_attributes

    torch.manual_seed(0)
    wide = nn.MultiheadAttention(64, 4, batch_first=True).eval()
    kept, removed = torch.tensor([i for i in range(64) if i % 4]), list(range(0, 64, 4))
    narrow = copy.deepcopy(wide)
    narrow.in_proj_weight = nn.Parameter(wide.in_proj_weight[:, kept])
    narrow.out_proj.weight = nn.Parameter(wide.out_proj.weight[kept])
    narrow.out_proj.bias = nn.Parameter(wide.out_proj.bias[kept])
    narrow.embed_dim = narrow.kdim = narrow.vdim = len(kept)
    sync_attributes(narrow)
    x = torch.randn(2, 5, 64)
    x[..., removed] = 0
    padding = torch.tensor([[False] * 5, [False, False, False, True, True]])
    with torch.no_grad():
        for kwargs in ({}, {"key_padding_mask": padding}):
            expected = wide(x, x, x, **kwargs)[0][..., kept]
            got = narrow(x[..., kept], x[..., kept], x[..., kept], **kwargs)[0]
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def tiny_timm_swin() -> nn.Module:
    import timm

    torch.manual_seed(0)
    return timm.create_model("swin_tiny_patch4_window7_224", img_size=64, window_size=4,
                             embed_dim=32, depths=(2, 2), num_heads=(2, 4), num_classes=10).eval()


def test_a_timm_swin_narrows_every_stage_and_reloads(tmp_path):
    """Each stage's stream is its own width (patch merging concatenates four positions and
    projects them to the next width): every stage narrows by the ratio."""
    model, images = tiny_timm_swin(), torch.randn(2, 3, 64, 64)
    result = pk.prune(model, images, pk.HiddenPruning(0.25, "l2"))
    assert not result.skipped
    for stage, width in ((0, 24), (1, 48)):
        blocks = model.layers[stage].blocks
        assert all(b.norm1.normalized_shape == (width,) for b in blocks)
        assert all(b.attn.qkv.in_features == width and b.attn.proj.out_features == width
                   for b in blocks)
    merge = model.layers[1].downsample
    assert merge.norm.normalized_shape == (4 * 24,) and merge.reduction.weight.shape == (48, 96)
    logits = outputs(model, images)[0]
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()
    reloaded = pk.load(tiny_timm_swin(), pk.save(model, tmp_path / "swin", result.plan))
    assert torch.equal(outputs(reloaded, images)[0], logits)
