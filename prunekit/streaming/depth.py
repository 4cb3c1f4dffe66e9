"""Depth, streamed: every block's influence or angular distance measured as the hidden states
pass through it, then the chosen blocks left out and the rest copied, renumbered."""


from __future__ import annotations

import time
from collections import deque
from typing import Callable

from ..adapters.hf.activations import HiddenStates
from ..adapters.hf.checkpoint import ShardWriter
from ..adapters.hf.skeleton import (
    release,
)
from ..candidates.layers import removal
from ..core.distributed import means_across
from ..importance.base import LayerContext
from ..importance.layers import LayerScore, choose_layers
from ..importance.registry import get_criterion
from ..methods import LayerPruning
from ..plan import Plan
from .blocks import BlockRecord, Stream, count_parameters, run_block


def stream_depth(method: LayerPruning, stream: Stream, writer: ShardWriter,
                  advance: Callable[[], None]) -> tuple[Plan, list[BlockRecord]]:
    stack_name, count = stream.stack_name, len(stream.stack)
    criterion = get_criterion(method.criterion, "layers", "LayerPruning").criterion
    reads = criterion.needs_data  # a criterion without data scores positions alone
    span = criterion.streamed_span(method.n) if reads else 1
    sums, samples = [0.0] * count, [0] * count
    window: deque[HiddenStates] = deque()  # the inputs of the last span blocks
    records, hidden = [], stream.hidden
    for index, block in enumerate(stream.stack):
        started = time.perf_counter()
        params = count_parameters(block)
        if reads:
            stream.load(index)
            if len(window) == span:
                window.popleft().discard()
            window.append(hidden)
            hidden = run_block(block, stream.inputs(index, hidden),
                               stream.budget.states(alive=span + 1))
            release(block)
            start = index - span + 1  # the window that ends at this block
            if start >= 0:
                for batch, x, y in zip(stream.batches, window[0], hidden):
                    total, n = criterion.span_distance(x, y, batch)
                    sums[start] += total
                    samples[start] += n
        records.append(BlockRecord(f"{stack_name}.{index}", time.perf_counter() - started,
                                   params, params))
        advance()
    for states in (*window, hidden):
        states.discard()
    names = [f"{stack_name}.{i}" for i in range(count)]
    if not reads:
        scores = criterion.score_layers(stream.model, names, [],
                                        LayerContext(stack_name, None, method.n))
    else:  # on several processes, over all of their calibration batches
        scores = means_across(sums, samples)
    ranked = [LayerScore(f"{stack_name}.{i}", scores[i], records[i].params_before, i)
              for i in range(count)]
    removed = choose_layers(ranked, method.n, criterion.window)
    plan = removal(removed, stack_name)
    plan.method = method.to_dict()
    kept = [i for i in range(count) if f"{stack_name}.{i}" not in removed]
    for new, old in enumerate(kept):
        tensors = stream.reader.under(f"{stack_name}.{old}.")
        writer.add(stream.reader.as_stored({f"{stack_name}.{new}.{key}": value
                                            for key, value in tensors.items()}))
    for name in removed:
        records[int(name.rsplit(".", 1)[1])].params_after = 0
    return plan, records
