"""Streamed pruning from disk: the same plan, weights and outputs as pk.prune on the loaded
model, one block's weights in memory at a time, and clear errors that write nothing."""

import json

import pytest
import torch
import transformers
from typer.testing import CliRunner

import prunekit as pk
from contracts.hf import small_config
from prunekit.cli import commands as cli
from prunekit.errors import ConfigError, PruneError
from prunekit.streaming import blocks as stream_blocks
from prunekit.streaming import hidden as stream_hidden
from prunekit.streaming import orchestrator as streaming
from prunekit.streaming import width as stream_width

transformers.logging.set_verbosity_error()


def saved(tmp_path, model_type="llama", layers=4, **sizes):
    """A small random decoder saved in several shards, with a tokenizer file beside it."""
    config = small_config(model_type)
    fields = {k: v for k, v in config.to_dict().items()
              if not (isinstance(v, list) and k.endswith("types"))}
    fields.update(num_hidden_layers=layers, **sizes)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(type(config).from_dict(fields))
    source = tmp_path / "source"
    model.save_pretrained(source, max_shard_size="100KB")
    (source / "tokenizer.json").write_text('{"made up": true}')
    return source


def batches(padded=False):
    generator = torch.Generator().manual_seed(1)
    found = []
    for _ in range(3):
        batch = {"input_ids": torch.randint(3, 100, (2, 12), generator=generator)}
        if padded:
            batch["attention_mask"] = torch.ones(2, 12, dtype=torch.long)
            batch["attention_mask"][1, 8:] = 0
        found.append(batch)
    return found


def assert_reloads_as(reference, result):
    """The streamed folder, reloaded (``from_pretrained``, or ``pk.load`` where no config can
    describe the pruned sizes: sizes differing per block, Gemma's √hidden_size embedding
    scale), equals ``reference`` tensor for tensor and computes the same logits."""
    if result.config_matches:
        loaded = transformers.AutoModelForCausalLM.from_pretrained(result.folder).eval()
    else:
        config = transformers.AutoConfig.from_pretrained(result.folder)
        loaded = pk.load(transformers.AutoModelForCausalLM.from_config(config),
                         result.folder).eval()
    a, b = reference.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    fresh = {"input_ids": torch.randint(3, 100, (1, 9), generator=torch.Generator())}
    with torch.no_grad():
        assert torch.equal(reference(**fresh).logits, loaded(**fresh).logits)
    assert result.params_after == sum(p.numel() for p in loaded.parameters())


# the fast tier runs one case of each kind; cases that repeat a kind on another architecture
# run in the full suite
SLOW = pytest.mark.slow
CASES = [
    ("llama", lambda: pk.FilterPruning(0.5, "l1"), False),
    ("llama", lambda: pk.HeadPruning(0.5, "l2"), False),  # 4 query heads on 2 key/value heads
    ("qwen3", lambda: pk.ChannelPruning(0.25, "mean_activation"), True),
    ("gemma", lambda: pk.FilterPruning(0.5, "apoz"), False),  # embeddings tied to the head
    # (the fast tier keeps one case a model family; the rest run in the full suite)
    pytest.param("mistral", lambda: pk.HeadPruning(0.5, "fpgm"), False, marks=SLOW),
    ("llama", lambda: pk.HeadPruning(0.5, "reconstruction"), False),  # the block's o_proj alone
    ("llama", lambda: pk.LayerPruning(2, "influence"), True),
    pytest.param("qwen2", lambda: pk.LayerPruning(2, "angular"), False, marks=SLOW),
    pytest.param("gemma", lambda: pk.LayerPruning(1, "last"), False, marks=SLOW),
    # ranked model-wide: a scoring pass over every block, then each block at its own ratio
    ("llama", lambda: pk.FilterPruning(0.5, "l1", global_ranking=True), False),
    pytest.param("qwen3", lambda: pk.ChannelPruning(0.4, "mean_activation",
                                                    global_ranking=True), True, marks=SLOW),
    pytest.param("mistral", lambda: pk.HeadPruning(0.5, "l2", global_ranking=True), False,
                 marks=SLOW),
    # experts stored apart, fused when loaded: converted on reading, split again on writing
    ("qwen2_moe", lambda: pk.FilterPruning(0.5, "l1"), False),
    ("mixtral", lambda: pk.HeadPruning(0.5, "l2"), True),
    pytest.param("olmoe", lambda: pk.LayerPruning(1, "influence"), False, marks=SLOW),
    # its forward reads each block's block_type: the stand-ins answer for their blocks
    ("nemotron_h", lambda: pk.FilterPruning(0.5, "l1"), False),
]


@pytest.mark.parametrize("model_type, method, padded", CASES)
def test_streamed_is_identical_to_pruning_the_loaded_model(tmp_path, model_type, method,
                                                           padded):
    source = saved(tmp_path, model_type)
    data = batches(padded)
    result = pk.prune_streamed(source, tmp_path / "out", method(), data,
                               max_shard_bytes=40_000)
    reference = transformers.AutoModelForCausalLM.from_pretrained(source).eval()
    expected = pk.prune(reference, data[0], method(), data=data)

    assert not result.plan.is_empty
    assert result.plan.tensors == expected.plan.tensors
    assert result.plan.layers == expected.plan.layers
    assert result.config_matches == expected.config_matches
    assert_reloads_as(reference, result)
    assert result.params_before > result.params_after
    written = {p.name for p in (tmp_path / "out").iterdir()}
    assert {"config.json", "tokenizer.json", "plan.json",
            "model.safetensors.index.json"} <= written  # several shards and their index
    assert pk.Plan.load(tmp_path / "out" / "plan.json").layers == result.plan.layers


def test_heads_then_neurons_in_one_pass(tmp_path):
    source = saved(tmp_path, "llama")
    data = batches()
    methods = [pk.HeadPruning(0.5, "l2"), pk.FilterPruning(0.5, "l1")]
    result = pk.prune_streamed(source, tmp_path / "out", methods, data)
    reference = transformers.AutoModelForCausalLM.from_pretrained(source).eval()
    plan = pk.prune(reference, data[0], methods[0], data=data).plan
    plan = plan.then(pk.prune(reference, data[0], methods[1], data=data).plan)
    assert result.plan.tensors == plan.tensors
    assert result.plan.method == {"steps": [m.to_dict() for m in methods]}
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    a, b = reference.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert loaded.config.num_attention_heads == 2 and loaded.config.intermediate_size == 64
    with pytest.raises(ConfigError, match="stream layer removal in a call of its own"):
        pk.prune_streamed(source, tmp_path / "x", [pk.LayerPruning(1, "last"), methods[1]])


def test_blocks_without_the_methods_candidates_are_left_as_they_were(tmp_path):
    """LFM2 mixes attention blocks and convolution blocks, which have no heads."""
    source = saved(tmp_path, "lfm2")
    data = batches()
    result = pk.prune_streamed(source, tmp_path / "out", pk.HeadPruning(0.5, "l2"), data)
    reference = transformers.AutoModelForCausalLM.from_pretrained(source).eval()
    expected = pk.prune(reference, data[0], pk.HeadPruning(0.5, "l2"), data=data)
    assert result.plan.tensors == expected.plan.tensors
    assert_reloads_as(reference, result)
    left = [b for b in result.blocks if b.left]
    assert len(left) == 2 and all("no attention heads" in b.left for b in left)
    assert all(b.params_after == b.params_before for b in left)
    assert "2 blocks left as they were" in str(result)


def test_a_model_with_nothing_to_prune_in_any_block_writes_nothing(tmp_path):
    source = saved(tmp_path, "rwkv")  # no attention heads anywhere
    with pytest.raises(PruneError, match="no block could be pruned.*no attention heads"):
        pk.prune_streamed(source, tmp_path / "out", pk.HeadPruning(0.5, "l2"), batches())
    assert not (tmp_path / "out").exists()


def test_a_bfloat16_checkpoint_computed_in_float32_is_written_back_in_bfloat16(tmp_path):
    source = saved(tmp_path, "llama")
    model = transformers.AutoModelForCausalLM.from_pretrained(source, dtype=torch.bfloat16)
    source = tmp_path / "bfloat16"
    model.save_pretrained(source, max_shard_size="50KB")
    data = batches()
    result = pk.prune_streamed(source, tmp_path / "out", pk.FilterPruning(0.5, "l2"), data,
                               dtype=torch.float32)
    expected = pk.prune(model.eval(), data[0], pk.FilterPruning(0.5, "l2"), data=data)
    assert result.plan.tensors == expected.plan.tensors  # the same weights ranked the same
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out",
                                                               dtype=torch.bfloat16)
    a, b = model.state_dict(), loaded.state_dict()
    assert all(b[k].dtype == torch.bfloat16 and torch.equal(a[k], b[k]) for k in a)


def test_only_one_block_holds_weights_at_a_time(tmp_path, monkeypatch):
    source = saved(tmp_path)
    loaded_blocks = []
    load = stream_blocks.load_module

    def watched(module, reader, prefix, dtype=None):
        if prefix.startswith("model.layers."):
            stack = module_stack[0]
            real = [i for i, block in enumerate(stack)
                    if any(p.device.type != "meta" for p in block.parameters())]
            loaded_blocks.append((prefix, real))
        return load(module, reader, prefix, dtype)

    module_stack = []
    build = streaming.empty_model

    def remembered(config):
        model = build(config)
        module_stack.append(model.model.layers)
        return model

    monkeypatch.setattr(stream_blocks, "load_module", watched)
    monkeypatch.setattr(streaming, "empty_model", remembered)
    pk.prune_streamed(source, tmp_path / "out", pk.FilterPruning(0.5), batches())
    assert len(loaded_blocks) == 5  # block 0 once to learn its output, then every block
    assert all(real == [] for _, real in loaded_blocks)  # no other block held weights then


def test_each_block_is_timed_and_counted(tmp_path):
    source = saved(tmp_path, layers=2)
    result = pk.prune_streamed(source, tmp_path / "out", pk.FilterPruning(0.5),
                               batches(), progress=True)
    assert [b.name for b in result.blocks] == ["model.layers.0", "model.layers.1"]
    assert all(b.seconds > 0 and b.params_after < b.params_before for b in result.blocks)
    assert "2 blocks streamed" in str(result)


def test_a_folder_without_config_or_safetensors_is_one_clear_error(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match="has no config.json"):
        pk.prune_streamed(empty, tmp_path / "out", pk.FilterPruning(0.5))
    (empty / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (empty / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(ConfigError, match="no \\*.safetensors weights .*pytorch_model.bin"):
        pk.prune_streamed(empty, tmp_path / "out", pk.FilterPruning(0.5))
    with pytest.raises(ConfigError, match="no such folder"):
        pk.prune_streamed(tmp_path / "missing", tmp_path / "out", pk.FilterPruning(0.5))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("method, message", [
    (lambda: type("MyFilters", (pk.FilterPruning,), {})(0.5),  # a subclass may change anything
     "takes FilterPruning or ChannelPruning"),
    (lambda: pk.HiddenPruning(0.25, "taylor"), "needs the whole model in memory"),
    (lambda: pk.HiddenPruning(flops_target=0.3), "budgets and overrides need the model"),
    (lambda: pk.FilterPruning(0.5, "taylor"), "reads the whole model's loss or outputs"),
    (lambda: pk.HeadPruning(0.5, "entropy"), "reads the whole model's loss or outputs"),
    (lambda: pk.HeadPruning(0.5, "reconstruction", reconstruct=True), "reconstruct=True"),
    (lambda: pk.FilterPruning(flops_target=0.5), "budgets and overrides need every block"),
    (lambda: pk.LayerPruning(2, "loss"), "needs the whole model's output"),
    (lambda: pk.LayerPruning(flops_target=0.3, criterion="influence"), "not flops_target"),
])
def test_what_streaming_cannot_do_is_refused_before_reading(tmp_path, method, message):
    with pytest.raises(ConfigError, match=message):
        pk.prune_streamed(tmp_path / "not read", tmp_path / "out", method())


def test_a_padding_aware_criterion_on_padded_batches_is_refused_writing_nothing(tmp_path):
    """'reconstruction' leaves padded positions out in memory; a block alone is not told
    which they are, so streaming it on padded batches would differ: refused instead."""
    source = saved(tmp_path, "llama")
    with pytest.raises(ConfigError, match="leaves padded positions out"):
        pk.prune_streamed(source, tmp_path / "out", pk.HeadPruning(0.5, "reconstruction"),
                          batches(padded=True))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("method", [lambda: pk.ChannelPruning(0.5, "mean_activation"),
                                    pytest.param(lambda: pk.LayerPruning(2, "angular"),
                                                 marks=SLOW)])
def test_hidden_states_spilled_to_disk_give_the_same_result(tmp_path, method):
    source = saved(tmp_path, "llama")
    data = batches(padded=True)
    kept = pk.prune_streamed(source, tmp_path / "kept", method(), data)
    spill = tmp_path / "spill"
    spill.mkdir()
    spilled = pk.prune_streamed(source, tmp_path / "spilled", method(), data,
                                hidden_memory_bytes=0, spill_dir=spill)
    assert kept.spilled_bytes == 0 and "spilled to disk" not in str(kept)
    # every block's inputs and outputs went to disk: 3 batches of 2 × 12 × 64 float32 each
    assert spilled.spilled_bytes >= 4 * 3 * 2 * 12 * 64 * 4 and "spilled to disk" in str(spilled)
    assert list(spill.iterdir()) == []  # and were removed
    assert spilled.plan.tensors == kept.plan.tensors and spilled.plan.layers == kept.plan.layers
    a = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "kept").state_dict()
    b = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "spilled").state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_wrong_memory_budget_or_spill_folder_is_one_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="hidden_memory_bytes must be a whole number >= 0 \\(the calibration"):
        pk.prune_streamed(tmp_path / "x", tmp_path / "out", pk.FilterPruning(0.5),
                          hidden_memory_bytes=-1)
    with pytest.raises(ConfigError, match="spill_dir .* is not a folder"):
        pk.prune_streamed(tmp_path / "x", tmp_path / "out", pk.FilterPruning(0.5),
                          spill_dir=tmp_path / "missing")
    assert not (tmp_path / "out").exists()


def test_hidden_states_share_the_memory_budget_and_spill_the_rest(tmp_path):
    from prunekit.adapters.hf.activations import HiddenStates, SpillFolder

    folder = SpillFolder(tmp_path)
    states = HiddenStates(budget=2 * 4 * 10, spill=folder)  # room for two of the tensors
    tensors = [torch.randn(10) for _ in range(5)]
    for t in tensors:
        states.append(t)
    assert folder.bytes_written == 3 * 4 * 10
    assert len(states) == 5 and all(torch.equal(a, b) for a, b in zip(states, tensors))
    states.discard()
    assert len(states) == 0 and not any(p.suffix == ".pt" for p in tmp_path.rglob("*"))
    folder.close()
    assert list(tmp_path.iterdir()) == []


HIDDEN_CASES = [("llama", "l2"), ("qwen3", "l1"), pytest.param("mistral", "random", marks=SLOW),
                pytest.param("gemma", "l2", marks=SLOW), ("llama", "mean_activation"),
                pytest.param("qwen2", "apoz", marks=SLOW),
                pytest.param("gemma", "mean_activation", marks=SLOW),
                # blocks of two kinds (convolution and attention): a miniature with both
                pytest.param("lfm2", "l2", marks=SLOW), ("lfm2", "mean_activation"),
                # experts stored apart, fused when loaded
                ("qwen2_moe", "l1"), ("mixtral", "mean_activation")]


@pytest.mark.parametrize("model_type, criterion", HIDDEN_CASES)
def test_streamed_hidden_size_is_identical_to_pruning_the_loaded_model(
        tmp_path, model_type, criterion, monkeypatch):
    from prunekit.streaming import hidden as streamed_hidden

    monkeypatch.setattr(streamed_hidden, "SLICE_BYTES", 2_000)  # norms taken in slices
    source = saved(tmp_path, model_type)
    method = pk.HiddenPruning(0.25, criterion)
    data = batches(padded=True)
    result = pk.prune_streamed(source, tmp_path / "out", method, data, max_shard_bytes=40_000,
                               hidden_memory_bytes=5_000)  # some hidden states spilled
    reference = transformers.AutoModelForCausalLM.from_pretrained(source).eval()
    expected = pk.prune(reference, data[0], pk.HiddenPruning(0.25, criterion), data=data)

    assert result.plan.tensors == expected.plan.tensors  # every block, embeddings, head
    assert result.plan.attributes == expected.plan.attributes
    assert result.config_matches == expected.config_matches
    assert_reloads_as(reference, result)
    assert "streamed tensor by tensor" in str(result)


@pytest.mark.parametrize("criterion", ["mean_activation", "apoz", "l1"])
def test_streamed_hidden_scores_are_the_in_memory_scores(tmp_path, monkeypatch, criterion):
    """Sharper than equal plans: every channel's score, so a site read wrong (or not at all)
    shows even where it would not change which channels are kept."""
    source = saved(tmp_path, "llama")
    data = batches(padded=True)
    seen = []
    decide = stream_hidden.plan_from_scores

    def capture(method, structure, scores, *args):
        seen.append(scores)
        return decide(method, structure, scores, *args)

    monkeypatch.setattr(stream_hidden, "plan_from_scores", capture)
    pk.prune_streamed(source, tmp_path / "out", pk.HiddenPruning(0.25, criterion), data)
    reference = transformers.AutoModelForCausalLM.from_pretrained(source).eval()
    method = pk.HiddenPruning(0.25, criterion)
    graph, groups = method.traced_candidates(reference, data[0])
    expected = method.score(graph, groups, data)[groups[0].axis]
    torch.testing.assert_close(seen[0], expected, rtol=1e-12, atol=0)


def test_streamed_hidden_size_that_breaks_the_model_writes_nothing(tmp_path):
    source = saved(tmp_path, "rwkv")  # sizes its recurrent state from config.hidden_size
    with pytest.raises(PruneError, match="no longer runs at the narrower hidden size"):
        pk.prune_streamed(source, tmp_path / "out", pk.HiddenPruning(0.25, "l2"))
    assert not (tmp_path / "out").exists()


def test_streamed_hidden_size_takes_norms_in_slices_exactly():
    from prunekit.streaming.hidden import _channel_norms

    tensor = torch.randn(40, 24, 3)
    for dim in range(3):
        for p in (1, 2):
            whole = torch.linalg.vector_norm(tensor.movedim(dim, 0).reshape(
                tensor.shape[dim], -1), ord=p, dim=1)
            torch.testing.assert_close(_channel_norms(tensor, dim, p), whole)
    from prunekit.streaming import hidden as streamed_hidden
    assert streamed_hidden.SLICE_BYTES < 40 * 24 * 3 * 4 * 2**20  # (slices are real here)


def test_global_ranking_streams_one_method_at_a_time(tmp_path):
    with pytest.raises(ConfigError, match="global_ranking ranks one method's channels"):
        pk.prune_streamed(tmp_path / "not read", tmp_path / "out",
                          [pk.HeadPruning(0.5, global_ranking=True), pk.FilterPruning(0.5)])


def test_streamed_hidden_size_is_a_call_of_its_own(tmp_path):
    with pytest.raises(ConfigError, match="stream hidden-size pruning in a call of its own"):
        pk.prune_streamed(tmp_path / "not read", tmp_path / "out",
                          [pk.HiddenPruning(0.25), pk.FilterPruning(0.5)])


def test_sizes_no_config_can_describe_reload_with_pk_load(tmp_path):
    source = saved(tmp_path, "biogpt")  # its head size is hidden_size / heads
    data = batches()
    result = pk.prune_streamed(source, tmp_path / "out", pk.HeadPruning(0.5, "l2"), data,
                               max_shard_bytes=40_000)
    assert result.config_matches is False and "load it with pk.load" in str(result)
    assert (tmp_path / "out" / "model.safetensors.index.json").is_file()  # pk.load reads shards
    config = transformers.AutoConfig.from_pretrained(tmp_path / "out")
    assert config.num_attention_heads == 4  # the original config, kept
    reference = transformers.AutoModelForCausalLM.from_pretrained(source).eval()
    expected = pk.prune(reference, data[0], pk.HeadPruning(0.5, "l2"), data=data)
    assert expected.config_matches is False  # in memory too
    loaded = pk.load(transformers.AutoModelForCausalLM.from_config(config), tmp_path / "out")
    a, b = reference.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_failure_leaves_the_output_folder_as_it_was(tmp_path, monkeypatch):
    source = saved(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")

    def broken(*args, **kwargs):
        raise PruneError("broken on purpose")

    monkeypatch.setattr(stream_width, "prune", broken)
    with pytest.raises(PruneError, match="broken on purpose"):
        pk.prune_streamed(source, out, pk.HeadPruning(0.5, "l2"), batches())
    assert [p.name for p in out.iterdir()] == ["mine.txt"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]  # no staging left
    with pytest.raises(ConfigError, match="cannot replace the folder it is read from"):
        pk.prune_streamed(source, source, pk.FilterPruning(0.5))


def test_the_command_line_streams_a_folder(tmp_path):
    source = saved(tmp_path, layers=3)
    runner = CliRunner()
    out = tmp_path / "out"
    result = runner.invoke(cli.app, ["prune", "--model", f"hf:{source}", "--stream",
                                     "--method", "layers", "--n", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "3 blocks streamed" in result.output and "removed layers: model.layers." in result.output
    assert transformers.AutoConfig.from_pretrained(out).num_hidden_layers == 2
    again = runner.invoke(cli.app, ["prune", "--model", f"hf:{source}", "--stream",
                                    "--method", "heads", "--ratio", "0.5", "--out", str(out)])
    assert again.exit_code == 0, again.output  # a streamed folder may be replaced
    assert transformers.AutoConfig.from_pretrained(out).num_attention_heads == 2
    hidden = runner.invoke(cli.app, ["prune", "--model", f"hf:{source}", "--stream",
                                     "--method", "hidden", "--ratio", "0.25", "--out", str(out)])
    assert hidden.exit_code == 0, hidden.output
    assert "streamed tensor by tensor" in hidden.output
    assert transformers.AutoConfig.from_pretrained(out).hidden_size == 48

    wrong = runner.invoke(cli.app, ["prune", "--model", "torchvision:resnet18", "--stream",
                                    "--out", str(tmp_path / "x")])
    assert wrong.exit_code == 2 and "--stream reads a Hugging Face model folder" in wrong.output
    missing = runner.invoke(cli.app, ["prune", "--model", f"hf:{tmp_path / 'nope'}", "--stream",
                                      "--out", str(tmp_path / "y")])
    assert missing.exit_code == 2 and "no such folder" in missing.output
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
