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
   tensor by tensor (``streamed_hidden.py``).
4. The rest of the checkpoint (embeddings, final norm, output layer) is copied, the config is
   updated to the pruned sizes (uniform sizes keep a config ``from_pretrained`` loads; where
   no config can describe them, as when the head size is derived from the hidden size, the
   original config stays and ``pk.load`` rebuilds the model from the plan), and the tokenizer
   files and the plan are written beside the weights. The folder appears only when
   everything succeeded.

Scores are those of the unpruned model, as ``pk.prune`` on the loaded model computes them, so
with the same criterion and data the plan and weights are the same. Launched by ``torchrun``,
each process streams its own share of the calibration batches; the statistics are summed over
the processes (``prunekit.distributed``), so all derive the same plan, and the first process
writes the folder.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import tempfile
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
import transformers
from torch import nn

from .. import io
from ..api import prune
from ..batches import split_batch
from ..calls import call_model
from ..distance import first_tensor, summed_distance, token_weights
from ..distributed import barrier, is_main_process, means_across
from ..errors import ConfigError, PlanError, PruneError, TraceError
from ..importance.registry import get_criterion
from ..layers import choose_layers, removal
from ..layers.criteria import LayerScore
from ..methods import ChannelPruning, FilterPruning, HeadPruning, HiddenPruning, LayerPruning
from ..methods.base import PruningMethod
from ..methods.groups import GroupPruning
from ..plan import Plan
from ..planning import selection
from ..surgery.stacks import find_block_stack, remove_blocks
from .activations import HiddenStates, SpillFolder
from .checkpoint import CheckpointReader, ShardWriter, copy_other_files
from .conversion import loaded_view
from .memory import return_freed_memory
from .skeleton import empty_model, load_module, output_embeddings, parameter_places, release
from .streamed_hidden import (
    HIDDEN_CRITERIA,
    WEIGHT_CRITERIA,
    HiddenStructure,
    SiteStatistics,
    StopAfterSite,
    hidden_structure,
    narrow_skeleton,
    plan_from_scores,
    weight_scores,
    write_sliced,
)

# criteria a block alone computes as the whole model does: weights, the activations of each
# neuron, and the heads' "reconstruction" (its output projection's inputs and outputs); the
# heads' "output" and "entropy" and the gradient criteria read the whole model's output,
# attention probabilities or loss
WIDTH_CRITERIA = {"l1", "l2", "fpgm", "random", "apoz", "mean_activation", "reconstruction"}
DEPTH_CRITERIA = {"influence", "block_influence", "angular", "last"}


@dataclass
class BlockRecord:
    """One block as the stream went through it."""

    name: str
    seconds: float
    params_before: int
    params_after: int
    left: str = ""  # why a width method left the block as it was (it had nothing to prune)


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
                       "original one: load it with pk.load(folder, a model built from it)")
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


class _StopForward(Exception):
    """Raised by a recorder to end a forward pass once the blocks' inputs are known."""


class _StandIn(nn.Module):
    """A module in a block's place. What the model's forward reads from its blocks besides
    calling them (a layer's attention type, its block type) comes from the block it stands
    for, which it does not hold as a submodule."""

    def __init__(self, block: nn.Module):
        super().__init__()
        object.__setattr__(self, "block", block)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.block, name)


class _Recorder(_StandIn):
    """Stands in for a block: records what the model hands it and passes the hidden states
    on unchanged, in the block's own output structure."""

    def __init__(self, block: nn.Module, signature: inspect.Signature, calls: list,
                 template: Any, last: bool):
        super().__init__(block)
        self.signature, self.calls, self.template, self.last = signature, calls, template, last

    def forward(self, *args, **kwargs):
        hidden, rest = _as_keywords(self.signature, args, kwargs)
        # the hidden states passing through a stand-in are the first block's again: only
        # the first stand-in keeps them, so one batch's are in memory at a time
        self.calls.append((hidden if self.template is None else None, rest))
        if self.last or self.template is None:
            raise _StopForward
        return _like(self.template, hidden)


def _as_keywords(signature: inspect.Signature, args: tuple, kwargs: dict
                 ) -> tuple[torch.Tensor, dict]:
    """A block call's hidden states (its forward's first parameter) and everything else it
    was given, named as its forward names them, so it can be called again by keywords."""
    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError as error:
        raise PruneError(f"streamed pruning: the model calls its blocks with arguments their "
                         f"forward does not take ({error}); prune it in memory with "
                         f"pk.prune") from None
    named: dict[str, Any] = {}
    for name, value in bound.arguments.items():
        kind = signature.parameters[name].kind
        if kind is inspect.Parameter.VAR_KEYWORD:
            named.update(value)
        elif kind is inspect.Parameter.VAR_POSITIONAL:
            if value:
                raise PruneError("streamed pruning: the model passes its blocks unnamed extra "
                                 "arguments; prune it in memory with pk.prune")
        else:
            named[name] = value
    return named.pop(next(iter(signature.parameters))), named


def _like(template: Any, hidden: torch.Tensor) -> Any:
    """``hidden`` in the structure a block returns (a tensor, or a tuple led by it)."""
    if isinstance(template, torch.Tensor):
        return hidden
    if isinstance(template, (tuple, list)):
        return type(template)([hidden, *template[1:]])
    raise PruneError(f"streamed pruning: a block returns {type(template).__name__}, not the "
                     f"hidden states or a tuple or list led by them; prune it in memory with "
                     f"pk.prune")


def check_streamable(method: PruningMethod) -> str:
    """``"width"`` or ``"depth"``, or a ``ConfigError`` saying what streaming cannot do."""
    name = type(method).__name__
    if isinstance(method, LayerPruning):
        if method.flops_target is not None:
            raise ConfigError("streamed LayerPruning takes n (a number of layers), not "
                              "flops_target")
        if method.criterion not in DEPTH_CRITERIA:
            raise ConfigError(f"streamed LayerPruning.criterion {method.criterion!r} needs the "
                              f"whole model's output; choose one of {sorted(DEPTH_CRITERIA)}")
        return "depth"
    if isinstance(method, HiddenPruning):
        if method.criterion not in HIDDEN_CRITERIA:
            raise ConfigError(f"streamed HiddenPruning.criterion {method.criterion!r} needs "
                              f"the whole model in memory (its loss, or every channel compared "
                              f"at once); choose one of {sorted(HIDDEN_CRITERIA)}")
        if method.budget() is not None or method.overrides:
            raise ConfigError("streamed HiddenPruning removes ratio= of the hidden size; "
                              "budgets and overrides need the model in memory (pk.prune)")
        return "hidden"
    if type(method) in (FilterPruning, ChannelPruning, HeadPruning):
        if getattr(method, "reconstruct", False):
            raise ConfigError(f"streamed {name}(reconstruct=True): the re-fit reads each "
                              f"layer's inputs in the pruned model, blocks above it pruned, "
                              f"which a stream of unpruned hidden states does not give; "
                              f"prune in memory with pk.prune")
        if method.criterion not in WIDTH_CRITERIA:
            raise ConfigError(f"streamed {name}.criterion {method.criterion!r} reads the "
                              f"whole model's loss or outputs, which one block does not "
                              f"give; choose one of "
                              f"{sorted(WIDTH_CRITERIA)}")
        budget = method.budget()
        if budget is not None or method.overrides:
            raise ConfigError(f"streamed {name} removes ratio= of the heads or neurons, of "
                              f"every block or (global_ranking=True) model-wide; budgets "
                              f"and overrides need every block at once (prune in memory with "
                              f"pk.prune)")
        return "width"
    raise ConfigError(f"streamed pruning takes FilterPruning or ChannelPruning (MLP neurons), "
                      f"HeadPruning, HiddenPruning or LayerPruning, not {name}")


def prune_streamed(source: str | Path, out: str | Path,
                   method: PruningMethod | Sequence[PruningMethod],
                   data: Iterable | None = None, *, dtype: torch.dtype | None = None,
                   progress: bool = False, max_shard_bytes: int = 512 << 20,
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
        progress: show a progress bar per block, with the time left.
        max_shard_bytes: the largest shard written; a shard is held in memory until it is
            full, so this adds to the memory the stream needs.
        hidden_memory_bytes: the calibration hidden states kept in memory between blocks,
            at most; the rest are written to a temporary folder in ``spill_dir`` (default:
            the system's) and read back memory-mapped, so a large calibration set does not
            need the memory. The result says how much was spilled.
    """
    started = time.perf_counter()
    methods = [method] if isinstance(method, PruningMethod) else list(method)
    kinds = [check_streamable(m) for m in methods]
    alone = {"depth": "layer removal", "hidden": "hidden-size pruning"}
    if not methods or (len(methods) > 1 and set(kinds) & set(alone)):
        what = " and ".join(alone[k] for k in alone if k in kinds) or "it"
        raise ConfigError(f"method: give one LayerPruning or HiddenPruning, or one or more "
                          f"width methods (FilterPruning, ChannelPruning, HeadPruning); stream "
                          f"{what} in a call of its own")
    kind = kinds[0]
    if len(methods) > 1 and any(getattr(m, "global_ranking", False) for m in methods):
        raise ConfigError("method: global_ranking ranks one method's channels model-wide, "
                          "in a pass of its own; stream one width method with it, or none")
    if (isinstance(hidden_memory_bytes, bool) or not isinstance(hidden_memory_bytes, int)
            or hidden_memory_bytes < 0):
        raise ConfigError(f"hidden_memory_bytes is the calibration hidden states kept in "
                          f"memory, in bytes (0 or more; 0 spills them all), got "
                          f"{hidden_memory_bytes!r}")
    if spill_dir is not None and not Path(spill_dir).is_dir():
        raise ConfigError(f"spill_dir {str(spill_dir)!r} is not a folder; give an existing "
                          f"folder with room for the hidden states, or leave it out")
    reader = CheckpointReader(source)
    out = Path(out)
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
    stack = model.get_submodule(stack_name)
    params_before = _count(model)  # tied tensors once, as pk.prune counts them
    spill = SpillFolder(spill_dir)  # (nothing is made there unless something is spilled)
    try:
        if kind == "hidden":  # one decision for every block, before anything is written
            hidden_plan = _plan_hidden(methods[0], model, config, reader, stack_name, data,
                                       dtype, _Budget(hidden_memory_bytes, spill),
                                       progress)
        else:
            batches = _calibration(data, config)
            _refuse_padding_for(methods, batches)
            _load_outside(model, reader, stack_name)
            stream = _block_inputs(model, stack_name, reader, batches, dtype,
                                   _Budget(hidden_memory_bytes, spill))
            _release_outside(model, stack_name)  # the blocks read the cached hidden states now

        def write(folder: Path) -> StreamedResult:
            writer = ShardWriter(folder, max_shard_bytes)
            if kind == "hidden":
                plan, records = hidden_plan, []
                with _progress(progress, len(reader.names()), "tensors", kind) as advance:
                    write_sliced(reader, plan, writer, advance)
                narrow_skeleton(model, plan)
                params_after = _count(model)
            else:
                with _progress(progress, len(stack), "blocks", kind) as advance:
                    plan, records = _stream_blocks(kind, methods, stream, writer, advance)
                _copy_outside(reader, stack_name, writer)
                params_after = params_before - sum(r.params_before - r.params_after
                                                   for r in records)
            # the layer count may have another name (Whisper's decoder_layers): the method
            # that changed the model updates the config
            config_matches = bool(methods[-1].update_config(model))
            writer.close()
            # where no config describes the result, the original one: pk.load replays the plan
            (model.config if config_matches else config).save_pretrained(folder)
            copy_other_files(reader, folder)
            plan.save(folder / io.PLAN_FILE)
            return StreamedResult(out, plan, params_before, params_after, records,
                                  config_matches, spilled_bytes=spill.bytes_written)

        holder: list[StreamedResult] = []
        if is_main_process():
            io.replace_folder(out, lambda folder: holder.append(write(folder)))
        else:  # under torchrun every process computes the same result; the first writes it
            with tempfile.TemporaryDirectory(prefix="prunekit-stream-") as scratch:
                holder.append(write(Path(scratch)))
    finally:
        spill.close()
    barrier()  # no process returns before the folder is complete
    result = holder[0]
    result.seconds = time.perf_counter() - started
    return result


def _plan_hidden(method: HiddenPruning, model: nn.Module, config: Any,
                 reader: CheckpointReader, stack_name: str, data: Iterable | None,
                 dtype: torch.dtype | None, budget: _Budget, progress: bool) -> Plan:
    """The hidden size's plan: scores from the weights (read tensor by tensor), or, for the
    activation criteria, from every site's activations on the calibration batches, the
    blocks streamed one at a time (Minitron's scores)."""
    blocks = len(model.get_submodule(stack_name))
    structure = hidden_structure(method, config, reader, stack_name, blocks)
    if method.criterion in WEIGHT_CRITERIA:
        scores = weight_scores(method, reader, structure)
    else:
        statistics = SiteStatistics(method.criterion)
        batches = _calibration(data, config)
        with _progress(progress, blocks, "blocks", "hidden") as advance:
            _read_hidden_activations(statistics, structure, model, stack_name, reader,
                                     batches, dtype, budget, advance)
        scores = statistics.scores(structure.sites())
    plan = plan_from_scores(method, structure, scores, reader)
    del structure
    return_freed_memory()
    return plan


def _read_hidden_activations(statistics: SiteStatistics, structure: HiddenStructure,
                             model: nn.Module, stack_name: str, reader: CheckpointReader,
                             batches: list[dict], dtype: torch.dtype | None, budget: _Budget,
                             advance: Callable[[], None]) -> None:
    """Each site's activations on every batch: the sites before the blocks as the batches
    pass the embeddings, each block's as it runs (one block in memory at a time), and those
    after the blocks (the final norm) in a last pass that hands the model the last block's
    outputs."""
    modules = dict(model.named_modules())
    _load_outside(model, reader, stack_name)
    stack = model.get_submodule(stack_name)
    signature = inspect.signature(stack[0].forward)
    with statistics.reading(modules, structure.before) as next_batch:
        for batch in batches:
            next_batch()
            with _standing_in(stack, {0: _Recorder(stack[0], signature, [], None, last=True)}):
                _run_until_stop(model, batch)
    stream = _block_inputs(model, stack_name, reader, batches, dtype, budget)
    _release_outside(model, stack_name)
    hidden = stream.hidden
    for index, block in enumerate(stream.stack):
        stream.load(index)
        outputs = budget.states(alive=2)
        with statistics.reading(modules, structure.block_sites(index)) as next_batch, \
                torch.no_grad():
            for x in stream.inputs(index, hidden):
                next_batch()
                outputs.append(first_tensor(block(**x)))
        hidden.discard()
        hidden = outputs
        release(block)
        advance()
    if structure.after:
        _load_outside(model, reader, stack_name)
        replay = _Replay(stack[len(stack) - 1], stream.template, hidden)
        passing = {i: _Recorder(stack[i], signature, [], stream.template, last=False)
                   for i in range(len(stack) - 1)}
        with _standing_in(stack, {**passing, len(stack) - 1: replay}), \
                statistics.reading(modules, structure.after,
                                   stop_after=structure.after[-1]) as next_batch:
            for replay.batch, batch in enumerate(batches):
                next_batch()
                _run_until_stop(model, batch, StopAfterSite,
                                "streamed HiddenPruning: the model's forward pass did not "
                                "reach the module after its blocks that the trace found")
        _release_outside(model, stack_name)
    hidden.discard()


class _Replay(_StandIn):
    """Stands in for the last block: returns its recorded outputs for batch ``batch``."""

    def __init__(self, block: nn.Module, template: Any, outputs: HiddenStates):
        super().__init__(block)
        self.template, self.outputs, self.batch = template, outputs, 0

    def forward(self, *args, **kwargs):
        return _like(self.template, self.outputs[self.batch])


@contextmanager
def _standing_in(stack: nn.ModuleList, stand_ins: dict[int, nn.Module]) -> Iterator[None]:
    """The stack's blocks ``stand_ins`` names replaced while inside, then put back."""
    blocks = {index: stack[index] for index in stand_ins}
    try:
        for index, stand_in in stand_ins.items():
            stack[index] = stand_in
        yield
    finally:
        for index, block in blocks.items():
            stack[index] = block


def _stream_blocks(kind: str, methods: list[PruningMethod], stream: _Stream,
                   writer: ShardWriter, advance: Callable[[], None]
                   ) -> tuple[Plan, list[BlockRecord]]:
    """Width or depth, block by block; the weightless model takes the pruned shapes."""
    if kind == "width":
        return _stream_width(methods, stream, writer, advance)
    plan, records = _stream_depth(methods[0], stream, writer, advance)
    remove_blocks(stream.model, stream.stack, {name.rsplit(".", 1)[1] for name in plan.layers})
    return plan, records


def _copy_outside(reader: CheckpointReader, stack_name: str, writer: ShardWriter) -> None:
    """The tensors outside the blocks (embeddings, final norm, output layer), as they were;
    each large one written before the next is read."""
    for name in reader.names():
        if not name.startswith(stack_name + "."):
            writer.reserve(reader.nbytes(name))
            writer.add(reader.as_stored({name: reader.tensor(name)}))


def _calibration(data: Iterable | None, config: Any) -> list[dict]:
    if data is None:
        generator = torch.Generator().manual_seed(0)
        return [{"input_ids": torch.randint(0, config.vocab_size, (1, 32), generator=generator)}]
    batches = [split_batch(batch)[0] for batch in data]
    if not batches or not all(isinstance(b, dict) and "input_ids" in b for b in batches):
        raise ConfigError("data: give calibration batches as the model's keyword inputs "
                          "({'input_ids': ..., 'attention_mask': ...}), at least one")
    return batches


# criteria that leave padded positions out, which they learn from the batch's 2-dim
# attention_mask: a block alone is called with the model's own masks instead
PADDING_AWARE = {"reconstruction"}


def _refuse_padding_for(methods: list, batches: list[dict]) -> None:
    padded = any(isinstance(b.get("attention_mask"), torch.Tensor)
                 and not bool(b["attention_mask"].all()) for b in batches)
    for method in methods:
        criterion = getattr(method, "criterion", None)
        if criterion in PADDING_AWARE and padded:
            raise ConfigError(f"streamed {type(method).__name__}.criterion {criterion!r} "
                              f"leaves padded positions out, which a block alone cannot "
                              f"see: calibrate on batches without padding (sentences cut "
                              f"to one length) or prune in memory with pk.prune")


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _load_outside(model: nn.Module, reader: CheckpointReader, stack: str) -> None:
    """Weights for every parameter outside the blocks but the output layer's own; a tensor
    tied to several places (embeddings shared with the output layer) is loaded once and put
    in all of them, so the ties hold."""
    head = output_embeddings(model)
    stored = set(reader.names())
    for shared in parameter_places(model):
        names = [full for _, _, full in shared]
        if any(n.startswith(stack + ".") for n in names):
            continue
        if all(n.rpartition(".")[0] in head for n in names):
            continue  # the output layer alone: calibration stops before it
        found = [n for n in names if n in stored]
        if found:
            param = nn.Parameter(reader.tensor(found[0]), requires_grad=False)
            for module, leaf, _ in shared:
                module._parameters[leaf] = param


@dataclass
class _Stream:
    """What the stages of a stream share: the model without weights, where its blocks are,
    the checkpoint, and the calibration: each batch, the first block's hidden states for it,
    and the other inputs the model gives each block (``calls[block][batch]``)."""

    model: nn.Module
    stack_name: str
    reader: CheckpointReader
    batches: list[dict]
    hidden_name: str  # the blocks' parameter for the hidden states
    hidden: HiddenStates
    calls: list[list[dict]]
    budget: _Budget
    template: Any  # what a block returns (its structure), from block 0 on the first batch
    dtype: torch.dtype | None = None  # what the blocks compute in; None: as stored
    stored: dict[str, torch.dtype] = field(default_factory=dict)  # block tensors' own dtypes

    @property
    def stack(self) -> nn.ModuleList:
        return self.model.get_submodule(self.stack_name)

    def load(self, index: int) -> nn.Module:
        """Block ``index`` with its weights, in the compute dtype."""
        block = self.stack[index]
        self.stored = load_module(block, self.reader, f"{self.stack_name}.{index}.", self.dtype)
        return block

    def as_stored(self, block: nn.Module, index: int) -> dict[str, torch.Tensor]:
        """The block's tensors as the checkpoint holds them: full names, stored dtypes, and
        split again where they were fused when loaded."""
        tensors = {f"{self.stack_name}.{index}.{key}": value.to(self.stored.get(key, value.dtype))
                   for key, value in block.state_dict().items()}
        return self.reader.as_stored(tensors)

    def inputs(self, index: int, hidden: HiddenStates) -> _BlockInputs:
        """Each batch's keyword inputs to block ``index`` given the hidden states arriving."""
        return _BlockInputs(self.hidden_name, hidden, self.calls[index])


@dataclass
class _Budget:
    """The memory for hidden states, shared by the ``HiddenStates`` alive at one time."""

    total: int
    spill: SpillFolder

    def states(self, alive: int) -> HiddenStates:
        """A new ``HiddenStates`` with its share, ``alive`` of them sharing the budget."""
        return HiddenStates(self.total // max(alive, 1), self.spill)


@dataclass
class _BlockInputs:
    """A block's keyword inputs for every calibration batch, built one batch at a time as
    they are read (the hidden states may come from disk): data for ``pk.prune`` that can be
    read again and again."""

    hidden_name: str
    hidden: HiddenStates
    calls: list[dict]

    def __len__(self) -> int:
        return len(self.hidden)

    def __getitem__(self, index: int) -> dict:
        return {self.hidden_name: self.hidden[index], **self.calls[index]}

    def __iter__(self) -> Iterator[dict]:
        return (self[i] for i in range(len(self)))


def _release_outside(model: nn.Module, stack: str) -> None:
    """Drop the weights loaded outside the blocks (the embeddings: a gigabyte in an 8B
    model), once the calibration has gone through them."""
    emptied: dict[int, nn.Parameter] = {}  # a tied tensor stays one tensor
    for name, module in model.named_modules(remove_duplicate=False):
        if name != stack and not name.startswith(stack + "."):
            for leaf, param in list(module._parameters.items()):
                if param is not None and param.device.type != "meta":
                    if id(param) not in emptied:
                        emptied[id(param)] = nn.Parameter(
                            torch.empty_like(param, device="meta"), requires_grad=False)
                    module._parameters[leaf] = emptied[id(param)]


def _block_inputs(model: nn.Module, stack_name: str, reader: CheckpointReader,
                  batches: list[dict], dtype: torch.dtype | None, budget: _Budget) -> _Stream:
    """The first block's hidden states per batch and every block's other inputs per batch
    (floating-point ones in ``dtype``), recorded by stand-ins for the blocks."""
    stack = model.get_submodule(stack_name)
    blocks = list(stack)
    signature = inspect.signature(blocks[0].forward)
    hidden = budget.states(alive=2)  # the first block's inputs, and its outputs soon
    try:
        first: list[tuple[torch.Tensor, dict]] = []
        stack[0] = _Recorder(blocks[0], signature, first, None, last=True)
        for batch in batches:  # the first block's inputs, kept or spilled batch by batch
            _run_until_stop(model, batch)
            hidden.append(_cast(first[-1][0], dtype))
            first[-1] = (None, first[-1][1])
        # what a block returns, from the first block run for real on the first batch
        load_module(blocks[0], reader, f"{stack_name}.0.", dtype)
        with torch.no_grad():
            template = blocks[0](hidden[0], **_cast(first[0][1], dtype))
        release(blocks[0])
        calls: list[list[tuple[torch.Tensor, dict]]] = [[] for _ in blocks]
        for index in range(len(blocks)):
            stack[index] = _Recorder(blocks[index], signature, calls[index], template,
                                     last=index == len(blocks) - 1)
        for batch in batches:
            _run_until_stop(model, batch)
    finally:
        for index, block in enumerate(blocks):
            stack[index] = block
    return _Stream(model, stack_name, reader, batches, next(iter(signature.parameters)),
                   hidden, [[_cast(kw, dtype) for _, kw in block] for block in calls],
                   budget, template, dtype)


def _cast(value: Any, dtype: torch.dtype | None) -> Any:
    """Floating-point tensors inside ``value`` (tuples, lists, dicts) in ``dtype``."""
    if dtype is None:
        return value
    if isinstance(value, torch.Tensor):
        return value.to(dtype) if value.is_floating_point() else value
    if isinstance(value, (tuple, list)):
        return type(value)(_cast(v, dtype) for v in value)
    if isinstance(value, dict):
        return {k: _cast(v, dtype) for k, v in value.items()}
    return value


def _run_until_stop(model: nn.Module, batch: dict, stop: type[Exception] = _StopForward,
                    missed: str = "streamed pruning: the model's forward pass did not reach "
                                  "its last block") -> None:
    """Run the model on ``batch`` until a stand-in or hook raises ``stop``; a pass that
    ends without it is an error (``missed``)."""
    try:
        with torch.no_grad():
            call_model(model, {**batch, "use_cache": False})
    except stop:
        return
    raise PruneError(f"{missed}; prune it in memory with pk.prune")


def _stream_width(methods: list[PruningMethod], stream: _Stream, writer: ShardWriter,
                  advance: Callable[[], None]) -> tuple[Plan, list[BlockRecord]]:
    steps = [m.to_dict() for m in methods]
    plan = Plan(method=steps[0] if len(steps) == 1 else {"steps": steps})
    # model-wide ranking: a first pass scores every block, the ratios it gives each block's
    # group are then applied block by block as usual
    ratios = (_global_ratios(methods[0], stream) if getattr(methods[0], "global_ranking", False)
              else None)
    records = []
    hidden = stream.hidden
    for index, block in enumerate(stream.stack):
        started = time.perf_counter()
        name = f"{stream.stack_name}.{index}"
        stream.load(index)
        before = _count(block)
        inputs = stream.inputs(index, hidden)
        # the unpruned outputs feed the next block
        outputs = _run_block(block, inputs, stream.budget.states(alive=2))
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
        _merge(plan, block_plan, name)
        writer.add(stream.as_stored(block, index))
        records.append(BlockRecord(name, time.perf_counter() - started, before, _count(block),
                                   "" if block_plan.tensors else left))
        release(block)
        advance()
    hidden.discard()
    refused = [r for r in records if r.left]
    if not plan.tensors and refused:  # as pk.prune refuses a model with nothing to prune
        raise PruneError(f"no block could be pruned, so nothing was written "
                         f"({refused[0].name}: {refused[0].left})")
    return plan, records


def _global_ratios(method: GroupPruning, stream: _Stream) -> list[float]:
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
        outputs = _run_block(block, inputs, stream.budget.states(alive=3))
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


def _stream_depth(method: LayerPruning, stream: _Stream, writer: ShardWriter,
                  advance: Callable[[], None]) -> tuple[Plan, list[BlockRecord]]:
    stack_name, count = stream.stack_name, len(stream.stack)
    span = method.n if method.criterion == "angular" else 1
    sums, samples = [0.0] * count, [0] * count
    window: deque[HiddenStates] = deque()  # the inputs of the last span blocks
    records, hidden = [], stream.hidden
    for index, block in enumerate(stream.stack):
        started = time.perf_counter()
        params = _count(block)
        if method.criterion != "last":
            stream.load(index)
            if len(window) == span:
                window.popleft().discard()
            window.append(hidden)
            hidden = _run_block(block, stream.inputs(index, hidden),
                                stream.budget.states(alive=span + 1))
            release(block)
            start = index - span + 1  # the window that ends at this block
            if start >= 0:
                for batch, x, y in zip(stream.batches, window[0], hidden):
                    total, n = summed_distance(x, y, True, method.criterion == "angular",
                                               token_weights(batch, y))
                    sums[start] += total
                    samples[start] += n
        records.append(BlockRecord(f"{stack_name}.{index}", time.perf_counter() - started,
                                   params, params))
        advance()
    for states in (*window, hidden):
        states.discard()
    if method.criterion == "last":
        scores = [float(count - i) for i in range(count)]
    else:  # on several processes, over all of their calibration batches
        scores = means_across(sums, samples)
    ranked = [LayerScore(f"{stack_name}.{i}", scores[i], records[i].params_before, i)
              for i in range(count)]
    removed = choose_layers(ranked, method.n, method.criterion == "angular")
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


def _run_block(block: nn.Module, inputs: _BlockInputs, outputs: HiddenStates) -> HiddenStates:
    with torch.no_grad():
        for x in inputs:
            outputs.append(first_tensor(block(**x)))
    return outputs


def _merge(plan: Plan, block_plan: Plan, prefix: str) -> None:
    """Add a block's plan to the model's, its names prefixed with the block's."""
    def named(name: str) -> str:
        return f"{prefix}.{name}" if name else prefix

    plan.tensors.update({named(n): dims for n, dims in block_plan.tensors.items()})
    plan.shapes.update({named(n): shape for n, shape in block_plan.shapes.items()})
    plan.attributes.update({named(n): values for n, values in block_plan.attributes.items()})
    plan.groups.extend({**group, "block": prefix} for group in block_plan.groups)


class _progress:
    """A progress bar per block (or per tensor) with the time left (rich), or nothing."""

    def __init__(self, show: bool, total: int, unit: str, kind: str):
        self.show, self.total, self.unit, self.kind = show, total, unit, kind

    def __enter__(self) -> Callable[[], None]:
        if not self.show:
            return lambda: None
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        self.bar = Progress(TextColumn(f"streaming {self.unit} ({self.kind})"), BarColumn(),
                            MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("left"),
                            TimeRemainingColumn())
        self.bar.__enter__()
        task = self.bar.add_task(self.unit, total=self.total)
        return lambda: self.bar.advance(task)

    def __exit__(self, *exc) -> None:
        if self.show:
            self.bar.__exit__(*exc)

