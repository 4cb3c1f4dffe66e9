"""Heads, MLP neurons and whole layers of small randomly initialised Hugging Face models:
every pruned model runs, has the parameter count the sizes imply, matches its masked (or
layer-skipped) original, and saves and reloads as the README says."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

import pytest
import torch
import transformers

import prunekit as pk
from prunekit.checks.verify import mask
from prunekit.graph.rules import HEAD_COUNT

from .helpers import check_pruned, outputs

transformers.logging.set_verbosity_error()

HIDDEN, HEADS, INTERMEDIATE, LAYERS, VOCAB = 64, 4, 128, 3, 100
COMMON = dict(hidden_size=HIDDEN, num_attention_heads=HEADS, intermediate_size=INTERMEDIATE,
              num_hidden_layers=LAYERS, vocab_size=VOCAB)
TOKENS = {"input_ids": torch.randint(0, VOCAB, (2, 8), generator=torch.Generator().manual_seed(0))}
IMAGES = {"pixel_values": torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))}


@dataclass
class Case:
    build: Callable[[], transformers.PreTrainedModel]
    inputs: dict
    kv_heads: int = HEADS
    qkv_bias: bool = True
    mlp_matrices: int = 2  # up + down, or gate + up + down
    mlp_bias: bool = True
    intermediate: int = INTERMEDIATE
    head_config: bool = False  # head-pruned models save with save_pretrained
    mlp_config: bool = True  # MLP-pruned models save with save_pretrained
    causal_lm: type | None = None


def _model(model_class, config_class, **kwargs):
    def build():
        torch.manual_seed(0)
        return model_class(config_class(**kwargs)).eval()
    return build


CASES = {
    "bert": Case(_model(transformers.BertModel, transformers.BertConfig, **COMMON), TOKENS),
    "roberta": Case(_model(transformers.RobertaModel, transformers.RobertaConfig, **COMMON),
                    TOKENS),
    "distilbert": Case(_model(transformers.DistilBertModel, transformers.DistilBertConfig,
                              dim=HIDDEN, n_heads=HEADS, hidden_dim=INTERMEDIATE,
                              n_layers=LAYERS, vocab_size=VOCAB), TOKENS),
    "vit": Case(_model(transformers.ViTModel, transformers.ViTConfig, image_size=32,
                       patch_size=8, **{k: v for k, v in COMMON.items() if k != "vocab_size"}),
                IMAGES, head_config=True),
    "gpt2": Case(_model(transformers.GPT2Model, transformers.GPT2Config, n_embd=HIDDEN,
                        n_head=HEADS, n_layer=LAYERS, vocab_size=VOCAB), TOKENS,
                 intermediate=4 * HIDDEN, mlp_config=False, causal_lm=transformers.GPT2LMHeadModel),
    "llama": Case(_model(transformers.LlamaModel, transformers.LlamaConfig, **COMMON), TOKENS,
                  qkv_bias=False, mlp_matrices=3, mlp_bias=False, head_config=True,
                  causal_lm=transformers.LlamaForCausalLM),
    "llama_gqa": Case(_model(transformers.LlamaModel, transformers.LlamaConfig,
                             num_key_value_heads=2, **COMMON), TOKENS, kv_heads=2,
                      qkv_bias=False, mlp_matrices=3, mlp_bias=False, head_config=True,
                      causal_lm=transformers.LlamaForCausalLM),
    "mistral": Case(_model(transformers.MistralModel, transformers.MistralConfig,
                           num_key_value_heads=2, **COMMON), TOKENS, kv_heads=2,
                    qkv_bias=False, mlp_matrices=3, mlp_bias=False, head_config=True,
                    causal_lm=transformers.MistralForCausalLM),
    "qwen2": Case(_model(transformers.Qwen2Model, transformers.Qwen2Config,
                         num_key_value_heads=2, **COMMON), TOKENS, kv_heads=2,
                  mlp_matrices=3, mlp_bias=False, head_config=True,
                  causal_lm=transformers.Qwen2ForCausalLM),
    "qwen3": Case(_model(transformers.Qwen3Model, transformers.Qwen3Config, head_dim=16,
                         num_key_value_heads=2, **COMMON), TOKENS, kv_heads=2, qkv_bias=False,
                  mlp_matrices=3, mlp_bias=False, head_config=True,
                  causal_lm=transformers.Qwen3ForCausalLM),
    "gemma": Case(_model(transformers.GemmaModel, transformers.GemmaConfig, head_dim=16,
                         num_key_value_heads=2, **COMMON), TOKENS, kv_heads=2, qkv_bias=False,
                  mlp_matrices=3, mlp_bias=False, head_config=True,
                  causal_lm=transformers.GemmaForCausalLM),
}


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def assert_reloads(model, inputs, tmp_path) -> None:
    """save_pretrained → plain AutoModel.from_pretrained gives identical outputs."""
    model.save_pretrained(tmp_path / "hf")
    auto = (transformers.AutoModelForCausalLM if type(model).__name__.endswith("ForCausalLM")
            else transformers.AutoModel)
    reloaded = auto.from_pretrained(tmp_path / "hf").eval()
    for a, b in zip(outputs(model, inputs), outputs(reloaded, inputs)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", CASES)
def test_head_pruning(name, tmp_path):
    case = CASES[name]
    original = case.build()
    result = check_pruned(original, case.inputs, pk.HeadPruning(0.5, "l1"), tmp_path)
    head_dim = HIDDEN // HEADS
    q_removed, kv_removed = HEADS // 2, case.kv_heads // 2  # a kv head takes its query heads
    per_layer = (2 * q_removed + 2 * kv_removed) * head_dim * HIDDEN
    if case.qkv_bias:
        per_layer += (q_removed + 2 * kv_removed) * head_dim
    assert result.before.params - result.after.params == LAYERS * per_layer
    assert result.config_matches is case.head_config
    pruned = copy.deepcopy(original)
    pk.prune(pruned, case.inputs, pk.HeadPruning(0.5, "l1"))
    counts = [value for attributes in result.plan.attributes.values()
              for key, value in attributes.items() if HEAD_COUNT.match(key)]
    assert counts == [] or set(counts) == {HEADS // 2}
    if case.head_config:
        assert pruned.config.num_attention_heads == HEADS // 2
        assert getattr(pruned.config, "num_key_value_heads", 2) == case.kv_heads // 2
        assert_reloads(pruned, case.inputs, tmp_path)


@pytest.mark.parametrize("name", CASES)
def test_mlp_pruning(name, tmp_path):
    case = CASES[name]
    original = case.build()
    result = check_pruned(original, case.inputs, pk.FilterPruning(0.5, "l2"), tmp_path)
    removed = case.intermediate // 2
    per_layer = removed * (case.mlp_matrices * HIDDEN + case.mlp_bias)
    assert result.before.params - result.after.params == LAYERS * per_layer
    assert result.config_matches is case.mlp_config
    if case.mlp_config:
        pruned = copy.deepcopy(original)
        pk.prune(pruned, case.inputs, pk.FilterPruning(0.5, "l2"))
        sizes = [getattr(pruned.config, key, None) for key in ("intermediate_size", "hidden_dim")]
        assert removed in sizes
        assert_reloads(pruned, case.inputs, tmp_path)


def skipping(model, block):
    """The reference for a removed block: the same model with the block passing its input
    through (a forward hook replaces its output), nothing deleted or renumbered."""
    def pass_through(_module, args, kwargs, output):
        hidden = args[0] if args else kwargs["hidden_states"]
        return (hidden,) + tuple(output[1:]) if isinstance(output, tuple) else hidden
    return block.register_forward_hook(pass_through, with_kwargs=True)


def stack_of(model) -> torch.nn.ModuleList:
    from prunekit.surgery.stacks import find_block_stack
    return model.get_submodule(find_block_stack(model))


@pytest.mark.parametrize("name", CASES)
def test_layer_pruning(name, tmp_path):
    case = CASES[name]
    original = case.build()
    model = copy.deepcopy(original)
    result = pk.prune(model, case.inputs, pk.LayerPruning(1, "influence"), data=[case.inputs])
    (removed,) = result.plan.layers
    removed_block = original.get_submodule(removed)
    assert result.after.params == n_params(original) - n_params(removed_block) == n_params(model)
    assert len(stack_of(model)) == LAYERS - 1
    assert model.config.num_hidden_layers == LAYERS - 1
    indices = [m.layer_idx for block in stack_of(model) for m in block.modules()
               if isinstance(getattr(m, "layer_idx", None), int)]
    assert sorted(set(indices)) == (list(range(LAYERS - 1)) if indices else [])
    handle = skipping(original, removed_block)
    try:
        expected = outputs(original, case.inputs)
    finally:
        handle.remove()
    for a, b in zip(expected, outputs(model, case.inputs)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert result.config_matches is True
    assert_reloads(model, case.inputs, tmp_path)
    pk.save(model, tmp_path / "pk", result.plan)
    restored = pk.load(case.build(), tmp_path / "pk")
    assert restored.config.num_hidden_layers == LAYERS - 1
    for a, b in zip(outputs(model, case.inputs), outputs(restored, case.inputs)):
        assert torch.equal(a, b)


CAUSAL = [name for name, case in CASES.items() if case.causal_lm is not None]
METHODS = {"heads": pk.HeadPruning(0.5, "l1"), "mlp": pk.FilterPruning(0.5, "l1"),
           "layers": pk.LayerPruning(1, "last")}


def causal_lm(name):
    base = CASES[name].build()
    torch.manual_seed(0)
    model = CASES[name].causal_lm(base.config).eval()
    model.base_model.load_state_dict(base.state_dict())
    return model


def greedy(model, prompt, use_cache=True):
    with torch.no_grad():
        return model.generate(prompt, max_new_tokens=6, do_sample=False, use_cache=use_cache,
                              pad_token_id=0)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", CAUSAL)
def test_causal_lm_generates_with_its_cache_after_pruning(name, method, tmp_path):
    original = causal_lm(name)
    model = copy.deepcopy(original)
    result = pk.prune(model, TOKENS, METHODS[method])
    prompt = TOKENS["input_ids"][:1, :5]
    tokens = greedy(model, prompt)
    assert tokens.shape == (1, 11)
    assert torch.equal(tokens, greedy(model, prompt, use_cache=False))
    if result.plan.layers:
        handle = skipping(original, original.get_submodule(result.plan.layers[0]))
        try:
            assert torch.equal(tokens, greedy(original, prompt, use_cache=False))
        finally:
            handle.remove()
    else:
        assert torch.equal(tokens, greedy(mask(copy.deepcopy(original), result.plan), prompt))


@pytest.mark.parametrize("criterion", ["gradient", "output", "reconstruction"])
def test_head_criteria_remove_a_head_whose_output_is_zero(criterion):
    model = CASES["bert"].build()
    attention = model.encoder.layer[1].attention
    rows = slice(2 * 16, 3 * 16)
    with torch.no_grad():
        attention.self.value.weight[rows] = 0
        attention.self.value.bias[rows] = 0
    data = [{"input_ids": torch.randint(0, VOCAB, (4, 8), generator=torch.Generator().manual_seed(s))}
            for s in range(2)]
    result = pk.prune(model, TOKENS, pk.HeadPruning(0.25, criterion), data=data)
    kept = result.plan.tensors["encoder.layer.1.attention.self.value.weight"][0]
    assert kept == list(range(0, 32)) + list(range(48, 64))


def test_head_output_scores_are_how_far_removing_each_head_moves_the_output():
    import torch.nn.functional as F

    model = CASES["bert"].build()
    data = [{"input_ids": torch.randint(0, VOCAB, (4, 8), generator=torch.Generator().manual_seed(s))}
            for s in range(2)]
    scores = pk.head_importance(model, TOKENS, data, criterion="output")
    layer = next(name for name in scores if ".1." in name)
    expected = [outputs(model, batch)[0] for batch in data]
    for head in range(scores[layer].numel()):
        pruned = copy.deepcopy(model)
        pk.prune(pruned, TOKENS, pk.HeadPruning(heads={layer: [head]}))
        moved = torch.cat([1 - F.cosine_similarity(outputs(pruned, batch)[0], reference, dim=-1)
                           for batch, reference in zip(data, expected)])
        assert scores[layer][head].item() == pytest.approx(moved.mean().item(), abs=1e-6)
    assert scores[layer].min() > 0 and len(set(scores[layer].tolist())) == scores[layer].numel()


def _many_rows() -> list[dict]:
    """Batches with several times more tokens than a projection has inputs: a least-squares
    fit on them explains what the inputs carry, not noise."""
    return [{"input_ids": torch.randint(0, VOCAB, (8, 12), generator=torch.Generator().manual_seed(s))}
            for s in range(6)]


def _projection_rows(model, layer: int, data: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    """The inputs (with a column of ones) and outputs of one BERT layer's output projection."""
    dense = model.encoder.layer[layer].attention.output.dense
    rows, wanted = [], []

    def capture(_module, args, output):
        rows.append(args[0].reshape(-1, HIDDEN))
        wanted.append(output.reshape(-1, HIDDEN))

    handle = dense.register_forward_hook(capture)
    with torch.no_grad():
        for batch in data:
            model(**batch)
    handle.remove()
    rows = torch.cat(rows).double()
    return torch.cat([rows, torch.ones(len(rows), 1, dtype=rows.dtype)], 1), torch.cat(wanted).double()


def test_reconstruction_scores_are_greedy_least_squares_removal():
    """Each head's score is the fraction of the projection's output variance a ridge
    least-squares re-fit leaves unexplained once it and the heads removed before it are gone,
    the heads going in the order a brute-force greedy search picks."""
    from prunekit.recover.reconstruct import RIDGE

    model = CASES["bert"].build()
    data = _many_rows()
    scores = pk.head_importance(model, TOKENS, data, criterion="reconstruction")
    head_size = HIDDEN // HEADS
    for layer in range(LAYERS):
        rows, wanted = _projection_rows(model, layer, data)
        gram = rows.T @ rows
        ridge = RIDGE * gram.diagonal()[:-1].mean() * torch.eye(HIDDEN + 1, dtype=gram.dtype)
        ridge[-1, -1] = 0
        variance = (wanted - wanted.mean(0)).square().sum()

        def error(heads: list[int]) -> float:
            columns = [h * head_size + c for h in heads for c in range(head_size)] + [HIDDEN]
            a = rows[:, columns]
            solution = torch.linalg.solve(gram[columns][:, columns] + ridge[columns][:, columns],
                                          a.T @ wanted)
            penalty = (solution * (ridge[columns][:, columns] @ solution)).sum()
            return ((a @ solution - wanted).square().sum() + penalty).item()

        kept, expected = list(range(HEADS)), torch.empty(HEADS, dtype=torch.float64)
        while kept:
            costs = {h: error([k for k in kept if k != h]) for h in kept}
            gone = min(costs, key=costs.get)
            expected[gone] = min(costs[gone] / variance.item(), 1.0)
            kept.remove(gone)
        torch.testing.assert_close(scores[f"encoder.layer.{layer}.attention"], expected,
                                   rtol=1e-6, atol=1e-9)


def test_reconstruction_removes_one_of_two_heads_that_duplicate_each_other():
    """A head whose output another head repeats costs nothing once the projection is
    re-fitted: one of the pair goes first, which scoring heads one at a time cannot see."""
    model = CASES["bert"].build()
    attention = model.encoder.layer[1].attention.self
    head = HIDDEN // HEADS
    with torch.no_grad():
        for projection in (attention.query, attention.key, attention.value):
            projection.weight[head:2 * head] = projection.weight[:head]
            projection.bias[head:2 * head] = projection.bias[:head]
    data = _many_rows()
    scores = pk.head_importance(model, TOKENS, data, criterion="reconstruction")
    layer = scores["encoder.layer.1.attention"]
    assert layer[:2].min() < 1e-3 < layer[2:].min()
    assert layer.max() == pytest.approx(1.0)  # the last head left explains nothing but the mean
    result = pk.prune(model, TOKENS, pk.HeadPruning(0.25, "reconstruction", reconstruct=True),
                      data=data)
    kept = result.plan.tensors["encoder.layer.1.attention.self.value.weight"][0]
    assert len(kept) == 3 * head and (0 not in kept or head not in kept)


def test_attention_entropy_removes_a_head_that_attends_uniformly():
    model = CASES["llama"].build()
    attention = model.layers[0].self_attn
    rows = slice(1 * 16, 2 * 16)
    with torch.no_grad():  # zero queries: every key gets the same score, uniform attention
        attention.q_proj.weight[rows] = 0
    result = pk.prune(model, TOKENS, pk.HeadPruning(0.25, "entropy"), data=[TOKENS])
    kept = result.plan.tensors["layers.0.self_attn.q_proj.weight"][0]
    assert kept == list(range(0, 16)) + list(range(32, 64))
    assert model.config._attn_implementation != "eager"  # switched back after measuring


def test_explicit_heads_are_exactly_the_ones_removed(tmp_path):
    original = CASES["llama_gqa"].build()
    method = pk.HeadPruning(heads={"layers.1.self_attn": [0]})
    result = check_pruned(original, TOKENS, method, tmp_path)
    assert result.plan.tensors["layers.1.self_attn.k_proj.weight"][0] == list(range(16, 32))
    assert result.plan.tensors["layers.1.self_attn.q_proj.weight"][0] == list(range(32, 64))
    assert not any(name.startswith("layers.0.") for name in result.plan.tensors)
    assert result.config_matches is False  # heads now differ per layer: pk.save, not HF


@pytest.mark.parametrize("heads, message", [
    ({"layers.9.self_attn": [0]}, "no attention heads"),
    ({"layers": [0]}, "3 attention layers"),
    ({"layers.0.self_attn": [0, 1]}, "must keep at least one"),
    ({"layers.0.self_attn": [5]}, "has 2 heads"),
])
def test_bad_head_selection_is_a_clear_error_and_changes_nothing(heads, message):
    model = CASES["llama_gqa"].build()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(pk.ConfigError, match=message):
        pk.prune(model, TOKENS, pk.HeadPruning(heads=heads))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def near_identity(model, blocks):
    """Blocks whose attention and MLP outputs are zero: they pass the residual through."""
    with torch.no_grad():
        for index in blocks:
            block = model.layers[index]
            block.self_attn.o_proj.weight.zero_()
            block.mlp.down_proj.weight.zero_()
    return model


@pytest.mark.parametrize("criterion", ["influence", "output", "angular"])
def test_layer_criteria_find_the_blocks_that_do_nothing(criterion):
    torch.manual_seed(0)
    config = transformers.LlamaConfig(**{**COMMON, "num_hidden_layers": 5})
    model = near_identity(transformers.LlamaModel(config).eval(), [2, 3])
    data = [{"input_ids": torch.randint(0, VOCAB, (2, 8), generator=torch.Generator().manual_seed(s))}
            for s in range(2)]
    scores = pk.layer_importance(model, data, criterion, n=2)
    assert [s.name for s in scores] == [f"layers.{i}" for i in range(5)]
    result = pk.prune(model, TOKENS, pk.LayerPruning(2, criterion), data=data)
    assert sorted(result.plan.layers) == ["layers.2", "layers.3"]
    assert model.config.num_hidden_layers == 3


def test_heads_are_found_when_the_sequence_is_as_long_as_a_head():
    model = CASES["llama_gqa"].build()
    sixteen = {"input_ids": torch.randint(0, VOCAB, (1, HIDDEN // HEADS))}  # 16 tokens, head_dim 16
    result = pk.prune(model, sixteen, pk.HeadPruning(0.5, "l1"))
    assert model.config.num_key_value_heads == 1 and result.config_matches


def test_the_contract_names_work_on_a_transformer():
    """DESIGN's examples: HeadPruning(criterion="taylor"), LayerPruning("block_influence")."""
    model = CASES["bert"].build()
    data = [TOKENS]
    taylor = pk.prune(copy.deepcopy(model), TOKENS, pk.HeadPruning(0.25, "taylor"), data=data)
    gradient = pk.prune(copy.deepcopy(model), TOKENS, pk.HeadPruning(0.25, "gradient"), data=data)
    assert taylor.plan.tensors == gradient.plan.tensors
    blocks = pk.prune(copy.deepcopy(model), TOKENS, pk.LayerPruning(1, "block_influence"),
                      data=data)
    influence = pk.prune(copy.deepcopy(model), TOKENS, pk.LayerPruning(1, "influence"), data=data)
    assert blocks.plan.layers == influence.plan.layers
    with pytest.raises(pk.ConfigError, match="unknown criterion 'apoz' for heads"):
        pk.HeadPruning(0.25, "apoz")


def test_object_pruners_score_then_remove_what_the_scores_say():
    model = CASES["llama_gqa"].build()
    heads = pk.TransformerHeadPruner(model, TOKENS, criterion="l2")
    scores = heads.head_importance()
    assert list(scores) == [f"layers.{i}.self_attn" for i in range(LAYERS)]
    assert all(s.shape == (2,) for s in scores.values())  # two key/value heads per layer
    weakest = {name: [int(s.argmin())] for name, s in scores.items()}
    result = heads.prune_heads(weakest)
    for name, (head,) in weakest.items():
        kept = result.plan.tensors[f"{name}.k_proj.weight"][0]
        assert kept == (list(range(16, 32)) if head == 0 else list(range(0, 16)))
    assert model.config.num_key_value_heads == 1
    layers = pk.TransformerLayerPruner(model, TOKENS, criterion="last")
    assert layers.prune_layers(1).plan.layers == [f"layers.{LAYERS - 1}"]
    assert model.config.num_hidden_layers == LAYERS - 1


def test_plans_chain_across_a_layer_removal(tmp_path):
    """Heads pruned after a block was deleted are named in the shorter stack; the chained
    plan names them as they were, so one plan replays both steps on a fresh model."""
    original = CASES["llama_gqa"].build()
    model = copy.deepcopy(original)
    first = pk.Plan(layers=["layers.0"], stacks=["layers"])
    pk.apply_plan(model, first)
    second = pk.prune(model, TOKENS, pk.HeadPruning(heads={"layers.1.self_attn": [1]}))
    chained = first.then(second.plan)
    assert "layers.2.self_attn.k_proj.weight" in chained.tensors  # block 1 was block 2
    assert not any(name.startswith("layers.1.") for name in chained.tensors)
    pk.save(model, tmp_path / "both", chained)
    restored = pk.load(copy.deepcopy(original), tmp_path / "both")
    assert restored.config.num_hidden_layers == LAYERS - 1
    for a, b in zip(outputs(model, TOKENS), outputs(restored, TOKENS)):
        assert torch.equal(a, b)


def test_plans_chain_when_a_later_step_removes_a_pruned_block(tmp_path):
    """Heads pruned, then the block holding some of them removed: what was pruned inside the
    removed block is moot and leaves the chained plan, which saves and replays."""
    original = CASES["llama_gqa"].build()
    model = copy.deepcopy(original)
    heads = pk.prune(model, TOKENS, pk.HeadPruning(0.5, "l1"))
    layers = pk.prune(model, TOKENS, pk.LayerPruning(1, "last"))
    chained = heads.plan.then(layers.plan)
    assert layers.plan.layers == [f"layers.{LAYERS - 1}"]
    assert not any(name.startswith(f"layers.{LAYERS - 1}.") for name in chained.tensors)
    assert "layers.0.self_attn.k_proj.weight" in chained.tensors
    pk.save(model, tmp_path / "both", chained)
    restored = pk.load(copy.deepcopy(original), tmp_path / "both")
    for a, b in zip(outputs(model, TOKENS), outputs(restored, TOKENS)):
        assert torch.equal(a, b)


def test_label_free_criteria_ignore_padding_tokens():
    """What sits in padded positions is no one's output: changing it changes no score."""
    model = CASES["bert"].build()
    ids = torch.randint(0, VOCAB, (4, 8), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(4, 8, dtype=torch.long)
    mask[1:, 5:] = 0
    other_padding = ids.clone()
    other_padding[mask == 0] = (ids[mask == 0] + 1) % VOCAB
    data, changed = ([{"input_ids": x, "attention_mask": mask}] for x in (ids, other_padding))
    for criterion in ("output", "gradient", "entropy", "reconstruction"):
        heads, heads_changed = (pk.head_importance(model, TOKENS, d, criterion=criterion)
                                for d in (data, changed))
        for layer in heads:
            torch.testing.assert_close(heads[layer], heads_changed[layer], rtol=1e-5, atol=1e-9)
    for criterion in ("influence", "angular", "output"):
        scores, scores_changed = (pk.layer_importance(model, d, criterion) for d in (data, changed))
        for a, b in zip(scores, scores_changed):
            assert a.score == pytest.approx(b.score, rel=1e-6, abs=1e-9)


def test_global_ranking_by_measured_output_change_removes_the_lowest_heads_model_wide():
    """The 'output' scores are one quantity for every layer (how far the model's output moves),
    so ranked model-wide they are compared as measured, not per layer."""
    model = CASES["bert"].build()
    data = [{"input_ids": torch.randint(0, VOCAB, (4, 8), generator=torch.Generator().manual_seed(s))}
            for s in range(2)]
    scores = pk.head_importance(model, TOKENS, data, criterion="output")
    ranked = sorted((float(v), layer, head) for layer, values in scores.items()
                    for head, v in enumerate(values))
    n = len(ranked) // 4
    result = pk.prune(model, TOKENS, pk.HeadPruning(0.25, "output", global_ranking=True),
                      data=data)
    head_size, removed = HIDDEN // HEADS, set()
    for layer in scores:
        rows = result.plan.tensors.get(f"{layer}.self.query.weight", {0: range(HIDDEN)})[0]
        removed |= {(layer, h) for h in range(HEADS) if h * head_size not in rows}
    assert len(removed) == n
    assert removed == {(layer, head) for _, layer, head in ranked[:n]}
