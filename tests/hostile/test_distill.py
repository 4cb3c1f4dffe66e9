"""Promise: "pk.distill trains the student in place, resumes from its checkpoint, and a
mistake is one line that leaves the student alone".

Attacks: another run's checkpoint, a checkpoint missing keys, a checkpoint path that is a
file, a NaN in the data, a student in another dtype."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import prunekit as pk


def models(hidden=8):
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    student = nn.Sequential(nn.Linear(4, hidden), nn.ReLU(), nn.Linear(hidden, 3))
    return student, teacher


DATA = [torch.randn(5, 4, generator=torch.Generator().manual_seed(i)) for i in range(3)]


def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def unchanged(model, before):
    return all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_another_runs_checkpoint_is_refused_before_the_student_is_touched(tmp_path):
    other, teacher = models(hidden=6)
    pk.distill(other, teacher, DATA, steps=2, checkpoint=tmp_path)
    student, _ = models(hidden=8)
    # the first layer's bias has 8 entries here, 6 there; the last layer's bias fits
    before = state(student)
    with pytest.raises(pk.ConfigError, match="another student's weights"):
        pk.distill(student, teacher, DATA, steps=2, checkpoint=tmp_path)
    assert unchanged(student, before)


def test_a_checkpoint_missing_keys_is_one_line(tmp_path):
    student, teacher = models()
    torch.save({"steps": 2, "student": student.state_dict()}, tmp_path / "distill.pt")
    before = state(student)
    with pytest.raises(pk.ConfigError, match="not a distillation checkpoint"):
        pk.distill(student, teacher, DATA, steps=2, checkpoint=tmp_path)
    assert unchanged(student, before)


def test_a_checkpoint_path_that_is_a_file_is_refused_before_training(tmp_path):
    student, teacher = models()
    (tmp_path / "file").write_text("x")
    before = state(student)
    with pytest.raises(pk.ConfigError, match="is a file"):
        pk.distill(student, teacher, DATA, steps=2, checkpoint=tmp_path / "file")
    assert unchanged(student, before)


def test_a_nan_in_the_data_stops_with_the_student_as_the_last_good_step_left_it():
    student, teacher = models()
    poisoned = [DATA[0], DATA[1], torch.full((5, 4), math.nan)]
    good = copy.deepcopy(student)
    pk.distill(good, teacher, DATA[:2], steps=2, schedule="constant", warmup=0.0)
    with pytest.warns(RuntimeWarning, match="not finite"):
        result = pk.distill(student, teacher, poisoned, steps=5, schedule="constant",
                            warmup=0.0)
    assert result.steps == 2 and "stopped at step 3" in result.stopped
    assert "stopped at step 3" in str(result)
    assert all(torch.isfinite(p).all() for p in student.parameters())
    assert all(torch.equal(a, b) for a, b in zip(student.parameters(), good.parameters()))


def test_a_student_in_another_dtype_is_one_line_naming_both():
    student, teacher = models()
    student = student.double()
    with pytest.raises(pk.ConfigError, match="float64 and the teacher torch.float32"):
        pk.distill(student, teacher, DATA, steps=1)


def test_a_result_prints_as_a_sentence():
    student, teacher = models()
    text = str(pk.distill(student, teacher, DATA, steps=2))
    assert text.startswith("distilled 2 steps") and "loss" in text
