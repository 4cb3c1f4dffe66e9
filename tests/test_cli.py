"""The command line: prune, analyze, and what a bad argument prints."""

import copy

import pytest
import torch
from typer.testing import CliRunner

import prunekit as pk
from prunekit.cli.app import console as cli_console
from prunekit.cli.commands import app

from .helpers import outputs

runner = CliRunner()
MODEL_FILE = '''
from torch import nn

def small_cnn():
    return nn.Sequential(nn.Conv2d(3, 16, 3), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 32, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(32, 4))
'''


def test_prune_from_a_python_file_saves_a_loadable_model(tmp_path):
    source = tmp_path / "net.py"
    source.write_text(MODEL_FILE)
    out = tmp_path / "pruned"
    result = runner.invoke(app, ["prune", "--model", f"{source}:small_cnn", "--input-shape",
                                 "1,3,16,16", "--method", "channel", "--ratio", "0.5",
                                 "--criterion", "l2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "equivalent" in result.output and "after" in result.output
    namespace: dict = {}
    exec(MODEL_FILE, namespace)
    model = pk.load(namespace["small_cnn"]().eval(), out)
    assert model[0].out_channels == 8 and model[3].out_channels == 16
    assert outputs(model, torch.randn(1, 3, 16, 16))[0].shape == (1, 4)


def test_prune_torchvision_model(tmp_path):
    result = runner.invoke(app, ["prune", "--model", "torchvision:resnet18", "--input-shape",
                                 "1,3,32,32", "--ratio", "0.5", "--out", str(tmp_path / "r18")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "r18" / "model.safetensors").is_file()
    assert (tmp_path / "r18" / "plan.json").is_file()


def test_analyze_lists_groups(monkeypatch):
    monkeypatch.setattr(cli_console, "width", 400)  # no wrapping inside table cells
    result = runner.invoke(app, ["analyze", "--model", "torchvision:resnet18", "--input-shape",
                                 "1,3,32,32"])
    assert result.exit_code == 0, result.output
    assert "candidates for FilterPruning" in result.output
    assert "conv1.weight[out]" in result.output


def test_bad_ratio_is_a_clear_error(tmp_path):
    result = runner.invoke(app, ["prune", "--model", "torchvision:resnet18", "--ratio", "1.5",
                                 "--out", str(tmp_path / "x")])
    assert result.exit_code == 2
    assert "ratio must be a number in [0, 1)" in result.output
    assert not (tmp_path / "x").exists()


def test_bad_input_shape_is_a_clear_error(tmp_path):
    result = runner.invoke(app, ["prune", "--model", "torchvision:resnet18", "--input-shape",
                                 "1,3,x", "--out", str(tmp_path / "x")])
    assert result.exit_code != 0
    assert "comma-separated integers" in result.output


@pytest.mark.slow
def test_compare_writes_every_method_at_the_budget(tmp_path):
    import json

    result = runner.invoke(app, ["compare", "--epochs", "1", "--finetune-epochs", "0",
                                 "--flops-target", "0.4", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "results.json").read_text())
    labels = [row["method"] for row in saved["rows"]]
    assert labels[0] == "unpruned" and "channel (l2) + reconstruction" in labels
    base = saved["rows"][0]["flops"]
    for row in saved["rows"][1:]:
        if row["method"].startswith(("filter", "channel")):
            assert abs(1 - row["flops"] / base - 0.4) <= 0.02, row
    assert (tmp_path / "comparison.png").stat().st_size > 1000


def _llama_directory(tmp_path):
    import transformers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                                      intermediate_size=128, num_hidden_layers=3, vocab_size=100)
    transformers.LlamaModel(config).save_pretrained(tmp_path / "llama")
    return tmp_path / "llama"


@pytest.mark.slow
@pytest.mark.parametrize("method, options, field, value, checked", [
    ("heads", ["--ratio", "0.5"], "num_key_value_heads", 1, "check: equivalent"),
    ("filter", ["--ratio", "0.5"], "intermediate_size", 64, "check: equivalent"),
    ("layers", ["--n", "2", "--criterion", "angular"], "num_hidden_layers", 1,
     "check: blocks bypassed: layers."),
])
def test_prune_a_hugging_face_directory(tmp_path, method, options, field, value, checked):
    import transformers

    source = _llama_directory(tmp_path)
    out = tmp_path / "pruned"
    result = runner.invoke(app, ["prune", "--model", f"hf:{source}", "--method", method,
                                 *options, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert checked in " ".join(result.output.split())
    reloaded = transformers.AutoModel.from_pretrained(out / "hf")
    assert getattr(reloaded.config, field) == value
    restored = pk.load(transformers.AutoModel.from_pretrained(source), out)
    ids = {"input_ids": torch.randint(0, 100, (1, 6))}
    for a, b in zip(outputs(reloaded, ids), outputs(restored, ids)):
        assert torch.equal(a, b)


def test_a_directory_without_a_config_is_a_clear_error(tmp_path):
    result = runner.invoke(app, ["prune", "--model", f"hf:{tmp_path}", "--method", "heads",
                                 "--out", str(tmp_path / "x")])
    assert result.exit_code != 0
    assert "no config.json" in result.output


RESIDUAL_FILE = '''
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class Block(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.conv = nn.Conv2d(width, width, 3, padding=1)
        self.norm = nn.BatchNorm2d(width)

    def forward(self, x):
        return torch.relu(x + self.norm(self.conv(x)))


def residual_cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), Block(8), Block(8),
                         nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(16, 3)).eval()


def loaders():
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(96, 1, 8, 8, generator=generator)
    labels = (images.mean(dim=(1, 2, 3)) > 0).long() + (images[:, 0, 0, 0] > 1).long()
    return (DataLoader(TensorDataset(images[:64], labels[:64]), batch_size=16),
            DataLoader(TensorDataset(images[64:], labels[64:]), batch_size=16))


def image_loaders():
    train, test = loaders()
    return [images for images, _ in train], [images for images, _ in test]


def not_a_pair():
    return [1, 2, 3]
'''


@pytest.fixture
def residual_source(tmp_path):
    source = tmp_path / "residual.py"
    source.write_text(RESIDUAL_FILE)
    namespace: dict = {}
    exec(RESIDUAL_FILE, namespace)
    return source, namespace


def test_iterative_records_every_step_and_saves_a_loadable_model(tmp_path, residual_source):
    import json

    source, namespace = residual_source
    out = tmp_path / "iterated"
    result = runner.invoke(app, ["iterative", "--model", f"{source}:residual_cnn", "--data",
                                 f"{source}:loaders", "--steps", "3", "--flops-target", "0.45",
                                 "--finetune-epochs", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    records = json.loads((out / "history.json").read_text())["records"]
    assert [r["step"] for r in records] == [0, 1, 2, 3]
    removed = [r["flop_reduction"] for r in records]
    assert removed == sorted(removed) and abs(removed[-1] - 0.45) <= 0.02
    assert all(0 <= r["accuracy"] <= 1 for r in records)
    model = pk.load(namespace["residual_cnn"](), out)
    assert sum(p.numel() for p in model.parameters()) == records[-1]["params"]
    assert (out / "history.png").stat().st_size > 1000


def test_iterative_can_recover_by_distillation_alone(tmp_path, residual_source):
    import json

    source, _ = residual_source
    out = tmp_path / "distilled"
    result = runner.invoke(app, ["iterative", "--model", f"{source}:residual_cnn", "--data",
                                 f"{source}:loaders", "--steps", "2", "--ratio", "0.5",
                                 "--finetune-epochs", "0", "--distill-steps", "3",
                                 "--no-latency", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "0 fine-tuning epochs after 3 distillation steps" in " ".join(result.output.split())
    records = json.loads((out / "history.json").read_text())["records"]
    assert records[0]["distill_loss"] is None
    assert all(r["distill_loss"] is not None for r in records[1:])
    refused = runner.invoke(app, ["iterative", "--model", f"{source}:residual_cnn", "--data",
                                  f"{source}:loaders", "--distill-steps", "-2", "--out",
                                  str(tmp_path / "never")])
    assert refused.exit_code != 0 and "--distill-steps must be 0" in refused.output
    assert not (tmp_path / "never").exists()


def test_sensitivity_tries_every_group_at_every_ratio(tmp_path, residual_source):
    import json

    source, namespace = residual_source
    out = tmp_path / "sensitivity"
    result = runner.invoke(app, ["sensitivity", "--model", f"{source}:residual_cnn", "--data",
                                 f"{source}:loaders", "--ratios", "0,0.5", "--out", str(out)])
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "sensitivity.json").read_text())
    _, test = namespace["loaders"]()
    assert saved["baseline"] == pk.recover.evaluate_accuracy(namespace["residual_cnn"](), test)
    groups = {row["group"] for row in saved["rows"]}
    assert len(saved["rows"]) == 2 * len(groups) and len(groups) >= 2
    for row in saved["rows"]:
        if row["ratio"] == 0:  # nothing removed: the unpruned accuracy
            assert row["accuracy"] == saved["baseline"]
    table_lines = (out / "sensitivity.md").read_text().count("\n|")
    assert table_lines == len(groups) + 2  # header, rule, one line per group


def test_prune_layers_by_loss_on_the_given_data(tmp_path, residual_source):
    import json

    source, namespace = residual_source
    out = tmp_path / "layers"
    result = runner.invoke(app, ["prune", "--model", f"{source}:residual_cnn", "--data",
                                 f"{source}:loaders", "--method", "layers", "--criterion", "loss",
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    train, _ = namespace["loaders"]()
    scores = pk.layer_importance(namespace["residual_cnn"](), train, criterion="loss")
    cheapest = min(scores, key=lambda s: s.score).name
    assert json.loads((out / "plan.json").read_text())["layers"] == [cheapest]


def test_reconstruct_refits_on_the_given_data_as_the_library_does(tmp_path, residual_source):
    from safetensors.torch import load_file

    source, namespace = residual_source
    saved = {}
    for flag in ("--reconstruct", "--no-reconstruct"):
        out = tmp_path / flag
        result = runner.invoke(app, ["prune", "--model", f"{source}:residual_cnn", "--data",
                                     f"{source}:loaders", "--method", "channel", "--criterion",
                                     "l2", flag, "--no-latency",
                                     "--out", str(out)])
        assert result.exit_code == 0, result.output
        assert "read the random example inputs" not in result.output
        saved[flag] = load_file(out / "model.safetensors")
    train, _ = namespace["loaders"]()
    model = namespace["residual_cnn"]()
    batches = list(train)
    pk.prune(model, batches[0][0], pk.ChannelPruning(0.5, "l2", reconstruct=True), data=batches)
    expected = model.state_dict()
    assert all(torch.equal(saved["--reconstruct"][k], expected[k]) for k in saved["--reconstruct"])
    assert not all(torch.equal(saved["--reconstruct"][k], saved["--no-reconstruct"][k])
                   for k in saved["--reconstruct"])


def test_prune_reads_batches_of_inputs_alone_and_a_command_that_evaluates_refuses_them(
        tmp_path, residual_source):
    from safetensors.torch import load_file

    source, _ = residual_source
    saved = {}
    for factory in ("loaders", "image_loaders"):  # the same images, with labels and without
        out = tmp_path / factory
        result = runner.invoke(app, ["prune", "--model", f"{source}:residual_cnn", "--data",
                                     f"{source}:{factory}", "--method", "channel",
                                     "--criterion", "l2", "--reconstruct", "--no-latency",
                                     "--out", str(out)])
        assert result.exit_code == 0, result.output
        saved[factory] = load_file(out / "model.safetensors")
    assert all(torch.equal(saved["loaders"][k], saved["image_loaders"][k]) for k in saved["loaders"])
    refused = runner.invoke(app, ["sensitivity", "--model", f"{source}:residual_cnn", "--data",
                                  f"{source}:image_loaders", "--out", str(tmp_path / "s")])
    assert refused.exit_code == 2, refused.output
    assert "--data: the batches must be (inputs, labels) pairs" in " ".join(refused.output.split())
    assert not (tmp_path / "s").exists()


def test_reconstruct_without_data_says_what_it_fitted_on(tmp_path):
    model_file = tmp_path / "net.py"
    model_file.write_text(MODEL_FILE)
    result = runner.invoke(app, ["prune", "--model", f"{model_file}:small_cnn", "--input-shape",
                                 "1,3,16,16", "--method", "channel", "--reconstruct",
                                 "--no-latency", "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "--reconstruct read the random example inputs only" in \
        " ".join(result.output.split())


def test_reconstruct_with_a_method_that_has_none_is_one_line(tmp_path):
    result = runner.invoke(app, ["prune", "--model", "torchvision:resnet18", "--input-shape",
                                 "1,3,16,16", "--reconstruct", "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines == ["error: --reconstruct: --method filter has no --reconstruct option; use "
                     "--method channel or heads"], lines
    assert not (tmp_path / "out").exists()


def test_data_that_is_not_a_pair_is_a_clear_error(tmp_path, residual_source):
    source, _ = residual_source
    result = runner.invoke(app, ["sensitivity", "--model", f"{source}:residual_cnn", "--data",
                                 f"{source}:not_a_pair", "--out", str(tmp_path / "x")])
    assert result.exit_code != 0
    assert "must return (train, test)" in result.output
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_prune_the_hidden_size_of_a_hugging_face_directory(tmp_path):
    import transformers

    source = _llama_directory(tmp_path)
    out = tmp_path / "narrow"
    result = runner.invoke(app, ["prune", "--model", f"hf:{source}", "--method", "hidden",
                                 "--ratio", "0.25", "--criterion", "l2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    printed = " ".join(result.output.split())
    assert "check: runs on the example inputs: output shapes narrower or equal" in printed
    assert "outputs not compared" in printed and "equivalent" not in printed
    reloaded = transformers.AutoModel.from_pretrained(out / "hf")
    assert reloaded.config.hidden_size == 48 and reloaded.embed_tokens.weight.shape == (100, 48)
    restored = pk.load(transformers.AutoModel.from_pretrained(source), out)
    ids = {"input_ids": torch.randint(0, 100, (1, 6))}
    for a, b in zip(outputs(reloaded, ids), outputs(restored, ids)):
        assert torch.equal(a, b)


def test_an_unknown_torchvision_model_is_a_clear_error(tmp_path):
    result = runner.invoke(app, ["prune", "--model", "torchvision:resnet181",
                                 "--out", str(tmp_path / "x")])
    assert result.exit_code == 2
    assert "torchvision has no model 'resnet181'" in " ".join(result.output.split())
    assert not (tmp_path / "x").exists()


def test_inputs_the_model_cannot_run_are_a_clear_error(tmp_path):
    result = runner.invoke(app, ["prune", "--model", "torchvision:resnet18", "--input-shape",
                                 "1,3", "--out", str(tmp_path / "x")])
    assert result.exit_code == 2
    printed = " ".join(result.output.split())
    assert printed.startswith("error: the model does not run on the example inputs")
    assert not (tmp_path / "x").exists()


def _sentence_encoder_directory(tmp_path):
    """A tiny BERT saved as a sentence-transformers folder: model, tokenizer, modules.json and
    a pooling folder, as a user's local checkout of a hub model looks."""
    import json

    import transformers

    torch.manual_seed(0)
    source = tmp_path / "encoder"
    config = transformers.BertConfig(hidden_size=32, num_attention_heads=4, intermediate_size=64,
                                     num_hidden_layers=2, vocab_size=30)
    transformers.BertModel(config).save_pretrained(source)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world", "prune"]
    (source / "vocab.txt").write_text("\n".join(words + [f"w{i}" for i in range(22)]))
    transformers.BertTokenizerFast(vocab=str(source / "vocab.txt")).save_pretrained(source)
    (source / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    (source / "1_Pooling").mkdir()
    (source / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 32}))
    return source


def test_out_is_replaced_whole_and_keeps_the_tokenizer_and_sentence_files(tmp_path):
    import transformers

    source = _sentence_encoder_directory(tmp_path)
    out = tmp_path / "pruned"
    result = runner.invoke(app, ["prune", "--model", f"hf:{source}", "--method", "filter",
                                 "--ratio", "0.5", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert transformers.AutoModel.from_pretrained(out / "hf").config.intermediate_size == 32
    for name in ("vocab.txt", "tokenizer_config.json", "modules.json", "1_Pooling/config.json"):
        assert (out / "hf" / name).is_file(), name
    tokenizer = transformers.AutoTokenizer.from_pretrained(out / "hf")
    original = transformers.AutoTokenizer.from_pretrained(source)
    assert tokenizer("hello world")["input_ids"] == original("hello world")["input_ids"]
    assert tokenizer("hello world")["input_ids"] == [2, 5, 6, 3]  # the words, not [UNK]
    # a second run into the same folder leaves nothing of the first (no stale hf/)
    model_file = tmp_path / "net.py"
    model_file.write_text(MODEL_FILE)
    result = runner.invoke(app, ["prune", "--model", f"{model_file}:small_cnn", "--input-shape",
                                 "1,3,16,16", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["model.safetensors", "plan.json"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


@pytest.mark.parametrize("args, message", [
    (["--model", "torchvision:resnet99"], "error: --model 'torchvision:resnet99': torchvision has no"),
    (["--model", "resnet18"], "error: --model 'resnet18': expected SOURCE:NAME"),
    (["--model", "FACTORY", "--input-shape", "1,3,16,16"], "the factory returned NoneType"),
    (["--input-shape", "1,3,x"], "error: --input-shape '1,3,x': expected comma-separated"),
    (["--input-shape", "1,5,16,16"], "error: the model does not run on the example inputs"),
    (["--out", "FILE"], "error: --out '.*' is a file"),
    (["--out", "FULL"], "error: --out '.*' holds other files"),
    (["--out", "UNWRITABLE"], "error: --out '.*' cannot be written"),
])
def test_every_mistake_is_one_line_naming_the_option_with_exit_code_2(tmp_path, args, message):
    import re

    factory = tmp_path / "none.py"
    factory.write_text("def make():\n    return None\n")
    (tmp_path / "file").write_text("")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    given = {"--model": "torchvision:resnet18", "--input-shape": "1,3,16,16",
             "--out": str(tmp_path / "out")}
    for option, value in zip(args[::2], args[1::2]):
        given[option] = {"FACTORY": f"{factory}:make", "FILE": str(tmp_path / "file"),
                         "FULL": str(tmp_path / "full"),
                         "UNWRITABLE": str(tmp_path / "file" / "below")}.get(value, value)
    result = runner.invoke(app, ["prune", *[part for item in given.items() for part in item]])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert re.search(message, lines[0]), lines
    assert len(lines) == 1, lines
    assert (tmp_path / "full" / "notes.txt").read_text() == "mine"
    assert not (tmp_path / "out").exists()


HARD_CODED_FILE = '''
from torch import nn

class HardCoded(nn.Module):
    """conv2's 8 channels are also a literal in forward: pruning them changes the result."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        h = self.conv2(self.conv1(x).relu())
        return self.head(h.reshape(h.shape[0], 8, -1).mean(-1))

def make():
    return HardCoded()
'''


def test_prune_lists_what_it_left_unpruned_and_says_when_a_criterion_had_no_data(tmp_path):
    source = tmp_path / "hard.py"
    source.write_text(HARD_CODED_FILE)
    result = runner.invoke(app, ["prune", "--model", f"{source}:make", "--input-shape",
                                 "1,3,12,12", "--criterion", "apoz", "--out",
                                 str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "1 left unpruned" in text and "group 1" in text and "conv2.weight[out]" in text
    assert "criterion 'apoz' reads activations, and without --data" in text


def test_prune_a_timm_model_by_name(tmp_path):
    result = runner.invoke(app, ["prune", "--model", "timm:resnet10t", "--input-shape",
                                 "1,3,32,32", "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    import timm

    model = pk.load(timm.create_model("resnet10t", pretrained=False).eval(), tmp_path / "out")
    assert sum(p.numel() for p in model.parameters()) < 4_000_000  # unpruned: 5.4M
    result = runner.invoke(app, ["prune", "--model", "timm:resnet10", "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "timm has no model 'resnet10'; did you mean" in result.output


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_a_checkpoint_is_loaded_before_pruning(tmp_path, suffix):
    from safetensors.torch import save_file

    source = tmp_path / "net.py"
    source.write_text(MODEL_FILE)
    namespace: dict = {}
    exec(MODEL_FILE, namespace)
    torch.manual_seed(1)
    trained = namespace["small_cnn"]().eval()
    with torch.no_grad():
        trained[7].bias.fill_(3.0)  # weights no freshly built model has
    state = {k: v.contiguous() for k, v in trained.state_dict().items()}
    checkpoint = tmp_path / f"trained{suffix}"
    if suffix == ".safetensors":
        save_file(state, checkpoint)
    else:
        torch.save({"state_dict": state}, checkpoint)
    result = runner.invoke(app, ["prune", "--model", f"{source}:small_cnn", "--checkpoint",
                                 str(checkpoint), "--input-shape", "1,3,16,16",
                                 "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    pruned = pk.load(namespace["small_cnn"]().eval(), tmp_path / "out")
    assert torch.equal(pruned[7].bias, torch.full((4,), 3.0))
    x = torch.randn(2, 3, 16, 16)
    reference = pk.load(copy.deepcopy(trained), tmp_path / "out")  # same plan, same weights
    assert torch.equal(outputs(pruned, x)[0], outputs(reference, x)[0])


@pytest.mark.parametrize("content, message", [
    ("not a checkpoint", "cannot be read as a state dict"),
    ({"0.weight": torch.zeros(1)}, "does not fit the model"),
])
def test_a_bad_checkpoint_is_one_line_naming_the_option(tmp_path, content, message):
    source = tmp_path / "net.py"
    source.write_text(MODEL_FILE)
    checkpoint = tmp_path / "bad.pt"
    if isinstance(content, str):
        checkpoint.write_text(content)
    else:
        torch.save(content, checkpoint)
    result = runner.invoke(app, ["prune", "--model", f"{source}:small_cnn", "--checkpoint",
                                 str(checkpoint), "--input-shape", "1,3,16,16",
                                 "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: --checkpoint") and message in lines[0]


def test_ultralytics_models_come_from_a_yaml_or_a_checkpoint_on_disk(tmp_path):
    from ultralytics import YOLO

    result = runner.invoke(app, ["prune", "--model", "ultralytics:yolov8n.yaml", "--input-shape",
                                 "1,3,64,64", "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    model = pk.load(YOLO("yolov8n.yaml", verbose=False).model, tmp_path / "out")
    assert sum(p.numel() for p in model.parameters()) < 1_500_000  # unpruned: 3.2M

    checkpoint = tmp_path / "trained.pt"
    YOLO("yolov8n.yaml", verbose=False).save(checkpoint)
    result = runner.invoke(app, ["prune", "--model", f"ultralytics:{checkpoint}", "--input-shape",
                                 "1,3,64,64", "--out", str(tmp_path / "from-pt")])
    assert result.exit_code == 0, result.output
    for spec, message in [("ultralytics:yolov8n", "give a YAML config"),
                          ("ultralytics:missing.pt", "no checkpoint 'missing.pt' on disk"),
                          ("open_clip:ViT-B-23", "did you mean 'ViT-B-32'")]:
        result = runner.invoke(app, ["prune", "--model", spec, "--out", str(tmp_path / "x")])
        assert result.exit_code == 2 and message in result.output, result.output
        assert not (tmp_path / "x").exists()


def test_open_clip_models_are_their_image_tower(tmp_path):
    result = runner.invoke(app, ["prune", "--model", "open_clip:RN50", "--input-shape",
                                 "1,3,224,224", "--ratio", "0.3", "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "equivalent" in result.output and (tmp_path / "out" / "plan.json").is_file()
