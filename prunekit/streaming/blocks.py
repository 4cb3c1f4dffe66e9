"""What streaming does block by block: stand-ins that record what the model hands its
blocks, the cached hidden states and keyword inputs of every block (``Stream``), the memory
they share (``Budget``), and loading and dropping the weights outside the blocks."""


from __future__ import annotations

import inspect
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

import torch
from torch import nn

from ..adapters.hf.activations import HiddenStates, SpillFolder
from ..adapters.hf.checkpoint import CheckpointReader, ShardWriter
from ..adapters.hf.skeleton import (
    load_module,
    output_embeddings,
    parameter_places,
    release,
)
from ..core.batches import split_batch
from ..core.calls import call_model
from ..core.progress import Reporter, Step
from ..errors import ConfigError, PruneError
from ..importance.distance import first_tensor
from ..importance.registry import get_criterion


@dataclass
class Skeleton:
    """The model being streamed: built without weights (its parameters on the meta device),
    its config, the checkpoint it is read from, and where its blocks are."""

    model: nn.Module
    config: Any
    reader: CheckpointReader
    stack_name: str

    @property
    def stack(self) -> nn.ModuleList:
        return self.model.get_submodule(self.stack_name)


@dataclass
class BlockRecord:
    """One block as the stream went through it."""

    name: str
    seconds: float
    params_before: int
    params_after: int
    left: str = ""  # why a width method left the block as it was (it had nothing to prune)


class StopForward(Exception):
    """Raised by a recorder to end a forward pass once the blocks' inputs are known."""


class StandIn(nn.Module):
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


class Recorder(StandIn):
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
            raise StopForward
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


class Replay(StandIn):
    """Stands in for the last block: returns its recorded outputs for batch ``batch``."""

    def __init__(self, block: nn.Module, template: Any, outputs: HiddenStates):
        super().__init__(block)
        self.template, self.outputs, self.batch = template, outputs, 0

    def forward(self, *args, **kwargs):
        return _like(self.template, self.outputs[self.batch])


@contextmanager
def standing_in(stack: nn.ModuleList, stand_ins: dict[int, nn.Module]) -> Iterator[None]:
    """The stack's blocks ``stand_ins`` names replaced while inside, then put back."""
    blocks = {index: stack[index] for index in stand_ins}
    try:
        for index, stand_in in stand_ins.items():
            stack[index] = stand_in
        yield
    finally:
        for index, block in blocks.items():
            stack[index] = block


def copy_outside(reader: CheckpointReader, stack_name: str, writer: ShardWriter) -> None:
    """The tensors outside the blocks (embeddings, final norm, output layer), as they were;
    each large one written before the next is read."""
    for name in reader.names():
        if not name.startswith(stack_name + "."):
            writer.reserve(reader.nbytes(name))
            writer.add(reader.as_stored({name: reader.tensor(name)}))


def calibration_batches(data: Iterable | None, config: Any) -> list[dict]:
    if data is None:
        generator = torch.Generator().manual_seed(0)
        return [{"input_ids": torch.randint(0, config.vocab_size, (1, 32), generator=generator)}]
    batches = [split_batch(batch)[0] for batch in data]
    if not batches or not all(isinstance(b, dict) and "input_ids" in b for b in batches):
        raise ConfigError("data: give calibration batches as the model's keyword inputs "
                          "({'input_ids': ..., 'attention_mask': ...}), at least one")
    return batches


def refuse_padding_for(methods: list, batches: list[dict]) -> None:
    padded = any(isinstance(b.get("attention_mask"), torch.Tensor)
                 and not bool(b["attention_mask"].all()) for b in batches)
    for method in methods:
        # a criterion that leaves padded positions out learns them from the batch's 2-dim
        # attention_mask, and a block alone is called with the model's own masks instead
        criterion = getattr(method, "criterion", None)
        target = getattr(method, "target", None)
        entry = get_criterion(criterion, target, "") if target and criterion else None
        if padded and entry is not None and getattr(entry.criterion, "skips_padding", False):
            raise ConfigError(f"streamed {type(method).__name__}.criterion {criterion!r} "
                              f"leaves padded positions out, which a block alone cannot "
                              f"see: calibrate on batches without padding (sentences cut "
                              f"to one length) or prune in memory with pk.prune")


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def load_outside(model: nn.Module, reader: CheckpointReader, stack: str) -> None:
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
class Stream:
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
    budget: Budget
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

    def inputs(self, index: int, hidden: HiddenStates) -> BlockInputs:
        """Each batch's keyword inputs to block ``index`` given the hidden states arriving."""
        return BlockInputs(self.hidden_name, hidden, self.calls[index])


@dataclass
class Budget:
    """The memory for hidden states, shared by the ``HiddenStates`` alive at one time."""

    total: int
    spill: SpillFolder

    def states(self, alive: int) -> HiddenStates:
        """A new ``HiddenStates`` with its share, ``alive`` of them sharing the budget."""
        return HiddenStates(self.total // max(alive, 1), self.spill)


@dataclass
class BlockInputs:
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


def release_outside(model: nn.Module, stack: str) -> None:
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


def record_block_inputs(model: nn.Module, stack_name: str, reader: CheckpointReader,
                  batches: list[dict], dtype: torch.dtype | None, budget: Budget) -> Stream:
    """The first block's hidden states per batch and every block's other inputs per batch
    (floating-point ones in ``dtype``), recorded by stand-ins for the blocks."""
    stack = model.get_submodule(stack_name)
    blocks = list(stack)
    signature = inspect.signature(blocks[0].forward)
    hidden = budget.states(alive=2)  # the first block's inputs, and its outputs soon
    try:
        first: list[tuple[torch.Tensor, dict]] = []
        stack[0] = Recorder(blocks[0], signature, first, None, last=True)
        for batch in batches:  # the first block's inputs, kept or spilled batch by batch
            run_until_stop(model, batch)
            hidden.append(cast(first[-1][0], dtype))
            first[-1] = (None, first[-1][1])
        # what a block returns, from the first block run for real on the first batch
        load_module(blocks[0], reader, f"{stack_name}.0.", dtype)
        with torch.no_grad():
            template = blocks[0](hidden[0], **cast(first[0][1], dtype))
        release(blocks[0])
        calls: list[list[tuple[torch.Tensor, dict]]] = [[] for _ in blocks]
        for index in range(len(blocks)):
            stack[index] = Recorder(blocks[index], signature, calls[index], template,
                                     last=index == len(blocks) - 1)
        for batch in batches:
            run_until_stop(model, batch)
    finally:
        for index, block in enumerate(blocks):
            stack[index] = block
    return Stream(model, stack_name, reader, batches, next(iter(signature.parameters)),
                   hidden, [[cast(kw, dtype) for _, kw in block] for block in calls],
                   budget, template, dtype)


def cast(value: Any, dtype: torch.dtype | None) -> Any:
    """Floating-point tensors inside ``value`` (tuples, lists, dicts) in ``dtype``."""
    if dtype is None:
        return value
    if isinstance(value, torch.Tensor):
        return value.to(dtype) if value.is_floating_point() else value
    if isinstance(value, (tuple, list)):
        return type(value)(cast(v, dtype) for v in value)
    if isinstance(value, dict):
        return {k: cast(v, dtype) for k, v in value.items()}
    return value


def run_until_stop(model: nn.Module, batch: dict, stop: type[Exception] = StopForward,
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


def run_block(block: nn.Module, inputs: BlockInputs, outputs: HiddenStates) -> HiddenStates:
    with torch.no_grad():
        for x in inputs:
            outputs.append(first_tensor(block(**x)))
    return outputs


@contextmanager
def block_progress(report: Reporter, total: int, unit: str, kind: str) -> Iterator[Callable[[], None]]:
    """``advance()``, called as each block (or tensor) is done, reports it as a ``pk.Step``."""
    stage, done = f"streaming {unit} ({kind})", 0
    report(Step(stage, 0, total))

    def advance() -> None:
        nonlocal done
        done += 1
        report(Step(stage, done, total))

    yield advance
