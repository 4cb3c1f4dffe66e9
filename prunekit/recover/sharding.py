"""Fully sharded training (FSDP2, ``torch.distributed.fsdp.fully_shard``) for distillation.

Under DistributedDataParallel every process holds the student's weights, gradients and
AdamW state (four copies of the weights). Sharded, each process holds 1/N of the last three,
and gathers a block's weights only while it runs. The student the user passed stays a plain
module: a copy is sharded and trained, and its weights are gathered back into the student at
the end, so what comes back saves and prunes like any model.
"""

from __future__ import annotations

from torch import nn

from ..surgery.stacks import find_block_stack
from .losses import Projection


def shard(objective: nn.Module, student: nn.Module) -> None:
    """Shard each block of the student's layer stack (one all-gather per block, so only one
    block is whole at a time), then everything else as one unit."""
    from torch.distributed.fsdp import fully_shard

    stack = find_block_stack(student)
    if stack is not None:
        for block in student.get_submodule(stack):
            fully_shard(block)
    fully_shard(objective)


def gather_into(student: nn.Module, objective: nn.Module) -> dict[str, Projection]:
    """Load the sharded copy's whole weights (``objective.student``) into the plain
    ``student``, on every process; the projections trained beside it, as plain modules."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    weights = get_model_state_dict(objective, options=StateDictOptions(full_state_dict=True))
    student.load_state_dict({name.removeprefix("student."): value
                             for name, value in weights.items() if name.startswith("student.")})
    projections = {}
    for name, sharded in objective.projections.items():
        projection = Projection(sharded.linear.in_features, sharded.linear.out_features)
        projection.linear.weight.data.copy_(weights[f"projections.{name}.linear.weight"])
        projections[name] = projection
    return projections
