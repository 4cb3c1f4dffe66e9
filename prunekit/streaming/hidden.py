"""Streamed hidden-size pruning: a decoder's residual stream narrowed from its folder on disk,
one tensor (or, to read activations, one block) in memory at a time.

The hidden size is shared by every block, so it is decided once for the whole model:

1. **What moves together.** A miniature of the same architecture (a tiny vocabulary, the
   real hidden size, zero weights, built from the config; one block, or as many as it takes
   to hold one of each kind of block the checkpoint has) is traced by the engine with
   ``HiddenPruning``'s graph: its hidden group names every tensor that reads or writes the
   residual stream and along which dim. Names do not depend on sizes, so a miniature block's
   members stand for every block of its kind, and the tensors outside the blocks
   (embeddings, final norm, output layer) are named as they are. No per-architecture table.
2. **Scores.** From the weights (``l1``, ``l2``, ``random``): each member tensor is read from
   the shards, its channels' norms taken (in slices, so a 128k-token embedding is never
   widened to float32 whole) and summed in the engine's member order. From activations
   (``mean_activation``, ``apoz``; Minitron's kind of score): the calibration batches are
   streamed through the blocks (``streaming.py``) with hooks at every module output the
   engine found carrying the hidden size, and the per-site means are averaged. Either way
   the same scores ``pk.prune`` computes on the loaded model.
3. **Write.** Every tensor is read once more, sliced to the kept channels where it is a
   member, and written; nothing else of the model is ever in memory.

The plan is checked on the miniature: pruned by it, it must still run.
"""

from __future__ import annotations

import copy
import inspect
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

import torch
from torch import nn

from ..adapters.hf.checkpoint import CheckpointReader, ShardWriter
from ..adapters.hf.memory import return_freed_memory
from ..adapters.hf.skeleton import empty_model, parameter_places, release
from ..core.calls import call_model
from ..core.distributed import sum_across
from ..core.progress import Reporter
from ..errors import ConfigError, PruneError
from ..graph.dependency import DependencyGraph, Group, Member, member_sort_key
from ..importance.activation import ActivationStatistic
from ..importance.distance import first_tensor
from ..methods import HiddenPruning
from ..plan import Plan
from ..selection import channels as selection
from ..selection.group_plans import plan_from_keep
from ..surgery.apply import apply_plan
from .blocks import (
    Budget,
    Recorder,
    Replay,
    Skeleton,
    block_progress,
    calibration_batches,
    load_outside,
    record_block_inputs,
    release_outside,
    run_until_stop,
    standing_in,
)

WEIGHT_CRITERIA = {"l1", "l2", "random"}
ACTIVATION_CRITERIA = {"mean_activation", "apoz"}  # Minitron's: activations, every block
HIDDEN_CRITERIA = WEIGHT_CRITERIA | ACTIVATION_CRITERIA
MINIATURE_VOCABULARY = 64
SLICE_BYTES = 256 << 20  # a member is scored in slices of about this much float32

Site = tuple[str, int, int]  # a module's name, which call of it, the dim carrying the channels


@dataclass
class BlockKinds:
    """Which block of the miniature stands for each of the model's blocks: the first block
    with the same tensors (a model may mix kinds: dense and mixture-of-experts MLPs,
    attention and convolution blocks), so the miniature needs blocks up to the first of the
    last kind to appear, and names found in one of them hold for every block of its kind."""

    stack_name: str
    kinds: list[int]  # per block of the model, the miniature block that stands for it

    @classmethod
    def of(cls, reader: CheckpointReader, stack_name: str, blocks: int) -> BlockKinds:
        first: dict[frozenset, int] = {}
        kinds = []
        names = reader.names()
        for i in range(blocks):
            prefix = f"{stack_name}.{i}."
            tensors = frozenset(n[len(prefix):] for n in names if n.startswith(prefix))
            kinds.append(first.setdefault(tensors, i))
        return cls(stack_name, kinds)

    @property
    def miniature_blocks(self) -> int:
        return max(self.kinds) + 1

    def stands_for(self, name: str) -> list[str]:
        """The model's names a miniature name (a tensor or a module) stands for: itself
        outside the blocks, the same name in every block of its kind inside them."""
        prefix = self.stack_name + "."
        if not name.startswith(prefix):
            return [name]
        index, _, rest = name[len(prefix):].partition(".")
        if not index.isdigit():
            return [name]
        return [f"{self.stack_name}.{i}" + (f".{rest}" if rest else "")
                for i, kind in enumerate(self.kinds) if kind == int(index)]

    def block_of(self, name: str) -> int | None:
        prefix = self.stack_name + "."
        index = name[len(prefix):].partition(".")[0] if name.startswith(prefix) else ""
        return int(index) if index.isdigit() else None


@dataclass
class HiddenStructure:
    """What the engine found on the miniature, named for the whole model: the tensors that
    carry the hidden size (sorted as the engine sums them) and the module outputs where its
    activations are read: before the blocks, in each miniature block (for every block of
    its kind), and after them."""

    miniature: nn.Module
    example: dict
    graph: DependencyGraph
    group: Group
    blocks: BlockKinds
    members: list[tuple[tuple, str, int]]  # (sort key, checkpoint name, dim)
    before: list[Site] = field(default_factory=list)
    inside: dict[int, list[Site]] = field(default_factory=dict)  # names relative to a block
    after: list[Site] = field(default_factory=list)

    def block_sites(self, index: int) -> list[Site]:
        """The sites in the model's block ``index``, full names."""
        stack = self.blocks.stack_name
        return [(f"{stack}.{index}.{name}", call, dim)
                for name, call, dim in self.inside.get(self.blocks.kinds[index], [])]

    def sites(self) -> list[Site]:
        """Every site of the whole model, in the order a forward pass reaches them."""
        every = [site for i in range(len(self.blocks.kinds)) for site in self.block_sites(i)]
        return self.before + every + self.after


def hidden_structure(method: HiddenPruning, config: Any, reader: CheckpointReader,
                     stack_name: str, blocks: int) -> HiddenStructure:
    """Trace the miniature and name its hidden group's members and sites for the model."""
    kinds = BlockKinds.of(reader, stack_name, blocks)
    miniature, example = _miniature(config, stack_name, kinds.miniature_blocks)
    graph, groups = method.traced_candidates(miniature, example)
    if len(groups) != 1:
        raise PruneError(f"streamed HiddenPruning: the engine found {len(groups)} hidden sizes "
                         f"in {type(miniature).__name__}, not one shared by every block; "
                         f"prune it in memory with pk.prune")
    group = groups[0]
    members = sorted((member_sort_key(m.role, full, m.dim), full, m.dim)
                     for m in group.members for full in _full_names(m, group, kinds))
    missing = sorted({full for _, full, _ in members} - set(reader.names()))
    if missing:
        raise ConfigError(f"{reader.folder}: the checkpoint lacks {missing[:3]}, which the "
                          f"model built from its config has, even as transformers converts "
                          f"them when it loads them; prune it in memory with pk.prune")
    structure = HiddenStructure(miniature, example, graph, group, kinds, members)
    for output, dim in graph.activation_sites(group):
        block = kinds.block_of(output.module)
        if block is not None:
            relative = output.module[len(f"{stack_name}.{block}."):]
            structure.inside.setdefault(block, []).append((relative, output.call, dim))
        elif structure.inside:
            structure.after.append((output.module, output.call, dim))
        else:
            structure.before.append((output.module, output.call, dim))
    return structure


def weight_scores(method: HiddenPruning, reader: CheckpointReader,
                  structure: HiddenStructure) -> torch.Tensor:
    """Each channel's score over every member, as ``pk.prune`` ranks the loaded model:
    ``Magnitude`` takes a float32 norm per member and sums them in float64 in the engine's
    member order; ``RandomScore`` draws once from the seed."""
    size = structure.group.size
    if method.criterion == "random":
        generator = torch.Generator().manual_seed(method.seed)
        return torch.rand(size, generator=generator, dtype=torch.float64)
    p = 1 if method.criterion == "l1" else 2
    total = torch.zeros(size, dtype=torch.float64)
    for _, name, dim in structure.members:
        total += _channel_norms(reader.tensor(name), dim, p).double()
    return total


def plan_from_scores(method: HiddenPruning, structure: HiddenStructure, scores: torch.Tensor,
                     reader: CheckpointReader) -> Plan:
    """Keep the highest-scoring channels; the miniature's plan, checked by running the
    pruned miniature, then named for every block and the tensors around them."""
    group = structure.group
    kept = selection.highest(scores, method.channels_to_keep(group.size, method.ratio))
    small = plan_from_keep(structure.graph, {group.axis: kept}, method.to_dict())
    _check_runs(structure.miniature, small, structure.example)
    return _expanded(small, reader, structure.blocks)


class SiteStatistics:
    """Per-channel activation statistics at the hidden size's sites, summed over batches
    as ``pk.prune``'s activation criteria sum them; read with forward hooks."""

    def __init__(self, criterion: str):
        self.statistic = ActivationStatistic(criterion)
        self.totals: dict[Site, torch.Tensor] = {}
        self.counts: dict[Site, int] = {}

    @contextmanager
    def reading(self, modules: dict[str, nn.Module], sites: list[Site],
                stop_after: Site | None = None) -> Iterator[Callable[[], None]]:
        """Hooks on the sites' modules while inside; yields what to call before each batch
        (the call counts restart). ``stop_after``: raise ``StopAfterSite`` once that site is
        read, so the rest of the forward pass is not run."""
        by_module: dict[str, list[Site]] = {}
        for site in sites:
            by_module.setdefault(site[0], []).append(site)
        calls: dict[str, int] = {}

        def hook_for(name: str):
            def hook(_module, _args, output):
                call = calls.get(name, 0)
                calls[name] = call + 1
                for site in by_module[name]:
                    if site[1] == call and isinstance(output, torch.Tensor):
                        self.add(site, output)
                        if site == stop_after:
                            raise StopAfterSite
            return hook

        handles = [modules[name].register_forward_hook(hook_for(name)) for name in by_module]
        try:
            yield calls.clear
        finally:
            for handle in handles:
                handle.remove()

    def add(self, site: Site, output: torch.Tensor) -> None:
        score = self.statistic.batch_score(output.detach().double(), None, site[2])
        self.totals[site] = self.totals.get(site, 0) + score
        self.counts[site] = self.counts.get(site, 0) + 1

    def scores(self, sites: list[Site]) -> torch.Tensor:
        """The mean over ``sites`` (in that order) of each site's mean over batches (over
        every process's batches under torchrun)."""
        per_site = []
        for site in sites:
            if self.counts.get(site):
                total, count = sum_across(self.totals[site], self.counts[site])
                per_site.append(total / count)
        if not per_site:
            raise PruneError("streamed HiddenPruning: the calibration never reached a module "
                             "whose output carries the hidden size")
        return torch.stack(per_site).mean(0)


class StopAfterSite(Exception):
    """Ends a forward pass once the last site after the blocks has been read."""


def _miniature(config: Any, stack_name: str, blocks: int) -> tuple[nn.Module, dict]:
    """The architecture with its first ``blocks`` blocks and a tiny vocabulary, zero
    weights: built in moments even for an 8B model's blocks, enough for the engine to
    trace."""
    small = copy.deepcopy(config)
    small.num_hidden_layers = blocks
    for name, value in vars(small).items():  # per-layer settings (Gemma 3's layer_types)
        if name.endswith("layer_types") and isinstance(value, list):
            setattr(small, name, value[:blocks])
    small.vocab_size = MINIATURE_VOCABULARY
    if getattr(small, "pad_token_id", None) is not None:
        small.pad_token_id = 0  # an id past the tiny vocabulary would be refused
    model = empty_model(small)
    zeros: dict[int, nn.Parameter] = {}  # a tied tensor (embeddings and head) stays one
    for module in model.modules():
        for leaf, param in list(module._parameters.items()):
            if param is not None and param.device.type == "meta":
                if id(param) not in zeros:
                    zeros[id(param)] = nn.Parameter(torch.zeros(param.shape),
                                                    requires_grad=False)
                module._parameters[leaf] = zeros[id(param)]
    if len(model.get_submodule(stack_name)) != blocks:
        raise PruneError("streamed HiddenPruning: the model's config does not set its number "
                         "of blocks with num_hidden_layers; prune it in memory with pk.prune")
    example = {"input_ids": torch.arange(8).reshape(1, 8) % MINIATURE_VOCABULARY,
               "use_cache": False}
    return model, example


def _full_names(member: Member, group: Group, kinds: BlockKinds) -> list[str]:
    """The checkpoint tensors a miniature member stands for: every block's of its kind, for
    one inside a block. A member that holds the hidden size only in part (packed with other
    sizes) is refused."""
    name = member.slot.name
    if member.slot.kind != "parameter":
        raise PruneError(f"streamed HiddenPruning: the hidden size reaches {name}, which is "
                         f"not a weight in the checkpoint; prune it in memory with pk.prune")
    if [list(segment) for segment in member.segments] != [[group.axis]]:
        raise PruneError(f"streamed HiddenPruning: {name} holds the hidden size together with "
                         f"other sizes along one dim; prune it in memory with pk.prune")
    return kinds.stands_for(name)


def _channel_norms(tensor: torch.Tensor, dim: int, p: int) -> torch.Tensor:
    """The p-norm of each index along ``dim`` over everything else, in float32, taken in
    slices along another dim so that no more than ``SLICE_BYTES`` is widened at a time."""
    if tensor.dim() == 1:
        return tensor.float().abs()
    other = 0 if dim != 0 else 1
    step = max(1, SLICE_BYTES // max(1, 4 * tensor.numel() // tensor.shape[other]))
    if step >= tensor.shape[other]:
        return _norms(tensor, dim, p)
    parts = [_norms(part, dim, p) for part in tensor.split(step, dim=other)]
    return torch.linalg.vector_norm(torch.stack(parts, dim=1), ord=p, dim=1)


def _norms(tensor: torch.Tensor, dim: int, p: int) -> torch.Tensor:
    matrix = tensor.movedim(dim, 0).reshape(tensor.shape[dim], -1)
    return torch.linalg.vector_norm(matrix.float(), ord=p, dim=1)


def _check_runs(miniature: nn.Module, plan: Plan, example: dict) -> None:
    """The miniature pruned by the plan must still run: the narrower hidden size is one the
    architecture can compute with."""
    try:
        apply_plan(miniature, plan)
        with torch.no_grad():  # as a user would call it: its cache too (RWKV sizes its state
            call_model(miniature, {"input_ids": example["input_ids"]})  # from the config)
    except Exception as error:
        raise PruneError(f"streamed HiddenPruning: a few-block model of this architecture no "
                         f"longer runs at the narrower hidden size ({type(error).__name__}: "
                         f"{error}); nothing was written") from None


def _expanded(small: Plan, reader: CheckpointReader, kinds: BlockKinds) -> Plan:
    """The miniature's plan for the whole model: each miniature block's entries for every
    block of its kind, shapes as the checkpoint stores them."""
    plan = Plan(method=small.method)
    for name, dims in small.tensors.items():
        for full in kinds.stands_for(name):
            plan.tensors[full] = dims
            plan.shapes[full] = list(reader.shape(full))
    for module, values in small.attributes.items():
        for full in kinds.stands_for(module):
            plan.attributes[full] = dict(values)
    for group in small.groups:
        members = [full for member in group["members"]
                   for full in _member_names(member, kinds.stands_for)]
        plan.groups.append({**group, "members": members})
    return plan


def _member_names(member: str, names) -> list[str]:
    """``"model.layers.0.mlp.down_proj.weight[out]"`` for every block of its kind."""
    base, bracket, role = member.partition("[")
    return [f"{full}{bracket}{role}" for full in names(base)]


def write_sliced(reader: CheckpointReader, plan: Plan, writer: ShardWriter,
                 advance: Callable[[], None] = lambda: None) -> None:
    """Every tensor of the checkpoint, sliced to the plan's kept channels where it names
    it, one tensor in memory at a time."""
    for name in reader.names():
        writer.reserve(reader.nbytes(name))  # write out what is pending before reading
        tensor = reader.tensor(name)
        for dim, kept in plan.tensors.get(name, {}).items():
            tensor = tensor.index_select(dim, torch.as_tensor(kept, dtype=torch.long))
        writer.add(reader.as_stored({name: tensor}))
        del tensor
        advance()


def narrow_skeleton(model: nn.Module, plan: Plan) -> None:
    """Give the weightless model the plan's shapes, so that its config can be updated to
    them. A tied tensor (embeddings and output layer) is named once in the plan and
    narrowed in every place it sits."""
    for shared in parameter_places(model):
        named = [full for _, _, full in shared if full in plan.tensors]
        if not named:
            continue
        module, leaf, _ = shared[0]
        shape = list(module._parameters[leaf].shape)
        for dim, kept in plan.tensors[named[0]].items():
            shape[dim] = len(kept)
        narrowed = nn.Parameter(torch.empty(shape, device="meta"), requires_grad=False)
        for module, leaf, _ in shared:
            module._parameters[leaf] = narrowed


def plan_hidden(method: HiddenPruning, skeleton: Skeleton, data: Iterable | None,
                dtype: torch.dtype | None, budget: Budget, progress: Reporter) -> Plan:
    """The hidden size's plan: scores from the weights (read tensor by tensor), or, for the
    activation criteria, from every site's activations on the calibration batches, the
    blocks streamed one at a time (Minitron's scores)."""
    reader, config = skeleton.reader, skeleton.config
    blocks = len(skeleton.stack)
    structure = hidden_structure(method, config, reader, skeleton.stack_name, blocks)
    if method.criterion in WEIGHT_CRITERIA:
        scores = weight_scores(method, reader, structure)
    else:
        statistics = SiteStatistics(method.criterion)
        batches = calibration_batches(data, config)
        with block_progress(progress, blocks, "blocks", "hidden") as advance:
            read_hidden_activations(statistics, structure, skeleton, batches, dtype, budget,
                                    advance)
        scores = statistics.scores(structure.sites())
    plan = plan_from_scores(method, structure, scores, reader)
    del structure
    return_freed_memory()
    return plan


def read_hidden_activations(statistics: SiteStatistics, structure: HiddenStructure,
                            skeleton: Skeleton, batches: list[dict], dtype: torch.dtype | None,
                            budget: Budget, advance: Callable[[], None]) -> None:
    """Each site's activations on every batch: the sites before the blocks as the batches
    pass the embeddings, each block's as it runs (one block in memory at a time), and those
    after the blocks (the final norm) in a last pass that hands the model the last block's
    outputs."""
    model, reader, stack_name = skeleton.model, skeleton.reader, skeleton.stack_name
    modules = dict(model.named_modules())
    load_outside(model, reader, stack_name)
    stack = model.get_submodule(stack_name)
    signature = inspect.signature(stack[0].forward)
    with statistics.reading(modules, structure.before) as next_batch:
        for batch in batches:
            next_batch()
            with standing_in(stack, {0: Recorder(stack[0], signature, [], None, last=True)}):
                run_until_stop(model, batch)
    stream = record_block_inputs(model, stack_name, reader, batches, dtype, budget)
    release_outside(model, stack_name)
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
        load_outside(model, reader, stack_name)
        replay = Replay(stack[len(stack) - 1], stream.template, hidden)
        passing = {i: Recorder(stack[i], signature, [], stream.template, last=False)
                   for i in range(len(stack) - 1)}
        with standing_in(stack, {**passing, len(stack) - 1: replay}), \
                statistics.reading(modules, structure.after,
                                   stop_after=structure.after[-1]) as next_batch:
            for replay.batch, batch in enumerate(batches):
                next_batch()
                run_until_stop(model, batch, StopAfterSite,
                                "streamed HiddenPruning: the model's forward pass did not "
                                "reach the module after its blocks that the trace found")
        release_outside(model, stack_name)
    hidden.discard()
