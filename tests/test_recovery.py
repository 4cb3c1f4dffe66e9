"""Iterative pruning, chained plans, sensitivity analysis and method comparison."""

import copy

import pytest
import torch

import prunekit as pk
from prunekit.cli.data import load_digits
from prunekit.cli.demo import digits_resnet
from prunekit.recover import evaluate_accuracy

from .helpers import outputs


@pytest.fixture(scope="module")
def digits():
    return load_digits(batch_size=128)


def small_model():
    torch.manual_seed(0)
    return digits_resnet(width=16).eval()


def test_chained_plans_replay_two_steps_in_one(tmp_path, digits):
    model, x = small_model(), digits.example_inputs
    original = copy.deepcopy(model)
    first = pk.prune(model, x, pk.FilterPruning(0.25, "l1")).plan
    second = pk.prune(model, x, pk.ChannelPruning(0.25, "l2")).plan
    chained = first.then(second)
    assert pk.verify(original, x, chained).ok
    pk.save(model, tmp_path / "two_steps", chained)
    reloaded = pk.load(copy.deepcopy(original), tmp_path / "two_steps")
    for a, b in zip(outputs(model, x), outputs(reloaded, x)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_iterative_pruning_reaches_the_target_with_one_record_per_step(tmp_path, digits):
    model, x = small_model(), digits.example_inputs
    calls = []
    history = pk.iterative_prune(
        model, x, pk.FilterPruning(criterion="l2", flops_target=0.5), steps=3,
        finetune=lambda pruned, step: calls.append(step),
        evaluate=lambda pruned: evaluate_accuracy(pruned, digits.test))
    assert calls == [1, 2, 3]
    assert [r.step for r in history.records] == [0, 1, 2, 3] and len(history.steps) == 3
    reductions = [r.flop_reduction for r in history.records]
    assert reductions == sorted(reductions) and abs(reductions[-1] - 0.5) <= 0.02
    assert history.records[-1].params == sum(p.numel() for p in model.parameters())
    assert all(r.accuracy is not None for r in history.records)
    fresh = pk.load(small_model(), pk.save(model, tmp_path / "iterated", history.plan))
    for a, b in zip(outputs(model, x), outputs(fresh, x)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert history.plot(tmp_path / "history.png").stat().st_size > 1000


def test_step_methods_compound_to_the_ratio():
    steps = [pk.FilterPruning(0.75).step(k, 2, {}) for k in (1, 2)]
    assert [s.ratio for s in steps] == pytest.approx([0.5, 0.5])
    method, kept = pk.FilterPruning(flops_target=0.6), 1.0
    for k in (1, 2, 3):
        kept *= 1 - method.step(k, 3, {"flops": 1 - kept}).flops_target
    assert kept == pytest.approx(0.4)


def test_a_budget_step_makes_up_for_an_earlier_overshoot():
    method = pk.FilterPruning(params_target=0.6)
    # step 1 of 3 removed 35% instead of 20%: step 2 only goes on to 40%, step 3 to 60%
    second = method.step(2, 3, {"params": 0.35})
    assert 1 - (1 - 0.35) * (1 - second.params_target) == pytest.approx(0.4)
    assert method.step(2, 3, {"params": 0.45}) is None


def test_sensitivity_prunes_one_group_at_a_time_and_leaves_the_model_alone(digits):
    model, x = small_model(), digits.example_inputs
    before = copy.deepcopy(model)
    probe = x.repeat(4, 1, 1, 1)
    reference = model(probe).detach()

    def distance(candidate):  # how far the outputs move: zero only if nothing changed
        return float((candidate(probe) - reference).detach().abs().max())

    table = pk.sensitivity(model, x, ratios=(0.25, 0.75), evaluate=distance)
    groups = pk.DependencyGraph(model, x).groups
    assert len(table.rows) == 2 * len(groups) and table.baseline == 0
    for group in dict.fromkeys(r.group for r in table.rows):
        low, high = [r.accuracy for r in table.rows if r.group == group]
        assert 0 < low and 0 < high
    for a, b in zip(outputs(model, x), outputs(before, x)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert "| group | channels | ratio 0.25 | ratio 0.75 |" in table.to_markdown()


def test_compare_runs_each_method_on_a_copy_at_the_same_budget(tmp_path, digits):
    model, x = small_model(), digits.example_inputs
    before = copy.deepcopy(model)
    methods = {"filter l1": pk.FilterPruning(criterion="l1", flops_target=0.4),
               "channel l2": pk.ChannelPruning(criterion="l2", flops_target=0.4),
               "layers": pk.LayerPruning(criterion="last", flops_target=0.1)}
    table = pk.compare(model, x, digits.train, digits.test, flops_target=0.4,
                       finetune_epochs=1, methods=methods)
    assert [r.method for r in table.rows] == ["unpruned", "filter l1", "channel l2", "layers"]
    base = table.baseline.flops
    for row in table.rows[1:3]:
        assert abs(1 - row.flops / base - 0.4) <= 0.02 and row.verified
    assert table.rows[3].flops < base and table.rows[3].verified
    assert all(r.accuracy_fine_tuned is not None for r in table.rows[1:])
    for a, b in zip(outputs(model, x), outputs(before, x)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert table.plot(tmp_path / "comparison.png").stat().st_size > 1000


def test_recalibrated_norm_statistics_are_the_mean_and_variance_of_their_inputs(digits):
    from prunekit.recover import recalibrate_norms

    model = small_model()
    pk.prune(model, digits.example_inputs, pk.FilterPruning(0.5, "l1"))
    norm = model[1]
    seen = []
    handle = norm.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach()))
    batches = [x for x, _ in digits.calibration][:3]
    assert recalibrate_norms(model, batches) == sum(
        isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    handle.remove()
    inputs = torch.cat(seen)
    per_batch_mean = torch.stack([s.mean(dim=(0, 2, 3)) for s in seen]).mean(0)
    torch.testing.assert_close(norm.running_mean, per_batch_mean, rtol=1e-4, atol=1e-5)
    assert inputs.shape[1] == norm.num_features
    assert norm.momentum == 0.1 and not norm.training and not model.training


def test_compare_accepts_an_outside_pruner(digits):
    model, x = small_model(), digits.example_inputs

    def halve_the_head(pruned, example_inputs, data):  # stands in for another library
        pk.prune(pruned, example_inputs, pk.FilterPruning(0.5, "l1"))

    table = pk.compare(model, x, digits.train, digits.test, finetune_epochs=0,
                       methods={"outside": halve_the_head}, data=digits.calibration)
    assert table.rows[1].verified is None and table.rows[1].accuracy_fine_tuned is None
    assert table.rows[1].flops < table.baseline.flops
    assert "| outside |" in table.to_markdown() and "n/a" in table.to_markdown()
    # "as pruned" is the accuracy before BatchNorm statistics are re-estimated
    alone = copy.deepcopy(model)
    halve_the_head(alone, x, None)
    assert table.rows[1].accuracy_as_pruned == pk.recover.evaluate_accuracy(alone, digits.test)
    recalibrated = pk.recover.recalibrate_norms(alone, digits.calibration)
    assert recalibrated and table.rows[1].accuracy_one_shot == pk.recover.evaluate_accuracy(
        alone, digits.test)


def test_norm_sparsity_training_shrinks_batchnorm_scales(digits):
    from prunekit.recover import norm_scale_l1, train_classifier

    plain, sparse = small_model(), small_model()
    torch.manual_seed(0)
    train_classifier(plain, digits.train, epochs=2, lr=3e-2)
    torch.manual_seed(0)
    train_classifier(sparse, digits.train, epochs=2, lr=3e-2, norm_sparsity=1.0)
    assert float(norm_scale_l1(sparse).detach()) < 0.7 * float(norm_scale_l1(plain).detach())


def test_compare_fine_tunes_each_method_once_per_seed_and_shows_the_spread(tmp_path):
    # fresh loaders: each has its own generator, which earlier runs would have advanced
    digits = load_digits(batch_size=128)
    model, x = small_model(), digits.example_inputs
    methods = {"filter l1": pk.FilterPruning(criterion="l1", flops_target=0.4)}
    table = pk.compare(model, x, digits.train, digits.test, flops_target=0.4,
                       finetune_epochs=1, methods=methods, seeds=3)
    row = table.rows[1]
    assert len(row.fine_tuned_runs) == 3 and len(set(row.fine_tuned_runs)) > 1
    assert row.accuracy_fine_tuned == pytest.approx(sum(row.fine_tuned_runs) / 3)
    low, high = row.fine_tuned_range
    assert f"({low:.1%}–{high:.1%})" in table.to_markdown()
    assert "3 seeds" in table.to_markdown()
    # the first seed's run is the single run of seeds=1
    fresh = load_digits(batch_size=128)
    single = pk.compare(model, x, fresh.train, fresh.test, flops_target=0.4,
                        finetune_epochs=1, methods=methods)
    assert single.rows[1].fine_tuned_runs == row.fine_tuned_runs[:1]
    assert table.plot(tmp_path / "spread.png").stat().st_size > 1000
    with pytest.raises(pk.ConfigError, match="seeds"):
        pk.compare(model, x, fresh.train, fresh.test, methods=methods, seeds=0)
