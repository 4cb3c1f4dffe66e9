"""What a distillation is told (``Distillation``, every field a keyword of ``pk.distill``)
and what it returns (``DistillResult``)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.arguments import check_number, check_whole
from ..errors import ConfigError
from ..plan import Plan
from .distill_checkpoint import CHECKPOINT_FILE
from .losses import HIDDEN_LOSSES, OUTPUT_LOSSES, OutputFn, Projection, check_temperature

SCHEDULES = ("cosine", "linear", "constant")
PARALLEL = ("ddp", "fsdp")


@dataclass(frozen=True)
class Distillation:
    """How to distil; every field is a keyword of ``pk.distill``.

    Args:
        steps: optimiser steps.
        output: which tensor of the models' outputs to compare: ``"auto"`` (a Hugging Face
            output's ``logits``, else its ``last_hidden_state``, else the tensor returned, else
            the first tensor found) or ``output(outputs, inputs) -> tensor``.
        output_loss: ``"kl"``, ``"cosine"`` or ``"mse"``; ``"auto"`` is KL for logits (a
            ``logits`` field or a 2-D tensor) and MSE for anything else; None drops the term.
        temperature: the softening of KL.
        hidden: match the blocks of the models' layer stacks (``"auto"``: when both have
            one), True (and fail when there is none) or False.
        layer_map: ``{student module: teacher module}`` whose outputs to match instead.
        plan: the plan that pruned the student: the blocks it removed map the rest of the
            student's stack to their teacher blocks (needed when the stacks' lengths differ).
        hidden_loss: ``"mse"`` or ``"cosine"``.
        output_weight: the output term's weight.
        hidden_weight: the hidden terms' weight (they are summed).
        lr: AdamW's learning rate.
        weight_decay: AdamW's weight decay.
        warmup: the fraction of steps over which the learning rate rises linearly.
        schedule: after warm-up, ``"cosine"`` or ``"linear"`` decay to zero, or ``"constant"``.
        accumulate: batches whose gradients add up to one step.
        max_grad_norm: gradients are clipped to this norm (None: not clipped).
        checkpoint: a folder; the state is written there and a later call resumes from it.
        checkpoint_every: write the state every this many steps (and always at the end).
        time_limit: seconds of training at most: training stops after the first step that
            ends past it (every process at the same step), and ``result.stopped`` says so;
            for recovery on a fixed time budget (use ``schedule="constant"``, since the
            decaying schedules are laid out over ``steps``).
        lora_rank: train low-rank adapters of this rank on every linear layer (peft's LoRA;
            the output layer of a language model excepted) instead of the weights, and merge
            them into the weights at the end: a fraction of the memory for the optimiser, for
            a small recovery budget. None: train every weight.
        parallel: under ``torchrun``, ``"ddp"`` (DistributedDataParallel: every process holds
            the weights, gradients and optimiser state) or ``"fsdp"`` (fully sharded: each
            holds 1/N of them; no checkpointing yet). One process: plain training either way.
    """

    steps: int = 100
    output: str | OutputFn = "auto"
    output_loss: str | None = "auto"
    temperature: float = 2.0
    hidden: bool | str = "auto"
    layer_map: dict[str, str] | None = None
    plan: Plan | None = None
    hidden_loss: str = "mse"
    output_weight: float = 1.0
    hidden_weight: float = 1.0
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup: float = 0.1
    schedule: str = "cosine"
    accumulate: int = 1
    max_grad_norm: float | None = 1.0
    checkpoint: str | Path | None = None
    checkpoint_every: int | None = None
    time_limit: float | None = None
    lora_rank: int | None = None
    parallel: str = "ddp"

    def __post_init__(self) -> None:
        for name in ("steps", "accumulate") + (("checkpoint_every",)
                                                if self.checkpoint_every is not None else ()):
            check_whole(getattr(self, name), name)
        if self.output != "auto" and not callable(self.output):
            raise ConfigError(f"output must be 'auto' or a function (outputs, inputs) -> "
                              f"tensor, got {self.output!r}")
        if self.output_loss not in ("auto", None, *OUTPUT_LOSSES):
            raise ConfigError(f"output_loss must be one of 'auto', {', '.join(OUTPUT_LOSSES)} "
                              f"or None, got {self.output_loss!r}")
        if self.hidden_loss not in HIDDEN_LOSSES:
            raise ConfigError(f"hidden_loss must be one of {', '.join(HIDDEN_LOSSES)}, got "
                              f"{self.hidden_loss!r}")
        if self.hidden not in (True, False, "auto"):
            raise ConfigError(f"hidden must be True, False or 'auto', got {self.hidden!r}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"schedule must be one of {', '.join(SCHEDULES)}, got "
                              f"{self.schedule!r}")
        check_number(self.warmup, "warmup", below=1, meaning=" (a fraction of the steps)")
        for name in ("lr", "output_weight", "hidden_weight", "weight_decay"):
            check_number(getattr(self, name), name)
        check_temperature(self.temperature)
        if self.time_limit is not None:
            check_number(self.time_limit, "time_limit", above=True,
                         wanted="a positive number of seconds")
        if self.parallel not in PARALLEL:
            raise ConfigError(f"parallel must be one of {', '.join(PARALLEL)}, got "
                              f"{self.parallel!r}")
        if self.lora_rank is not None:
            check_whole(self.lora_rank, "lora_rank")
            if self.checkpoint is not None or self.parallel == "fsdp":
                raise ConfigError("lora_rank trains adapters merged at the end: it takes "
                                  "neither checkpoint= nor parallel='fsdp' yet")
        if self.parallel == "fsdp" and self.checkpoint is not None:
            raise ConfigError("checkpoint= is not supported with parallel='fsdp' yet; use "
                              "parallel='ddp' to checkpoint and resume")
        if self.checkpoint is not None and Path(self.checkpoint).exists() and not Path(
                self.checkpoint).is_dir():
            raise ConfigError(f"checkpoint={str(self.checkpoint)!r} is a file; give a folder "
                              f"(the state is written there as {CHECKPOINT_FILE})")
        if self.checkpoint_every is not None and self.checkpoint is None:
            raise ConfigError("checkpoint_every needs checkpoint= (the folder to write to)")
        if self.plan is not None and not isinstance(self.plan, Plan):
            raise ConfigError(f"plan must be a pk.Plan, got {type(self.plan).__name__}")
        if self.output_loss is None and self.hidden is False and not self.layer_map:
            raise ConfigError("nothing to distil: output_loss=None and no hidden states")


@dataclass
class DistillResult:
    """What a distillation did. Losses are of the whole (global) batch, one per step."""

    losses: list[float] = field(default_factory=list)
    output_losses: list[float] = field(default_factory=list)
    hidden_losses: list[float] = field(default_factory=list)
    steps: int = 0  # steps done, counting those before a resume
    resumed_from: int = 0  # the step a checkpoint resumed from (0: started afresh)
    seconds: float = 0.0  # this call's training time
    processes: int = 1
    layer_map: dict[str, str] = field(default_factory=dict)  # student module → teacher module
    projections: dict[str, Projection] = field(default_factory=dict)
    stopped: str | None = None  # why training stopped before its last step (a NaN loss)

    def __str__(self) -> str:
        done = f"{self.steps - self.resumed_from} steps" + (
            f" (resumed at step {self.resumed_from})" if self.resumed_from else "")
        loss = (f", loss {self.losses[0]:.4g} -> {self.losses[-1]:.4g}" if self.losses else "")
        text = (f"distilled {done} in {self.seconds:.1f} s ({self.steps_per_second:.2f} "
                f"steps/s){loss}" + (f", {len(self.layer_map)} blocks matched"
                                     if self.layer_map else ""))
        return text + (f"; {self.stopped}" if self.stopped else "")

    @property
    def steps_per_second(self) -> float:
        return (self.steps - self.resumed_from) / self.seconds if self.seconds else 0.0

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["projections"] = sorted(self.projections)
        data["steps_per_second"] = self.steps_per_second
        return data
