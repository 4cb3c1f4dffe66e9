"""The Hugging Face architecture contract (``contracts/hf.py``) on a subset of model types
that each once failed a step (the benchmark, ``benchmarks/hf_architectures.py``, runs every
type), and the config shrinking it relies on."""

from __future__ import annotations

import pytest
import transformers

from contracts.hf import SMALL, check_type, model_types, small_config

transformers.logging.set_verbosity_error()

# each of these failed a step before the fix named beside it
SUBSET = {
    "t5": "encoder-decoder",  # relative position bias shared by a stack's layers
    "bart": "encoder-decoder",  # heads, MLP and a layer chained in one plan
    "mobilebert": "encoder",  # an empty dim in the config inference
    "fnet": "encoder",  # no attention at all: no heads is the right answer
    "gpt_neox": "decoder",  # q/k/v fused per head and partial rotary
    "beam": "decoder",  # per-layer lists in the config follow a removed layer
    "mixtral": "decoder",  # experts fused in 3-d parameters, run as grouped matmuls
    "llama": "decoder",
}


def test_the_sweep_covers_every_kind_each_type_once():
    types = model_types()
    assert len(types) == len({model_type for _, model_type in types}) > 200
    assert {kind for kind, _ in types} == {"decoder", "encoder", "encoder-decoder"}
    assert ("encoder-decoder", "bart") in types and ("encoder", "bert") in types


def test_small_configs_shrink_sub_configs_and_keep_token_ids_in_the_vocabulary():
    config = small_config("audioflamingo3")  # a speech-text model: two sub-configs
    assert config.text_config.hidden_size == SMALL["hidden_size"]
    assert config.text_config.num_hidden_layers == SMALL["num_hidden_layers"]
    assert len(config.text_config.layer_types) == SMALL["num_hidden_layers"]
    assert config.audio_config.num_hidden_layers == SMALL["num_hidden_layers"]
    marian = small_config("marian")
    assert marian.vocab_size == SMALL["vocab_size"]
    assert 0 <= marian.pad_token_id < marian.vocab_size
    assert 0 <= marian.decoder_start_token_id < marian.vocab_size


# exported to ONNX after pruning, except where no exporter can (said beside it)
NOT_EXPORTED = {
    "mixtral": "its experts run through transformers' grouped_mm custom op, which has no ONNX "
               "translation",
}


@pytest.mark.slow
@pytest.mark.parametrize("model_type", SUBSET)
def test_architecture_passes_every_step(model_type):
    row = check_type(SUBSET[model_type], model_type, export=model_type not in NOT_EXPORTED)
    assert row["status"] == "passed", row
    if model_type not in NOT_EXPORTED:
        assert row["onnx"].startswith("dynamo, largest difference"), row


@pytest.mark.slow
def test_falcon_refuses_heads_with_the_reason_and_prunes_the_rest():
    """Falcon's config computes head_dim (a property): updating the config after MLP pruning
    used to crash. Its heads (a fused q/k/v with a shared key/value head) are not found,
    which HeadPruning says, leaving the model unchanged."""
    row = check_type("decoder", "falcon")
    assert row["heads"].startswith("refused: PruneError: HeadPruning: the model has no "
                                   "attention heads")
    assert row["mlp"].startswith("-") and row["layers"].startswith("-")
    assert row["reload"].startswith("equal") and row["generate"] == "same tokens (mlp)"
