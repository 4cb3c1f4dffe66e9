"""Recovering a pruned model by distillation: the student (pruned) learns to reproduce the
teacher (the model before pruning) on unlabelled batches.

The loss is ``output_weight × output term + hidden_weight × Σ hidden terms``:

- the output term compares what the two models return: KL divergence of the softened
  distributions for logits, mean squared error (relative to the teacher's variance) or
  1 − cosine for features such as a sentence embedding;
- a hidden term compares the output of each remaining block of the student with the output
  of the teacher block it was before layer removal (the pruning plan says which blocks went),
  through a learned projection when hidden-size pruning narrowed it.

Training is AdamW with linear warm-up and then a cosine (or linear, or constant) schedule,
gradient clipping and accumulation; the state is written every ``checkpoint_every`` steps and
a later call with the same ``checkpoint`` folder resumes from it. Launched by ``torchrun``, the
student trains under DistributedDataParallel, or fully sharded (``parallel="fsdp"``,
``prunekit.recover.sharding``), each process on its own share of the data.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
import warnings
from typing import Any, Callable, Iterable, Iterator

import torch
from torch import nn

from ..core.arguments import keyword_only
from ..core.batches import split_batch
from ..core.calls import call_model, evaluating
from ..core.distributed import is_distributed, sum_across, world_size
from ..core.progress import ProgressOption, Reporter, Step, finish, reporter
from ..errors import ConfigError
from . import sharding
from .distill_checkpoint import resume_state, save_state
from .distill_settings import PARALLEL, SCHEDULES, Distillation, DistillResult  # noqa: F401
from .lora import low_rank_adapters
from .losses import (
    Projection,
    distance,
    feature_dim,
    pick_output,
    row_weights,
)
from .matching import captured, matched_modules


@keyword_only
def distill(student: nn.Module, teacher: nn.Module, data: Iterable,
            config: Distillation | None = None, *, progress: ProgressOption = None,
            **options: Any) -> DistillResult:
    """Train ``student`` in place to reproduce ``teacher`` on ``data``.

    Configured as ``pk.iterative_prune(distill=...)`` is: a ``pk.Distillation``, or its
    fields as keywords (``steps=500, lr=1e-4``), not both.

    Args:
        student: the pruned model; trained in place, left in the mode it was in.
        teacher: the reference (usually the model before pruning); never changed.
        data: batches of inputs (or ``(inputs, targets)`` pairs, targets unused), called as
            ``pk.prune`` calls example inputs; cycled when shorter than the run. Under
            ``torchrun``: this process's share (a ``DistributedSampler``, or
            ``pk.rank_share(batches)``).
        config: a ``pk.Distillation`` (losses, layer map, schedule, accumulation,
            checkpointing); by default one built from ``options``.
        progress: ``True`` shows the step, the loss and the time left on stderr; a callable
            receives a ``pk.Step`` (``step.done`` of ``step.total``, ``step.detail`` the
            loss) after every step.
        **options: the fields of ``pk.Distillation``, without ``config``.

    Returns:
        A ``DistillResult``: the loss of every step, steps per second, the layer map used
        and the projections learned.

    Example:
        >>> pruned = copy.deepcopy(model)
        >>> result = pk.prune(pruned, x, pk.LayerPruning(n=2, criterion="angular"), data=calib)
        >>> pk.distill(pruned, model, batches, steps=500, plan=result.plan)
    """
    if isinstance(config, int) and not isinstance(config, bool):
        # the older signature: distill(student, teacher, data, steps)
        warnings.warn("pk.distill: pass steps= by keyword (or a pk.Distillation); passing "
                      "it by position is deprecated", DeprecationWarning, stacklevel=3)
        config, options = None, {"steps": config, **options}
    known = {f.name for f in dataclasses.fields(Distillation)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(f"pk.distill got no option {unknown[0]!r}; the options are "
                          f"{', '.join(sorted(known))}")
    if config is not None and not isinstance(config, Distillation):
        raise ConfigError(f"config must be a pk.Distillation, got {type(config).__name__}")
    if config is not None and options:
        raise ConfigError(f"pk.distill: give a pk.Distillation or its fields as keywords "
                          f"({', '.join(sorted(options))}), not both")
    return run_distillation(student, teacher, data, config or Distillation(**options),
                            progress)


def run_distillation(student: nn.Module, teacher: nn.Module, data: Iterable,
                     config: Distillation, progress: ProgressOption = None) -> DistillResult:
    """``pk.distill`` with its options as a ``Distillation``; ``progress`` as there."""
    if student is teacher:
        raise ConfigError("student and teacher are the same model; distil a pruned copy "
                          "(copy.deepcopy the model before pruning it)")
    report = reporter(progress, "pk.distill progress")
    if config.lora_rank is not None:
        with low_rank_adapters(student, config.lora_rank):
            return run_distillation(student, teacher, data,
                                    dataclasses.replace(config, lora_rank=None), report)
    pairs = matched_modules(student, teacher, config)
    batches = _cycle(data)
    first = next(batches)
    sharded = config.parallel == "fsdp" and is_distributed()
    trained = copy.deepcopy(student) if sharded else student  # see recover/sharding.py
    with captured(trained, list(pairs)) as student_states, \
            captured(teacher, list(pairs.values())) as teacher_states:
        objective = _Objective(trained, teacher, pairs, config, student_states, teacher_states)
        try:
            objective.prepare(split_batch(first)[0])
        except Exception as error:
            _check_runs(student, teacher, split_batch(first)[0])  # one line if a model fails
            raise error
        result = _train(objective, _prepend(first, batches), config, report, sharded)
        finish(report)
    result.layer_map = dict(pairs)
    if sharded:
        result.projections = sharding.gather_into(student, objective)
    else:
        result.projections = dict(objective.projections.items())
    return result


def _check_runs(student: nn.Module, teacher: nn.Module, inputs: Any) -> None:
    """Both models run on the first batch, or one line says which does not (and, where their
    dtypes differ from each other, that this is why): called when the first pass failed."""
    for name, model in (("teacher", teacher), ("student", student)):
        try:
            with evaluating(model), torch.no_grad():
                call_model(model, inputs)
        except Exception as error:
            dtypes = {side: next((p.dtype for p in m.parameters() if p.is_floating_point()),
                                 None) for side, m in (("student", student), ("teacher", teacher))}
            hint = (f"; the student is {dtypes['student']} and the teacher {dtypes['teacher']}: "
                    f"give both, and the data, one dtype" if len(set(dtypes.values())) > 1
                    else "")
            raise ConfigError(f"data: the {name} does not run on the first batch "
                              f"({type(error).__name__}: {str(error).splitlines()[0][:200]})"
                              f"{hint}") from error


class _Objective(nn.Module):
    """The student, the projections and the loss: one module, so DistributedDataParallel
    sees every trained parameter used inside its forward."""

    def __init__(self, student: nn.Module, teacher: nn.Module, pairs: dict[str, str],
                 config: Distillation, student_states: dict, teacher_states: dict):
        super().__init__()
        self.student = student
        self.teacher = [teacher]  # in a list: not a submodule, never trained or synchronised
        self.pairs, self.config = pairs, config
        self.student_states, self.teacher_states = student_states, teacher_states
        self.projections = nn.ModuleDict()
        self.output_kind = "features"

    @torch.no_grad()
    def prepare(self, inputs: Any) -> None:
        """Run both models once: which output to compare, and a projection (fitted on this
        batch) wherever the student is narrower."""
        teacher_output, teacher_hidden = self.targets(inputs)
        with evaluating(self.student):
            picked, self.output_kind = pick_output(call_model(self.student, inputs), inputs,
                                                   self.config.output)
        for name in self.pairs:
            self._project_if_narrower(name, self.student_states[name], teacher_hidden[name])
        if self.output_loss is not None and self.output_loss != "kl":
            self._project_if_narrower("output", picked, teacher_output)

    @property
    def output_loss(self) -> str | None:
        wanted = self.config.output_loss
        if wanted == "auto":
            return "kl" if self.output_kind == "logits" else "mse"
        return wanted

    def _project_if_narrower(self, name: str, student: torch.Tensor,
                             teacher: torch.Tensor) -> None:
        width, wanted = student.shape[feature_dim(student)], teacher.shape[feature_dim(teacher)]
        if width != wanted:
            projection = Projection(width, wanted).to(student.device)
            projection.fit(student, teacher)
            self.projections[_key(name)] = projection

    @torch.no_grad()
    def targets(self, inputs: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        teacher = self.teacher[0]
        with evaluating(teacher):
            output, _ = pick_output(call_model(teacher, inputs), inputs, self.config.output)
        return output, {name: self.teacher_states[block] for name, block in self.pairs.items()}

    def forward(self, inputs: Any, teacher_output: torch.Tensor,
                teacher_hidden: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        output, _ = pick_output(call_model(self.student, inputs), inputs, self.config.output)
        zero = output.new_zeros(())
        output_term = zero
        if self.output_loss is not None:
            output = self._projected("output", output)
            output_term = distance(self.output_loss, output, teacher_output,
                                   row_weights(inputs, teacher_output), self.config.temperature)
        hidden_term = zero
        for name, wanted in teacher_hidden.items():
            mine = self._projected(name, self.student_states[name])
            hidden_term = hidden_term + distance(self.config.hidden_loss, mine, wanted,
                                                 row_weights(inputs, wanted), 1.0)
        total = self.config.output_weight * output_term + self.config.hidden_weight * hidden_term
        return total, output_term.detach(), hidden_term.detach()

    def _projected(self, name: str, x: torch.Tensor) -> torch.Tensor:
        key = _key(name)
        return self.projections[key](x) if key in self.projections else x


def _key(name: str) -> str:
    return name.replace(".", "/")  # a ModuleDict key may not hold dots


def _train(objective: _Objective, batches: Iterator, config: Distillation,
           progress: Reporter, sharded: bool) -> DistillResult:
    student = objective.student
    if sharded:  # before the optimiser is made: it must hold the sharded parameters
        sharding.shard(objective, student)
    parameters = [p for p in objective.parameters() if p.requires_grad]
    if not parameters:
        raise ConfigError("the student has no parameter that requires grad")
    optimizer = torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_factor(config))
    result = DistillResult(processes=world_size())
    used = resume_state(config, objective, optimizer, schedule, result)
    for _ in range(used):  # the batches the resumed run already trained on
        next(batches)
    model: nn.Module = objective
    if is_distributed() and not sharded:
        # parameters the loss does not reach (a pooler whose output is not compared) get
        # no gradient; DDP must be told to expect that
        model = nn.parallel.DistributedDataParallel(objective, find_unused_parameters=True)
    mode = student.training
    student.train()
    started = time.perf_counter()
    try:
        for step in range(result.steps, config.steps):
            sums = _accumulate_gradients(objective, model, batches, config.accumulate)
            used += config.accumulate
            norm = nn.utils.clip_grad_norm_(parameters, config.max_grad_norm or math.inf)
            # each process's terms are its share of the global mean: the sum is the mean
            total, output_part, hidden_part = (
                value / config.accumulate / world_size() for value in sum_across(sums)[0])
            if not (math.isfinite(total.item()) and math.isfinite(float(norm))):
                # stepping would write NaN into every parameter: the student stays as the
                # last good step left it
                result.stopped = (f"stopped at step {step + 1} of {config.steps}: the loss "
                                  f"or its gradient was not finite (NaN or Inf; a NaN in the "
                                  f"data, or a learning rate too large); the student is as "
                                  f"step {step} left it")
                warnings.warn(result.stopped, RuntimeWarning, stacklevel=3)
                break
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            result.losses.append(total.item())
            result.output_losses.append(output_part.item())
            result.hidden_losses.append(hidden_part.item())
            result.steps = step + 1
            progress(Step("distilling", result.steps, config.steps,
                          f"loss {result.losses[-1]:.4g}", result.losses[-1]))
            if config.checkpoint is not None and (
                    result.steps == config.steps
                    or (config.checkpoint_every and result.steps % config.checkpoint_every == 0)):
                save_state(config, objective, optimizer, schedule, result, used)
            if _past(config.time_limit, started) and result.steps < config.steps:
                result.stopped = (f"stopped at step {result.steps} of {config.steps}: the time "
                                  f"limit of {config.time_limit:g} s was reached")
                break
    finally:
        student.train(mode)
        optimizer.zero_grad(set_to_none=True)
    result.seconds = time.perf_counter() - started
    return result


def _past(limit: float | None, started: float) -> bool:
    """Whether ``limit`` seconds have passed since ``started`` on any process (all of them
    must stop at the same step, or the next one's gradient reduction would wait forever)."""
    if limit is None:
        return False
    late = torch.tensor([1.0 if time.perf_counter() - started >= limit else 0.0])
    return bool(sum_across(late)[0][0] > 0)


def _accumulate_gradients(objective: _Objective, model: nn.Module, batches: Iterator,
                          accumulate: int) -> torch.Tensor:
    """One step's gradients from ``accumulate`` batches; the summed loss terms (total,
    output, hidden)."""
    sums = torch.zeros(3, dtype=torch.float64)
    for micro in range(accumulate):
        inputs = split_batch(next(batches))[0]
        teacher_output, teacher_hidden = objective.targets(inputs)
        with _syncing(model, micro == accumulate - 1):
            terms = model(inputs, teacher_output, teacher_hidden)
            (terms[0] / accumulate).backward()
        sums += torch.stack([t.detach().double().cpu() for t in terms])
    return sums


class _syncing:
    """No gradient synchronisation for all but the last accumulated batch (gradients are
    reduced once per step): DDP's ``no_sync``, FSDP's ``set_requires_gradient_sync``; nothing
    on one process."""

    def __init__(self, model: nn.Module, sync: bool):
        if hasattr(model, "set_requires_gradient_sync"):  # fully sharded
            model.set_requires_gradient_sync(sync)
        self.context = None if sync or not hasattr(model, "no_sync") else model.no_sync()

    def __enter__(self):
        return self.context.__enter__() if self.context is not None else None

    def __exit__(self, *exc):
        return self.context.__exit__(*exc) if self.context is not None else False


def _lr_factor(config: Distillation) -> Callable[[int], float]:
    warm = round(config.warmup * config.steps)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / (warm + 1)
        progress = (step - warm) / max(1, config.steps - warm)
        if config.schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * progress))
        if config.schedule == "linear":
            return 1 - progress
        return 1.0
    return factor


def _cycle(data: Iterable) -> Iterator:
    """The batches over and over; a one-shot iterator that runs out is an error."""
    if isinstance(data, (torch.Tensor, dict)) or not hasattr(data, "__iter__"):
        raise ConfigError(f"data must be an iterable of batches (a list or a DataLoader), "
                          f"got a {type(data).__name__}")
    seen = 0
    while True:
        passed = 0
        for batch in data:
            passed += 1
            seen += 1
            yield batch
        if passed == 0:
            raise ConfigError(f"data ran out after {seen} batches; pass a re-iterable (a list "
                              f"or a DataLoader), not an iterator" if seen else
                              "data= gave no batches")


def _prepend(first: Any, rest: Iterator) -> Iterator:
    yield first
    yield from rest
