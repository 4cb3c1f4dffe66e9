"""Attention-head pruning on small randomly initialised Hugging Face encoders."""

import copy

import pytest
import torch
import transformers

import prunekit as pk

from .helpers import check_pruned, outputs

transformers.logging.set_verbosity_error()


def bert():
    torch.manual_seed(0)
    config = transformers.BertConfig(hidden_size=64, num_attention_heads=4, intermediate_size=128,
                                     num_hidden_layers=2, vocab_size=100)
    return transformers.BertModel(config).eval()


def roberta():
    torch.manual_seed(0)
    config = transformers.RobertaConfig(hidden_size=64, num_attention_heads=4,
                                        intermediate_size=128, num_hidden_layers=2,
                                        vocab_size=100)
    return transformers.RobertaModel(config).eval()


def distilbert():
    torch.manual_seed(0)
    config = transformers.DistilBertConfig(dim=64, n_heads=4, hidden_dim=128, n_layers=2,
                                           vocab_size=100)
    return transformers.DistilBertModel(config).eval()


INPUTS = {"input_ids": torch.randint(0, 100, (2, 8), generator=torch.Generator().manual_seed(0))}
MODELS = {"bert": (bert, "encoder.layer.{}.attention.self", "num_attention_heads"),
          "roberta": (roberta, "encoder.layer.{}.attention.self", "num_attention_heads"),
          "distilbert": (distilbert, "transformer.layer.{}.attention", "n_heads")}


@pytest.mark.parametrize("name", MODELS)
def test_head_pruning_removes_whole_heads_and_updates_counts(name, tmp_path):
    build, attention, count = MODELS[name]
    result = check_pruned(build(), INPUTS, pk.HeadPruning(0.5, "l1"), tmp_path)
    for layer in range(2):
        assert result.plan.attributes[attention.format(layer)][count] == 2
    pruned = copy.deepcopy(build())
    three_of_four = pk.prune(pruned, INPUTS, pk.HeadPruning(0.25, "l2"))
    module = pruned.get_submodule(attention.format(0))
    assert getattr(module, count) == 3
    projections = [p for p in module.parameters() if p.dim() == 2]
    # q/k/v keep 3 heads × 16 rows; an output projection inside the module keeps 48 columns
    assert projections and all(sorted(p.shape) == [48, 64] for p in projections)
    assert pk.verify(build(), INPUTS, three_of_four.plan).ok


def test_dead_heads_are_the_ones_magnitude_removes_and_removing_them_changes_nothing():
    model = bert()
    attention = model.encoder.layer[0].attention
    head = attention.self.attention_head_size
    with torch.no_grad():
        for dead in (1, 3):
            rows = slice(dead * head, (dead + 1) * head)
            for projection in (attention.self.query, attention.self.key, attention.self.value):
                projection.weight[rows] = 0
                projection.bias[rows] = 0
            attention.output.dense.weight[:, rows] = 0
    original = copy.deepcopy(model)
    only_layer_0 = {"encoder.layer.0.attention.self.query": 0.5}
    result = pk.prune(model, INPUTS, pk.HeadPruning(0.0, "l1", overrides=only_layer_0))
    assert list(result.plan.attributes) == ["encoder.layer.0.attention.self"]
    kept_rows = result.plan.tensors["encoder.layer.0.attention.self.query.weight"][0]
    assert kept_rows == list(range(0, head)) + list(range(2 * head, 3 * head))
    for a, b in zip(outputs(model, INPUTS), outputs(original, INPUTS)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_a_model_without_findable_heads_is_a_clear_error():
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    with pytest.raises(pk.PruneError, match="no attention heads"):
        pk.prune(model, torch.randn(1, 8), pk.HeadPruning(0.5))


def torchvision_vit():
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(32, 8, num_layers=2, num_heads=4, hidden_dim=64,
                                                 mlp_dim=128, num_classes=10).eval()
    torch.nn.init.normal_(model.heads.head.weight, std=0.02)  # zero-initialised otherwise
    return model


def transformer_encoder(batch_first):
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(64, 4, 128, dropout=0.0, batch_first=batch_first)
    return torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).eval()


def transformer_decoder():
    torch.manual_seed(0)
    layer = torch.nn.TransformerDecoderLayer(64, 4, 128, dropout=0.0, batch_first=True)
    return torch.nn.TransformerDecoder(layer, 2).eval()


MULTIHEAD = {
    "torchvision_vit": (torchvision_vit, torch.randn(2, 3, 32, 32)),
    "encoder_batch_first": (lambda: transformer_encoder(True), torch.randn(2, 8, 64)),
    "encoder_sequence_first": (lambda: transformer_encoder(False), torch.randn(8, 2, 64)),
    # self-attention on the target, cross-attention to a longer memory
    "decoder": (transformer_decoder, (torch.randn(2, 6, 64), torch.randn(2, 9, 64))),
}


@pytest.mark.parametrize("name", MULTIHEAD)
def test_multihead_attention_loses_whole_heads(name, tmp_path):
    from prunekit.surgery.handlers.attention import PrunedMultiheadAttention

    build, x = MULTIHEAD[name]
    result = check_pruned(build(), x, pk.HeadPruning(0.5, "l2"), tmp_path)
    model = build()
    pk.prune(model, x, pk.HeadPruning(0.5, "l2"))
    attentions = [m for m in model.modules() if isinstance(m, torch.nn.MultiheadAttention)]
    assert attentions and all(type(m) is PrunedMultiheadAttention for m in attentions)
    for attention in attentions:
        assert attention.num_heads == 2 and attention.head_dim == 16
        assert attention.in_proj_weight.shape == (3 * 32, 64)
        assert attention.out_proj.weight.shape == (64, 32)
    removed = len(attentions) * (3 * 32 * 64 + 3 * 32 + 64 * 32)
    assert result.before.params - result.after.params == removed


@pytest.mark.parametrize("criterion", ["output", "gradient", "reconstruction"])
def test_data_criteria_score_nothing_in_multihead_attention_and_weights_decide(criterion):
    """nn.MultiheadAttention applies its output projection's weights itself, so no hook on
    out_proj fires: the criteria return no scores (not equal ones, not an error) and the
    heads are ranked by their weights."""
    x = torch.randn(2, 8, 64, generator=torch.Generator().manual_seed(1))
    assert pk.head_importance(transformer_encoder(True), x, [x], criterion=criterion).keys() \
        == pk.head_importance(transformer_encoder(True), x, [x], criterion="l1").keys()
    by_data = pk.prune(transformer_encoder(True), x, pk.HeadPruning(0.5, criterion),
                       data=[x, torch.randn(2, 8, 64)])
    by_weights = pk.prune(transformer_encoder(True), x, pk.HeadPruning(0.5, "l1"))
    assert by_data.plan.tensors == by_weights.plan.tensors


class SelfAttention(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.attention = torch.nn.MultiheadAttention(64, 4, batch_first=True)

    def forward(self, x):
        return self.attention(x, x, x)[0]


def test_pruned_multihead_attention_matches_the_masked_module_with_masks_and_weights():
    from prunekit.checks.verify import mask

    original = SelfAttention().eval()
    x = torch.randn(2, 5, 64)
    pruned = copy.deepcopy(original)
    result = pk.prune(pruned, x, pk.HeadPruning(heads={"attention": [1]}))
    masked = mask(copy.deepcopy(original), result.plan).attention
    pruned = pruned.attention
    padding = torch.tensor([[False] * 5, [False, False, False, True, True]])
    causal = torch.ones(5, 5, dtype=torch.bool).triu(1)
    for kwargs in ({}, {"key_padding_mask": padding}, {"attn_mask": causal},
                   {"need_weights": True, "average_attn_weights": False}):
        expected, expected_weights = masked(x, x, x, **kwargs)
        got, got_weights = pruned(x, x, x, **kwargs)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        if kwargs.get("average_attn_weights") is False:  # per head: the kept heads' maps
            torch.testing.assert_close(got_weights, expected_weights[:, [0, 2, 3]])


class CrossAttention(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.attention = torch.nn.MultiheadAttention(64, 4)  # sequence first

    def forward(self, x, memory):
        return self.attention(x, memory, memory)[0]


def test_pruned_cross_attention_matches_the_masked_module_with_masks():
    from prunekit.checks.verify import mask

    original = CrossAttention().eval()
    x, memory = torch.randn(5, 2, 64), torch.randn(7, 2, 64)
    pruned = copy.deepcopy(original)
    result = pk.prune(pruned, (x, memory), pk.HeadPruning(heads={"attention": [0, 2]}))
    masked = mask(copy.deepcopy(original), result.plan).attention
    pruned = pruned.attention
    assert pruned.num_heads == 2 and pruned.in_proj_weight.shape == (96, 64)
    padding = torch.tensor([[False] * 7, [False] * 4 + [True] * 3])
    for kwargs in ({}, {"key_padding_mask": padding},
                   {"need_weights": True, "average_attn_weights": False}):
        expected, expected_weights = masked(x, memory, memory, **kwargs)
        got, got_weights = pruned(x, memory, memory, **kwargs)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        if kwargs.get("average_attn_weights") is False:
            assert got_weights.shape == (2, 2, 5, 7)
            torch.testing.assert_close(got_weights, expected_weights[:, [1, 3]])


class SeparateProjections(torch.nn.Module):
    """Key and value narrower than the query: q/k/v_proj_weight instead of a packed weight."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.attention = torch.nn.MultiheadAttention(64, 4, kdim=40, vdim=24, batch_first=True)

    def forward(self, x, keys, values):
        return self.attention(x, keys, values)[0]


class ExtraTokens(torch.nn.Module):
    """A learned key/value token (``add_bias_kv``) and a zero one (``add_zero_attn``)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.attention = torch.nn.MultiheadAttention(64, 4, add_bias_kv=True, add_zero_attn=True)

    def forward(self, x):
        return self.attention(x, x, x)[0]


@pytest.mark.parametrize("build, inputs, kept_shapes", [
    (SeparateProjections, (torch.randn(2, 5, 64), torch.randn(2, 7, 40), torch.randn(2, 7, 24)),
     {"q_proj_weight": (32, 64), "k_proj_weight": (32, 40), "v_proj_weight": (32, 24)}),
    (ExtraTokens, (torch.randn(5, 2, 64),),
     {"in_proj_weight": (96, 64), "bias_k": (1, 1, 32), "bias_v": (1, 1, 32)}),
])
def test_multihead_attention_with_its_other_options_loses_whole_heads(build, inputs, kept_shapes,
                                                                      tmp_path):
    from prunekit.checks.verify import mask
    from prunekit.surgery.handlers.attention import PrunedMultiheadAttention

    original = build().eval()
    result = check_pruned(original, inputs, pk.HeadPruning(0.5, "l2"), tmp_path)
    pruned = copy.deepcopy(original)
    pk.prune(pruned, inputs, pk.HeadPruning(0.5, "l2"))
    attention = pruned.attention
    assert type(attention) is PrunedMultiheadAttention and attention.num_heads == 2
    assert {name: tuple(getattr(attention, name).shape) for name in kept_shapes} == kept_shapes
    masked = mask(copy.deepcopy(original), result.plan).attention
    x = inputs[0]
    keys, values = (inputs[1], inputs[2]) if len(inputs) == 3 else (x, x)
    sources = keys.shape[1] if attention.batch_first else keys.shape[0]
    padding = torch.zeros(2, sources, dtype=torch.bool)
    padding[1, -2:] = True
    with torch.no_grad():
        for kwargs in ({}, {"key_padding_mask": padding},
                       {"need_weights": True, "average_attn_weights": False}):
            expected, expected_weights = masked(x, keys, values, **kwargs)
            got, got_weights = attention(x, keys, values, **kwargs)
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
            if kwargs.get("average_attn_weights") is False:  # the extra tokens included
                assert got_weights.shape[-1] == expected_weights.shape[-1]


class RelativeBiasAttention(torch.nn.Module):
    """Attention whose per-head position bias (an embedding with one column per head, as in
    T5) reaches the scores as scaled_dot_product_attention's float mask."""

    def __init__(self, width=32, num_heads=4, buckets=8):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, width // num_heads
        self.qkv = torch.nn.Linear(width, 3 * width)
        self.out = torch.nn.Linear(width, width)
        self.position_bias = torch.nn.Embedding(buckets, num_heads)

    def forward(self, x):
        batch, tokens, _ = x.shape
        q, k, v = (t.view(batch, tokens, self.num_heads, self.head_dim).transpose(1, 2)
                   for t in self.qkv(x).chunk(3, dim=-1))
        distance = torch.arange(tokens)[None, :] - torch.arange(tokens)[:, None]
        bias = self.position_bias(distance.clamp(0, 7)).permute(2, 0, 1).unsqueeze(0)
        mixed = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias,
                                                                 scale=self.head_dim ** -0.5)
        return self.out(mixed.transpose(1, 2).reshape(batch, tokens, -1))


def test_a_per_head_bias_in_the_attention_mask_loses_the_pruned_heads(tmp_path):
    """The mask's head dim is the scores' head dim, so the bias column of a removed head goes
    with it; before, the mask was fixed whole and no head could be removed."""
    torch.manual_seed(0)
    x = torch.randn(2, 6, 32)
    result = check_pruned(RelativeBiasAttention(), x, pk.HeadPruning(0.5, "l1"), tmp_path)
    assert len(result.plan.tensors["position_bias.weight"][1]) == 2
    assert result.plan.attributes[""]["num_heads"] == 2


def test_t5_heads_go_with_their_relative_position_bias(tmp_path):
    """T5 computes the bias once per stack and hands it to every layer: each head is one
    group across the stack, its bias column included, and T5's ``key_value_proj_dim`` is
    taken as the head size, so the dims inside heads are left to HeadPruning."""
    torch.manual_seed(0)
    config = transformers.T5Config(d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4,
                                   vocab_size=100)
    model = transformers.T5ForConditionalGeneration(config).eval()
    inputs = {**INPUTS, "decoder_input_ids": INPUTS["input_ids"].flip(-1)}
    result = check_pruned(model, inputs, pk.HeadPruning(0.5, "l1"), tmp_path)
    bias = "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
    assert len(result.plan.tensors[bias][1]) == 2
    assert not result.skipped
    mlp = pk.prune(copy.deepcopy(model), inputs, pk.FilterPruning(0.5, "l1"))
    assert not mlp.skipped and not any("SelfAttention" in name or "EncDecAttention" in name
                                       for name in mlp.plan.tensors)


@pytest.mark.parametrize("model_type, attention, count", [
    # the padding mask is expanded to the scores (expand_as): it carries their heads
    ("flaubert", "attentions.0", "n_heads"),
    # q/k/v fused per head (a view to 3 × head_size), the rotated part of head_size merged back
    ("gpt_neox", "layers.0.attention", None),
])
def test_heads_are_found_where_the_view_does_not_show_them_plainly(model_type, attention, count,
                                                                   tmp_path):
    from contracts.hf import small_config

    torch.manual_seed(0)
    model = transformers.AutoModel.from_config(small_config(model_type)).eval()
    result = check_pruned(model, INPUTS, pk.HeadPruning(0.5, "l1"), tmp_path)
    assert not result.skipped
    if count:
        assert result.plan.attributes[attention][count] == 2
    mlp = pk.prune(copy.deepcopy(model), INPUTS, pk.FilterPruning(0.5, "l1"))
    assert not any(name.startswith(attention + ".") for name in mlp.plan.tensors)


def test_a_layer_index_equal_to_the_head_count_is_not_a_head_count():
    """Cohere's third attention layer has layer_idx 2 beside two key/value heads; taking it
    for a head count once broke that layer's cache, so its heads were left unpruned."""
    config = transformers.CohereConfig(vocab_size=128, hidden_size=64, intermediate_size=128,
                                       num_hidden_layers=4, num_attention_heads=4,
                                       num_key_value_heads=2)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    inputs = {"input_ids": torch.randint(3, 100, (2, 8))}
    result = pk.prune(model, inputs, pk.HeadPruning(0.5, "l2"))
    assert result.skipped == []
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == [0, 1, 2, 3]
    assert not any("layer_idx" in values for values in result.plan.attributes.values())


def _text_batches():
    generator = torch.Generator().manual_seed(3)
    return [{"input_ids": torch.randint(0, 100, (4, 10), generator=generator)}
            for _ in range(2)]


@pytest.mark.parametrize("criterion", ["output", "gradient"])
def test_heads_removed_in_rounds_are_those_of_pruning_again_after_each_round(criterion):
    """Silencing the heads chosen so far scores the rest as removing them would: two rounds
    remove what two physical prunes in a row remove."""
    data = _text_batches()
    rounds = bert()
    result = pk.prune(rounds, data[0], pk.HeadPruning(0.5, criterion, rounds=2), data=data)
    twice = bert()
    first = pk.prune(twice, data[0], pk.HeadPruning(0.25, criterion), data=data).plan
    second = pk.prune(twice, data[0], pk.HeadPruning(0.34, criterion), data=data).plan
    chained = first.then(second)
    assert result.plan.tensors == chained.tensors
    assert [m.num_attention_heads for m in rounds.modules()
            if type(m).__name__ == "BertSelfAttention"] == [2, 2]
    assert pk.verify(bert(), data[0], result.plan).ok


def test_rounds_are_refused_where_they_cannot_apply():
    with pytest.raises(pk.ConfigError, match="rounds must be a positive integer"):
        pk.HeadPruning(0.5, "output", rounds=0)
    with pytest.raises(pk.ConfigError, match="does not combine with a budget"):
        pk.HeadPruning(criterion="output", rounds=2, flops_target=0.2)


def test_output_criterion_reads_the_logits_when_batches_carry_labels():
    """A causal LM given labels returns its loss first: the criterion compares logits."""
    import transformers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=32,
                                      num_hidden_layers=1, num_attention_heads=4,
                                      num_key_value_heads=4)
    model = transformers.LlamaForCausalLM(config).eval()
    ids = torch.randint(0, 50, (2, 6))
    result = pk.prune(model, {"input_ids": ids}, pk.HeadPruning(0.5, criterion="output"),
                      data=[{"input_ids": ids, "labels": ids}])
    assert result.report.ok and model.config.num_attention_heads == 2
