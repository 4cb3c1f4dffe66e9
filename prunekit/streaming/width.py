"""Width, streamed: each block pruned with ``pk.prune`` on its own calibration inputs, and
model-wide ranking by a first pass that scores every block."""


from __future__ import annotations

import dataclasses
import time
from types import SimpleNamespace
from typing import Callable

from ..adapters.hf.checkpoint import ShardWriter
from ..adapters.hf.skeleton import (
    release,
)
from ..api import prune
from ..errors import ConfigError, PlanError, PruneError, TraceError
from ..importance.registry import get_criterion
from ..methods.base import PruningMethod
from ..methods.groups import GroupPruning
from ..plan import Plan
from ..selection import channels as selection
from .blocks import BlockRecord, Stream, count_parameters, run_block


def stream_width(methods: list[PruningMethod], stream: Stream, writer: ShardWriter,
                  advance: Callable[[], None]) -> tuple[Plan, list[BlockRecord]]:
    steps = [m.to_dict() for m in methods]
    plan = Plan(method=steps[0] if len(steps) == 1 else {"steps": steps})
    # model-wide ranking: a first pass scores every block, the ratios it gives each block's
    # group are then applied block by block as usual
    ratios = (global_ratios_of_blocks(methods[0], stream) if getattr(methods[0], "global_ranking", False)
              else None)
    records = []
    hidden = stream.hidden
    for index, block in enumerate(stream.stack):
        started = time.perf_counter()
        name = f"{stream.stack_name}.{index}"
        stream.load(index)
        before = count_parameters(block)
        inputs = stream.inputs(index, hidden)
        # the unpruned outputs feed the next block
        outputs = run_block(block, inputs, stream.budget.states(alive=2))
        block_plan, left = Plan(), ""
        for method in methods:  # each on the block as the one before left it
            if ratios is not None:
                if not ratios[index]:  # nothing of this block's group ranks low enough
                    continue
                method = dataclasses.replace(method, ratio=ratios[index], global_ranking=False)
            try:
                step = prune(block, inputs[0], method, data=inputs).plan
            except PruneError as error:
                if isinstance(error, (ConfigError, PlanError, TraceError)):
                    raise  # about the block's inputs or its trace, not what it holds
                # nothing of the method's in this block (LFM2's convolution blocks have no
                # heads), or nothing that passes its check: left as it is, as pk.prune on
                # the whole model leaves such a block
                left = left or str(error)
                continue
            block_plan = step if block_plan.is_empty else block_plan.then(step)
        hidden.discard()
        hidden = outputs
        merge_block_plan(plan, block_plan, name)
        writer.add(stream.as_stored(block, index))
        records.append(BlockRecord(name, time.perf_counter() - started, before, count_parameters(block),
                                   "" if block_plan.tensors else left))
        release(block)
        advance()
    hidden.discard()
    refused = [r for r in records if r.left]
    if not plan.tensors and refused:  # as pk.prune refuses a model with nothing to prune
        raise PruneError(f"no block could be pruned, so nothing was written "
                         f"({refused[0].name}: {refused[0].left})")
    return plan, records


def global_ratios_of_blocks(method: GroupPruning, stream: Stream) -> list[float]:
    """The ratio each block's group loses when ``method`` ranks every block's channels
    together (``selection.global_ratios``, as ``pk.prune`` ranks the loaded model): a pass
    over the blocks that scores each one's group on its calibration inputs and prunes
    nothing. A block with several groups (or none) is refused: its ratio could not be given
    to ``pk.prune`` alone."""
    sizes, scores = [], {}
    hidden = stream.hidden
    for index, block in enumerate(stream.stack):
        stream.load(index)
        inputs = stream.inputs(index, hidden)
        outputs = run_block(block, inputs, stream.budget.states(alive=3))
        graph, groups = method.traced_candidates(block, inputs[0])
        if len(groups) != 1:
            raise PruneError(f"streamed {type(method).__name__}(global_ranking=True): block "
                             f"{index} has {len(groups)} groups to prune, not one; prune it in "
                             f"memory with pk.prune")
        scores[index] = method.score(graph, groups, inputs)[groups[0].axis]
        sizes.append(groups[0].size)
        del graph, groups
        if hidden is not stream.hidden:  # the first block's inputs serve the second pass
            hidden.discard()
        hidden = outputs
        release(block)
    if hidden is not stream.hidden:
        hidden.discard()
    stand_ins = [SimpleNamespace(axis=index, size=size) for index, size in enumerate(sizes)]
    comparable = get_criterion(method.criterion, method.target, "").comparable
    ratios = selection.global_ratios(stand_ins, scores, method.ratio, method.max_ratio,
                                     comparable)
    return [ratios[index] for index in range(len(sizes))]


def merge_block_plan(plan: Plan, block_plan: Plan, prefix: str) -> None:
    """Add a block's plan to the model's, its names prefixed with the block's."""
    def named(name: str) -> str:
        return f"{prefix}.{name}" if name else prefix

    plan.tensors.update({named(n): dims for n, dims in block_plan.tensors.items()})
    plan.shapes.update({named(n): shape for n, shape in block_plan.shapes.items()})
    plan.attributes.update({named(n): values for n, values in block_plan.attributes.items()})
    plan.groups.extend({**group, "block": prefix} for group in block_plan.groups)
