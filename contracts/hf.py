"""What every Hugging Face text architecture must pass, shared by the architecture sweep
(``benchmarks/hf_architectures.py``) and its tests.

A model type is built from a small config derived from its own defaults (2 layers, width 64,
4 heads, a 128-token vocabulary: every such field the config or its sub-configs have, passed to
the config's constructor so that fields derived from sizes follow), with random weights. Then,
with no per-type settings:

1. heads: ``pk.HeadPruning(0.5, "l1")``, verified masked-vs-pruned by ``pk.prune``;
2. MLP neurons: ``pk.FilterPruning(0.5, "l1")`` on the head-pruned model, verified the same way;
3. layers: ``pk.LayerPruning(1, "last")`` on that model;
4. the three plans chained, saved with ``pk.save`` and reloaded with ``pk.load`` onto a fresh
   build: bit-identical outputs; where every step's ``config_matches``, also through
   ``save_pretrained`` and the model class's ``from_pretrained``;
5. causal LMs: greedy generation (6 new tokens, with the KV cache) of the model pruned by each
   exact step alone gives the masked original's tokens.
"""

from __future__ import annotations

import copy
import tempfile
import time
from pathlib import Path

import torch
import transformers

import prunekit as pk
from prunekit.checks.verify import mask
from prunekit.core.calls import call_model, iter_tensors

# the auto class of each kind; a type in several mappings is taken as the first kind listed
# (BART, which also has a decoder-only head, as encoder-decoder; BERT, which also has a causal
# head, as encoder)
KINDS = {"encoder-decoder": ("MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES",
                             transformers.AutoModelForSeq2SeqLM),
         "encoder": ("MODEL_FOR_MASKED_LM_MAPPING_NAMES", transformers.AutoModelForMaskedLM),
         "decoder": ("MODEL_FOR_CAUSAL_LM_MAPPING_NAMES", transformers.AutoModelForCausalLM)}

# the size fields a config may have, under their various names, and a small value for each
SMALL = dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
             intermediate_size=128, vocab_size=128, max_position_embeddings=64, head_dim=16,
             n_layer=2, n_embd=64, n_head=4, n_inner=128, d_model=64, num_layers=2, num_heads=4,
             d_ff=128, d_kv=16, ffn_dim=128, encoder_layers=2, decoder_layers=2,
             num_decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
             encoder_ffn_dim=128, decoder_ffn_dim=128, n_positions=64, num_experts=4,
             num_local_experts=4, num_experts_per_tok=2, moe_intermediate_size=64,
             shared_expert_intermediate_size=64, embedding_size=64, hidden_dim=128, dim=64,
             n_heads=4, n_layers=2, kv_lora_rank=16, q_lora_rank=32, qk_rope_head_dim=16,
             qk_nope_head_dim=16, v_head_dim=16, rotary_dim=8, src_vocab_size=128, tgt_vocab_size=128,
             entity_vocab_size=128, num_latents=16, d_latents=64,
             num_self_attends_per_block=2)
# block-sparse attention needs sequences of hundreds of tokens; on shorter ones transformers
# switches to full attention itself, rebuilding the attention modules at the first forward
FIXED = dict(attention_type="original_full")
TOKENS_SHAPE = (2, 8)
STEPS = ("heads", "mlp", "layers")


def model_types() -> list[tuple[str, str]]:
    """(kind, model type) for every type in the three auto mappings, each type once."""
    from transformers.models.auto import modeling_auto

    found, seen = [], set()
    for kind, (mapping, _) in KINDS.items():
        for model_type in sorted(getattr(modeling_auto, mapping)):
            if model_type not in seen:
                seen.add(model_type)
                found.append((kind, model_type))
    return found


def small_config(model_type: str) -> transformers.PretrainedConfig:
    """The type's default config with every size field it has made small."""
    def overrides(config) -> dict:
        found = {key: value for key, value in SMALL.items()
                 if isinstance(getattr(config, key, None), int)
                 and not isinstance(getattr(config, key), bool)
                 and not isinstance(getattr(type(config), key, None), property)}  # derived
        found.update({key: value for key, value in FIXED.items() if hasattr(config, key)})
        found.update(_token_ids_in_vocabulary(config))
        for key in getattr(config, "sub_configs", {}) or {}:
            sub = getattr(config, key, None)
            if isinstance(sub, transformers.PretrainedConfig):
                found[key] = {**_without_per_layer_lists(sub), **overrides(sub)}
        return found

    default = transformers.AutoConfig.for_model(model_type)
    try:
        return transformers.AutoConfig.for_model(model_type, **overrides(default))
    except Exception:  # noqa: BLE001 - a constructor that rejects them: set them afterwards
        for key, value in overrides(default).items():
            if not isinstance(value, dict):
                setattr(default, key, value)
        return default


def _token_ids_in_vocabulary(config) -> dict:
    """Special token ids inside the small vocabulary: padding, start and end at 0-2, as most
    tokenizers have them, the rest (placeholders for images or audio) from 100 up, above the
    ids the inputs use, so they never appear in them."""
    vocabulary, spare = SMALL["vocab_size"], iter(range(100, SMALL["vocab_size"]))
    usual = {"bos_token_id": 0, "pad_token_id": 1, "eos_token_id": 2,
             "decoder_start_token_id": 2}

    def small(key: str) -> int:
        return usual[key] if key in usual else next(spare)

    found = {}
    for key, value in sorted(config.to_dict().items()):
        if not key.endswith(("token_id", "token_index")):
            continue
        if isinstance(value, int) and value >= vocabulary:
            found[key] = small(key)
        elif isinstance(value, list) and any(isinstance(v, int) and v >= vocabulary
                                             for v in value):
            found[key] = [small(key) if v >= vocabulary else v for v in value]
    return found


def _without_per_layer_lists(config) -> dict:
    """A sub-config's fields without the lists with an entry per layer (``layer_types``), which
    its constructor derives again from the smaller layer count."""
    layers = {getattr(config, key) for key in ("num_hidden_layers", "num_layers", "n_layer")
              if isinstance(getattr(config, key, None), int)}
    return {key: value for key, value in config.to_dict().items()
            if not (isinstance(value, (list, tuple)) and len(value) in layers)}


def model_inputs(kind: str) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    inputs = {"input_ids": torch.randint(3, 100, TOKENS_SHAPE, generator=generator)}
    if kind == "encoder-decoder":
        inputs["decoder_input_ids"] = torch.randint(3, 100, TOKENS_SHAPE, generator=generator)
    return inputs


def reason_of(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text[:150]}"


def _same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(x.shape == y.shape and torch.equal(x, y)
                                    for x, y in zip(a, b))


def check_type(kind: str, model_type: str, export: bool = False) -> dict:
    """Every step above for one model type: a row saying what each step found, and
    ``status``: "passed" (every step), "partial" (the row says which did not and why) or
    "small config does not run" (it does not build or run on token ids alone). With
    ``export``, the pruned model is also exported to ONNX and checked in ONNX Runtime
    (``row["onnx"]``; not part of the status, which the sweep records without it)."""
    auto = KINDS[kind][1]
    row: dict = {"kind": kind, "model_type": model_type}
    inputs = model_inputs(kind)
    try:
        config = small_config(model_type)

        def build():
            torch.manual_seed(0)
            return auto.from_config(config).eval()

        original = build()
        row["class"] = type(original).__name__
        outputs(original, inputs)
    except Exception as error:  # noqa: BLE001 - any failure here is the config, reported
        row.update(status="small config does not run", reason=reason_of(error))
        return row
    start = time.perf_counter()
    row["params"] = sum(p.numel() for p in original.parameters())
    results: dict = {}
    methods = dict(zip(STEPS, (pk.HeadPruning(0.5, "l1"), pk.FilterPruning(0.5, "l1"),
                               pk.LayerPruning(1, "last"))))
    try:
        model = copy.deepcopy(original)
        for step, method in methods.items():
            row[step], result = _prune_step(model, inputs, method)
            if result is not None:
                results[step] = result
        if results:
            row["reload"] = _check_reload(model, results, build, inputs)
        if kind == "decoder":
            row["generate"] = _check_generation(original, results, inputs, methods)
        if export:
            row["onnx"] = _check_export(model, inputs)
    except Exception as error:  # noqa: BLE001 - reported in the row
        row["error"] = reason_of(error)
    row["seconds"] = round(time.perf_counter() - start, 1)
    passed = (all(row.get(step, "").startswith(("-", "none")) for step in STEPS)
              and "error" not in row
              and row.get("reload", "").startswith("equal")
              and row.get("generate", "same tokens").startswith("same tokens"))
    row["status"] = "passed" if passed else "partial"
    return row


def _prune_step(model, inputs, method) -> tuple[str, pk.PruneResult | None]:
    """The share of the model's parameters one step removed, or why it removed none."""
    try:
        result = pk.prune(model, inputs, method)
    except pk.PruneError as error:  # refused with a reason, the model left as it was
        if isinstance(method, pk.HeadPruning) and not _has_attention(model):
            return "none (no attention in this architecture)", None
        return "refused: " + reason_of(error), None
    except Exception as error:  # noqa: BLE001 - a crash is the finding
        return "FAILED " + reason_of(error), None
    removed = result.before.params - result.after.params
    if result.plan.is_empty:
        skipped = (f" ({len(result.skipped)} skipped: {result.skipped[0].reason[:100]})"
                   if result.skipped else "")
        return "nothing found" + skipped, None
    skipped = f", {len(result.skipped)} skipped" if result.skipped else ""
    return f"-{removed / result.before.params:.1%}{skipped}", result


def _has_attention(model) -> bool:
    """Whether any module is attention by its class name (FNet mixes tokens with a Fourier
    transform instead: no heads to find is then the right answer)."""
    return any("attention" in type(module).__name__.lower() for module in model.modules())


def _check_export(model, inputs) -> str:
    """The pruned model exported to ONNX and run back in ONNX Runtime (``pk.export``)."""
    with tempfile.TemporaryDirectory() as directory:
        try:
            report = pk.export(model, inputs, Path(directory) / "model.onnx", fresh_inputs=1)
        except pk.PruneError as error:
            return "FAILED " + reason_of(error)
    return f"{report.exporter}, largest difference {report.largest_difference:.1e}"


def _check_reload(model, results: dict, build, inputs) -> str:
    plans = [result.plan for result in results.values()]
    plan = plans[0]
    for later in plans[1:]:
        plan = plan.then(later)
    expected = outputs(model, inputs)
    with tempfile.TemporaryDirectory() as directory:
        pk.save(model, Path(directory) / "pk", plan)
        restored = pk.load(build(), Path(directory) / "pk")
        if not _same(expected, outputs(restored, inputs)):
            return "pk.load DIFFERS"
        if not all(result.config_matches for result in results.values()):
            return "equal (pk.load)"
        model.save_pretrained(Path(directory) / "hf")
        # the model's own class: an auto class may not map the config a part saves (Emu3)
        reloaded = type(model).from_pretrained(Path(directory) / "hf").eval()
        if not _same(expected, outputs(reloaded, inputs)):
            return "pk.load equal, from_pretrained DIFFERS"
        return "equal (pk.load, from_pretrained)"


def _check_generation(original, results: dict, inputs, methods: dict) -> str:
    """Greedy tokens of the model pruned by each exact step alone against the masked original
    (the steps above are chained, so each is replayed here on its own)."""
    prompt = inputs["input_ids"][:1, :5]

    def greedy(model):
        with torch.no_grad():
            return model.generate(prompt, max_new_tokens=6, do_sample=False, use_cache=True,
                                  pad_token_id=0)

    checked = []
    for step in ("heads", "mlp"):
        if step not in results:
            continue
        pruned = copy.deepcopy(original)
        result = pk.prune(pruned, inputs, methods[step])
        if not torch.equal(greedy(pruned), greedy(mask(copy.deepcopy(original), result.plan))):
            return f"DIFFERS after {step}"
        checked.append(step)
    return f"same tokens ({', '.join(checked)})" if checked else "nothing to compare"


def outputs(model, inputs) -> list[torch.Tensor]:
    """Every output tensor of ``model`` on ``inputs``, in eval mode, without gradients."""
    model.eval()
    with torch.no_grad():
        return list(iter_tensors(call_model(model, inputs)))
