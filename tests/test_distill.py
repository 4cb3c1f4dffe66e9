"""pk.distill: recovery by matching the unpruned model, on plain modules and transformers."""

import copy

import pytest
import torch
import transformers
from torch import nn

import prunekit as pk
from prunekit.recover.distill import Distillation, _lr_factor
from prunekit.recover.losses import kl_loss, row_weights

transformers.logging.set_verbosity_error()


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                         nn.Linear(64, 10)).eval()


def batches(count: int = 6, rows: int = 16, seed: int = 1) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(rows, 16, generator=generator) for _ in range(count)]


def kl_to(teacher: nn.Module, student: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return nn.functional.kl_div(student(x).log_softmax(-1), teacher(x).log_softmax(-1),
                                    log_target=True, reduction="batchmean").item()


def pruned_mlp() -> tuple[nn.Module, nn.Module]:
    teacher = mlp()
    student = copy.deepcopy(teacher)
    pk.prune(student, torch.randn(4, 16), pk.FilterPruning(0.6, "l1"))
    return teacher, student


def tiny_bert(**changes) -> nn.Module:
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=4,
                                     num_attention_heads=4, intermediate_size=64,
                                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                                     **changes)
    return transformers.BertModel(config).eval()


def text_batches(count: int = 4, seed: int = 0) -> list[dict]:
    generator = torch.Generator().manual_seed(seed)
    found = []
    for _ in range(count):
        mask = torch.ones(8, 12, dtype=torch.long)
        mask[:4, 8:] = 0  # half the rows padded: padding must count for nothing
        found.append({"input_ids": torch.randint(0, 100, (8, 12), generator=generator),
                      "attention_mask": mask})
    return found


def test_distillation_brings_a_pruned_classifier_back_towards_its_teacher():
    teacher, student = pruned_mlp()
    held_out = torch.randn(256, 16, generator=torch.Generator().manual_seed(9))
    before = kl_to(teacher, student, held_out)
    result = pk.distill(student, teacher, batches(count=20, rows=32), steps=150, lr=3e-3)
    assert len(result.losses) == result.steps == 150
    assert result.layer_map == {} and result.projections == {}  # no stack, same widths
    assert sum(result.losses[-10:]) < sum(result.losses[:10]) / 3
    assert kl_to(teacher, student, held_out) < before / 3  # on inputs it never saw
    assert not student.training  # back in the mode it came in
    assert result.steps_per_second > 0


def test_the_plan_maps_the_remaining_blocks_to_the_teacher_blocks_they_were():
    teacher = tiny_bert()
    student = copy.deepcopy(teacher)
    plan = pk.prune(student, text_batches()[0], pk.LayerPruning(1, "last")).plan
    assert plan.layers == ["encoder.layer.3"]
    result = pk.distill(student, teacher, text_batches(), steps=2, plan=plan)
    assert result.layer_map == {f"encoder.layer.{i}": f"encoder.layer.{i}" for i in range(3)}
    middle = copy.deepcopy(teacher)
    plan = pk.prune(middle, text_batches()[0],
                    pk.LayerPruning(1, "influence"), data=text_batches()).plan
    gone = int(plan.layers[0].rsplit(".", 1)[1])
    mapped = pk.distill(middle, teacher, text_batches(), steps=1, plan=plan).layer_map
    assert list(mapped.values()) == [f"encoder.layer.{i}" for i in range(4) if i != gone]
    with pytest.raises(pk.ConfigError, match="pass plan="):
        pk.distill(copy.deepcopy(middle), teacher, text_batches(), steps=1)


def test_hidden_states_match_exactly_at_the_start_when_nothing_was_pruned():
    teacher = tiny_bert()
    result = pk.distill(copy.deepcopy(teacher), teacher, text_batches(), steps=1)
    assert len(result.layer_map) == 4
    assert result.losses[0] == pytest.approx(0, abs=1e-6)  # the oracle: identical models
    perturbed = copy.deepcopy(teacher)
    with torch.no_grad():
        perturbed.encoder.layer[1].output.dense.weight.normal_(0, 1)
    assert pk.distill(perturbed, teacher, text_batches(), steps=1).hidden_losses[0] > 1e-3


def test_a_narrowed_hidden_size_gets_a_fitted_projection():
    teacher = tiny_bert()
    student = copy.deepcopy(teacher)
    pk.prune(student, text_batches()[0], pk.HiddenPruning(0.5), data=text_batches())
    result = pk.distill(student, teacher, text_batches(), steps=30, lr=1e-3)
    assert sorted(result.projections) == ["encoder/layer/0", "encoder/layer/1",
                                          "encoder/layer/2", "encoder/layer/3", "output"]
    projection = result.projections["output"].linear
    assert tuple(projection.weight.shape) == (32, 16)
    # fitted on the first batch, not drawn at random: the first hidden loss is already
    # far below what a zero map gives (1 per block, 4 blocks)
    assert result.hidden_losses[0] < 2.0
    assert result.losses[-1] < result.losses[0]


def test_accumulated_halves_take_the_same_steps_as_the_whole_batch():
    # in float64: in float32 the two sums' rounding, amplified by three Adam steps, differed
    # by 4e-5 of the loss on one machine's kernels and not on another's (the KL itself is
    # taken in float32, hence 1e-6 and not less)
    teacher, student = (model.double() for model in pruned_mlp())
    whole, halves = copy.deepcopy(student), copy.deepcopy(student)
    data = [batch.double() for batch in batches(count=3, rows=16)]
    split = [part for batch in data for part in batch.chunk(2)]
    one = pk.distill(whole, teacher, data, steps=3, lr=1e-2)
    two = pk.distill(halves, teacher, split, steps=3, lr=1e-2, accumulate=2)
    assert two.losses == pytest.approx(one.losses, rel=1e-6)
    for a, b in zip(whole.parameters(), halves.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)


def test_a_run_stopped_midway_resumes_from_its_checkpoint_to_the_same_weights(tmp_path):
    teacher, student = pruned_mlp()
    straight, stopped = copy.deepcopy(student), copy.deepcopy(student)
    options = dict(steps=8, lr=1e-2, checkpoint=tmp_path / "run", checkpoint_every=3)
    reference = pk.distill(straight, teacher, batches(count=5), **{**options, "checkpoint": None,
                                                                   "checkpoint_every": None})

    def stop_at_four(step):
        if step.done == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pk.distill(stopped, teacher, batches(count=5), progress=stop_at_four, **options)
    restarted = copy.deepcopy(student)  # a fresh process would rebuild the pruned model
    resumed = pk.distill(restarted, teacher, batches(count=5), **options)
    assert resumed.resumed_from == 3 and resumed.steps == 8
    assert resumed.losses == reference.losses
    for a, b in zip(straight.parameters(), restarted.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(pk.ConfigError, match="of a run of 8 steps"):
        pk.distill(copy.deepcopy(student), teacher, batches(), steps=9,
                   checkpoint=tmp_path / "run")
    with pytest.raises(pk.ConfigError, match="another student"):
        pk.distill(mlp(), teacher, batches(), steps=8, checkpoint=tmp_path / "run")


def test_the_learning_rate_warms_up_then_decays_to_zero():
    factor = _lr_factor(Distillation(steps=100, warmup=0.1))
    assert factor(0) < factor(5) < factor(9) <= 1
    assert factor(10) == pytest.approx(1) and factor(99) < 0.01
    assert _lr_factor(Distillation(steps=10, warmup=0, schedule="constant"))(9) == 1


@pytest.mark.parametrize("options, message", [
    (dict(steps=0), "steps must be a positive integer"),
    (dict(accumulate=1.5), "accumulate must be a positive integer"),
    (dict(output_loss="kld"), "output_loss must be one of"),
    (dict(hidden_loss="l1"), "hidden_loss must be one of"),
    (dict(schedule="step"), "schedule must be one of"),
    (dict(warmup=1.0), "warmup must be a number in \\[0, 1\\) \\(a fraction of the steps\\)"),
    (dict(temperature=0), "temperature must be a positive number"),
    (dict(checkpoint_every=5), "checkpoint_every needs checkpoint="),
    (dict(layer_map={"0": "nowhere"}), "the teacher has no module 'nowhere'"),
    (dict(hidden=True), "no common stack of blocks"),
    (dict(parallel="ddp2"), "parallel must be one of"),
    (dict(temprature=2.0), "no option 'temprature'; the options are"),
    (dict(parallel="fsdp", checkpoint="somewhere"), "not supported with parallel='fsdp'"),
])
def test_bad_options_are_named_and_leave_the_student_alone(options, message):
    teacher, student = pruned_mlp()
    before = copy.deepcopy(student.state_dict())
    with pytest.raises(pk.ConfigError, match=message):
        pk.distill(student, teacher, batches(), **{"steps": 2, **options})
    for name, value in student.state_dict().items():
        assert torch.equal(value, before[name])


def test_data_that_runs_out_or_is_not_batches_is_refused():
    teacher, student = pruned_mlp()
    with pytest.raises(pk.ConfigError, match="ran out after 2 batches"):
        pk.distill(student, teacher, iter(batches(count=2)), steps=5)
    with pytest.raises(pk.ConfigError, match="data must be an iterable of batches"):
        pk.distill(student, teacher, torch.randn(4, 16), steps=1)
    with pytest.raises(pk.ConfigError, match="same model"):
        pk.distill(teacher, teacher, batches(), steps=1)


def test_iterative_pruning_recovers_each_step_by_distillation():
    model, x = tiny_bert(), text_batches()[0]
    history = pk.iterative_prune(model, x, pk.LayerPruning(2, "last"), steps=2,
                                 distill=pk.Distillation(steps=3, lr=1e-3),
                                 distill_data=text_batches())
    assert model.config.num_hidden_layers == 2 and history.plan.layers == [
        "encoder.layer.3", "encoder.layer.2"]
    assert all(r.distill_loss is not None and r.distill_loss >= 0 for r in history.steps)
    with pytest.raises(pk.ConfigError, match="distill needs batches"):
        pk.iterative_prune(tiny_bert(), x, pk.LayerPruning(1, "last"), steps=1,
                           distill=pk.Distillation(steps=1))


def test_a_causal_language_model_learns_its_teachers_next_token_distribution():
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2)
    teacher = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():  # random weights predict nearly uniformly: sharpen them
        teacher.lm_head.weight.mul_(30)
    student = copy.deepcopy(teacher)
    data = text_batches(count=6)
    pk.prune(student, data[0], pk.FilterPruning(0.75, "l1"))
    result = pk.distill(student, teacher, data, steps=40, lr=1e-3, hidden=False)
    assert result.output_losses == result.losses  # logits by KL, nothing else
    assert sum(result.losses[-5:]) < sum(result.losses[:5]) / 2
    # padding counts for nothing: logits at padded positions may be anything
    padded = data[0]["attention_mask"] == 0
    with torch.no_grad():
        s, t = student(**data[0]).logits, teacher(**data[0]).logits
        weights = row_weights(data[0], s)
        assert torch.equal(weights.reshape(padded.shape) == 0, padded)
        scrambled = s.clone()
        scrambled[padded] = torch.randn_like(scrambled[padded]) * 100
        assert kl_loss(scrambled, t, weights, 2.0) == pytest.approx(kl_loss(s, t, weights, 2.0))


def test_a_time_limit_stops_training_at_a_step_and_says_so():
    teacher, student = pruned_mlp()
    result = pk.distill(student, teacher, batches(count=5), steps=10_000, lr=1e-3,
                        schedule="constant", time_limit=0.5)
    assert 1 <= result.steps < 10_000 and len(result.losses) == result.steps
    assert result.stopped.startswith(f"stopped at step {result.steps} of 10000: the time limit")
    assert result.seconds >= 0.5 and str(result).endswith(result.stopped)
    with pytest.raises(pk.ConfigError, match="time_limit must be a positive number"):
        pk.Distillation(time_limit=0)
