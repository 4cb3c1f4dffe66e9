"""Streamed pruning: a Hugging Face decoder pruned from its folder on disk with one block's
weights in memory at a time, for models larger than memory.

How it goes:

1. The model is built from its config with its parameters on the meta device (shapes, no
   memory); the parts before the first block (the token embeddings) get their weights, which
   are dropped again once the calibration has passed them.
2. The calibration batches run up to the first block, whose inputs are kept: hidden states
   and the keyword arguments the model hands its blocks (position embeddings, masks), which
   are recorded for every block, since a model may give different blocks different masks.
3. Each block in turn is read from the checkpoint, run on the cached hidden states (its
   outputs, unpruned, become the next block's inputs), and then:
   - width (``FilterPruning``/``ChannelPruning``: MLP neurons; ``HeadPruning``: attention
     heads, grouped-query aware): pruned with ``pk.prune`` on the block itself, so the
     engine's tracing decides what goes together and the masked-versus-pruned check runs on
     every block; the pruned block is written to the new checkpoint at once;
   - depth (``LayerPruning``): its block influence (1 − cosine between its input and output)
     or angular distance is measured; once every block is scored, the chosen blocks are left
     out and the rest are copied, renumbered.
   Hidden size (``HiddenPruning``) is shared by every block, so it is decided once for all
   of them, from the weights (read tensor by tensor) or from the activations at every place
   it is read (the blocks streamed as above, nothing pruned on the way), and then written
   tensor by tensor (``hidden.py``).
4. The rest of the checkpoint (embeddings, final norm, output layer) is copied, the config is
   updated to the pruned sizes (uniform sizes keep a config ``from_pretrained`` loads; where
   no config can describe them, as when the head size is derived from the hidden size, the
   original config stays and ``pk.load`` rebuilds the model from the plan), and the tokenizer
   files and the plan are written beside the weights. The folder appears only when
   everything succeeded.

Scores are those of the unpruned model, as ``pk.prune`` on the loaded model computes them, so
with the same criterion and data the plan and weights are the same. Launched by ``torchrun``,
each process streams its own share of the calibration batches; the statistics are summed over
the processes (``prunekit.core.distributed``), so all derive the same plan, and the first process
writes the folder.
"""

from __future__ import annotations

import copy
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch
import transformers

from ..adapters.hf.activations import SpillFolder
from ..adapters.hf.checkpoint import CheckpointReader, ShardWriter, copy_other_files
from ..adapters.hf.conversion import loaded_view
from ..adapters.hf.skeleton import (
    empty_model,
)
from ..core.arguments import check_whole
from ..core.distributed import barrier, is_main_process
from ..core.progress import ProgressOption, Reporter, finish, reporter
from ..errors import ConfigError
from ..export import saving as io
from ..methods.base import PruningMethod
from ..plan import Plan
from ..surgery.stacks import find_block_stack, remove_blocks
from .blocks import (
    BlockRecord,
    Budget,
    Skeleton,
    Stream,
    block_progress,
    calibration_batches,
    copy_outside,
    count_parameters,
    load_outside,
    record_block_inputs,
    refuse_padding_for,
    release_outside,
)
from .depth import stream_depth
from .hidden import (
    HIDDEN_CRITERIA,
    narrow_skeleton,
    plan_hidden,
    write_sliced,
)
from .width import stream_width


@dataclass
class StreamedResult:
    """What ``prune_streamed`` wrote and how long each block took."""

    folder: Path
    plan: Plan
    params_before: int
    params_after: int
    blocks: list[BlockRecord] = field(default_factory=list)
    config_matches: bool | None = None  # the written config describes the pruned shapes
    seconds: float = 0.0
    spilled_bytes: int = 0  # calibration hidden states written to disk, all blocks together

    def __str__(self) -> str:
        change = 1 - self.params_after / max(self.params_before, 1)
        config = ("config updated: from_pretrained loads it" if self.config_matches
                  else "no config can describe the pruned sizes, so the folder keeps the "
                       "original one: load it with pk.load(a model built from it, folder)")
        streamed = (f"{len(self.blocks)} blocks streamed" if self.blocks
                    else "streamed tensor by tensor")
        spilled = (f"; {self.spilled_bytes / 2**30:.2f} GB of hidden states spilled to disk"
                   if self.spilled_bytes else "")
        left = [b for b in self.blocks if b.left]
        whole = (f"; {len(left)} block{'s' if len(left) > 1 else ''} left as "
                 f"{'they were' if len(left) > 1 else 'it was'} ({left[0].name}: "
                 f"{left[0].left})" if left else "")
        return (f"params {self.params_before:,} -> {self.params_after:,} (-{change:.1%}); "
                f"{streamed} in {self.seconds:.1f} s{spilled}{whole}; {config}; written to "
                f"{self.folder}")


def check_streamable(method: PruningMethod) -> str:
    """``"width"``, ``"depth"`` or ``"hidden"``, or a ``ConfigError`` saying what streaming
    cannot do: the method says (``PruningMethod.streams`` and ``streamed_stage``); the hidden
    size's criteria are those ``prunekit.streaming.hidden`` computes."""
    # anything whose own class does not say streams = True gets the base class's refusal
    streams = isinstance(method, PruningMethod) and type(method).__dict__.get("streams")
    stage = method.streamed_stage() if streams else PruningMethod.streamed_stage(method)
    if stage == "hidden" and method.criterion not in HIDDEN_CRITERIA:
        raise ConfigError(f"streamed HiddenPruning.criterion {method.criterion!r} needs "
                          f"the whole model in memory (its loss, or every channel compared "
                          f"at once); choose one of {sorted(HIDDEN_CRITERIA)}")
    return stage


def prune_streamed(source: str | Path, out: str | Path,
                   method: PruningMethod | Sequence[PruningMethod],
                   data: Iterable | None = None, *, dtype: torch.dtype | None = None,
                   progress: ProgressOption = False, max_shard_bytes: int = 512 << 20,
                   hidden_memory_bytes: int = 2 << 30,
                   spill_dir: str | Path | None = None) -> StreamedResult:
    """Prune the Hugging Face decoder in folder ``source`` into folder ``out``, holding one
    block's weights in memory at a time (see the module docstring).

    Args:
        source: a folder with ``config.json`` and ``*.safetensors`` (``save_pretrained``).
        out: the folder to write; replaced only when everything succeeded.
        method: ``FilterPruning``/``ChannelPruning`` (MLP neurons, ``ratio`` of each block,
            or model-wide with ``global_ranking=True``), ``HeadPruning`` (heads, likewise),
            ``HiddenPruning`` (the hidden size, by weights or by activations) or
            ``LayerPruning`` (``n`` blocks by ``"influence"``, ``"angular"`` or ``"last"``);
            or a list of width methods, applied to each block in turn (heads, then neurons)
            in one pass.
        data: calibration batches, each the model's keyword inputs (``input_ids``,
            ``attention_mask``) or an ``(inputs, targets)`` pair. Without it, one batch of
            32 tokens (enough for the weight criteria and the per-block check).
        dtype: compute in this dtype (each block is cast when read and written back in the
            checkpoint's dtype): ``torch.float32`` runs a bfloat16 checkpoint several times
            faster on a CPU without bfloat16 arithmetic, for twice a block's memory. By
            default the checkpoint's own dtype, as ``pk.prune`` on the loaded model computes.
        progress: ``True`` shows each block (or tensor) and the time left on stderr; a
            callable receives a ``pk.Step`` as each is done.
        max_shard_bytes: the largest shard written; a shard is held in memory until it is
            full, so this adds to the memory the stream needs.
        hidden_memory_bytes: the calibration hidden states kept in memory between blocks,
            at most; the rest are written to a temporary folder in ``spill_dir`` (default:
            the system's) and read back memory-mapped, so a large calibration set does not
            need the memory. The result says how much was spilled.
    """
    started = time.perf_counter()
    methods = [method] if isinstance(method, PruningMethod) else list(method)
    kind = _check_arguments(methods, hidden_memory_bytes, spill_dir)
    skeleton = _open(source, Path(out))
    report = reporter(progress)
    params_before = count_parameters(skeleton.model)  # tied tensors once, as pk.prune does
    spill = SpillFolder(spill_dir)  # (nothing is made there unless something is spilled)
    try:
        budget = Budget(hidden_memory_bytes, spill)
        if kind == "hidden":  # one decision for every block, before anything is written
            prepared = plan_hidden(methods[0], skeleton, data, dtype, budget, report)
        else:
            prepared = _record_inputs(methods, skeleton, data, dtype, budget)

        def write(folder: Path) -> StreamedResult:
            plan, records, params_after, config_matches = _write(
                folder, skeleton, methods, prepared, params_before, max_shard_bytes, report)
            return StreamedResult(Path(out), plan, params_before, params_after, records,
                                  config_matches, spilled_bytes=spill.bytes_written)

        holder: list[StreamedResult] = []
        if is_main_process():
            io.replace_folder(Path(out), lambda folder: holder.append(write(folder)))
        else:  # under torchrun every process computes the same result; the first writes it
            with tempfile.TemporaryDirectory(prefix="prunekit-stream-") as scratch:
                holder.append(write(Path(scratch)))
    finally:
        spill.close()
        finish(report)
    barrier()  # no process returns before the folder is complete
    result = holder[0]
    result.seconds = time.perf_counter() - started
    return result


def _check_arguments(methods: list, hidden_memory_bytes: int, spill_dir: str | Path | None
                     ) -> str:
    """The stage the methods stream as (``"width"``, ``"depth"`` or ``"hidden"``), or a
    ``ConfigError`` for what cannot be streamed, before anything is read."""
    kinds = [check_streamable(m) for m in methods]
    alone = {"depth": "layer removal", "hidden": "hidden-size pruning"}
    if not methods or (len(methods) > 1 and set(kinds) & set(alone)):
        what = " and ".join(alone[k] for k in alone if k in kinds) or "it"
        raise ConfigError(f"method: give one LayerPruning or HiddenPruning, or one or more "
                          f"width methods (FilterPruning, ChannelPruning, HeadPruning); stream "
                          f"{what} in a call of its own")
    if len(methods) > 1 and any(getattr(m, "global_ranking", False) for m in methods):
        raise ConfigError("method: global_ranking ranks one method's channels model-wide, "
                          "in a pass of its own; stream one width method with it, or none")
    check_whole(hidden_memory_bytes, "hidden_memory_bytes", minimum=0,
                meaning=" (the calibration hidden states kept in memory, in bytes; 0 spills "
                        "them all)")
    if spill_dir is not None and not Path(spill_dir).is_dir():
        raise ConfigError(f"spill_dir {str(spill_dir)!r} is not a folder; give an existing "
                          f"folder with room for the hidden states, or leave it out")
    return kinds[0]


def _open(source: str | Path, out: Path) -> Skeleton:
    """The model in ``source`` built without weights, and the checkpoint read as
    ``from_pretrained`` converts it."""
    reader = CheckpointReader(source)
    if out.resolve() == reader.folder.resolve():
        raise ConfigError(f"out {str(out)!r}: the pruned model cannot replace the folder it is "
                          f"read from while it is read; write it elsewhere")
    config = transformers.AutoConfig.from_pretrained(reader.folder)
    model = empty_model(copy.deepcopy(config))  # the original stays, for sizes no config fits
    reader = loaded_view(reader, model)  # read as from_pretrained converts it: fused experts
    stack_name = find_block_stack(model)
    if stack_name is None:
        raise ConfigError(f"{reader.folder}: no stack of decoder blocks found in "
                          f"{type(model).__name__}; streamed pruning prunes block by block")
    return Skeleton(model, config, reader, stack_name)


def _record_inputs(methods: list, skeleton: Skeleton, data: Iterable | None,
                   dtype: torch.dtype | None, budget: Budget) -> Stream:
    """Every block's calibration inputs, recorded as the batches pass the embeddings."""
    batches = calibration_batches(data, skeleton.config)
    refuse_padding_for(methods, batches)
    model, reader, stack_name = skeleton.model, skeleton.reader, skeleton.stack_name
    load_outside(model, reader, stack_name)
    stream = record_block_inputs(model, stack_name, reader, batches, dtype, budget)
    release_outside(model, stack_name)  # the blocks read the cached hidden states now
    return stream


def _write(folder: Path, skeleton: Skeleton, methods: list, prepared: Plan | Stream,
           params_before: int, max_shard_bytes: int, progress: Reporter
           ) -> tuple[Plan, list[BlockRecord], int, bool]:
    """The pruned checkpoint, config, other files and plan, written into ``folder``: the
    hidden size's plan applied tensor by tensor, or the blocks streamed; the plan, each
    block's record, the parameters left and whether the config describes them."""
    model, reader = skeleton.model, skeleton.reader
    writer = ShardWriter(folder, max_shard_bytes)
    if isinstance(prepared, Plan):
        plan, records = prepared, []
        with block_progress(progress, len(reader.names()), "tensors", "hidden") as advance:
            write_sliced(reader, plan, writer, advance)
        narrow_skeleton(model, plan)
        params_after = count_parameters(model)
    else:
        kind = "width" if methods[0].streamed_stage() == "width" else "depth"
        with block_progress(progress, len(skeleton.stack), "blocks", kind) as advance:
            plan, records = _stream_blocks(kind, methods, prepared, writer, advance)
        copy_outside(reader, skeleton.stack_name, writer)
        params_after = params_before - sum(r.params_before - r.params_after for r in records)
    # the layer count may have another name (Whisper's decoder_layers): the method that
    # changed the model updates the config
    config_matches = bool(methods[-1].update_config(model))
    writer.close()
    # where no config describes the result, the original one: pk.load replays the plan
    (model.config if config_matches else skeleton.config).save_pretrained(folder)
    copy_other_files(reader, folder)
    plan.save(folder / io.PLAN_FILE)
    return plan, records, params_after, config_matches


def _stream_blocks(kind: str, methods: list[PruningMethod], stream: Stream,
                   writer: ShardWriter, advance: Callable[[], None]
                   ) -> tuple[Plan, list[BlockRecord]]:
    """Width or depth, block by block; the weightless model takes the pruned shapes."""
    if kind == "width":
        return stream_width(methods, stream, writer, advance)
    plan, records = stream_depth(methods[0], stream, writer, advance)
    remove_blocks(stream.model, stream.stack, {name.rsplit(".", 1)[1] for name in plan.layers})
    return plan, records
