"""What tests/test_distributed.py compares: run once as one process, and once under
``torchrun --nproc-per-node 2`` on the gloo backend, every process reading its share of the
same global batches (``pk.rank_share``). The first process writes what was derived (the
plans, the losses of distillation and fine-tuning, the trained weights) to OUT.

    python tests/distributed_checks.py OUT
    torchrun --standalone --nproc-per-node 2 tests/distributed_checks.py OUT
"""

from __future__ import annotations

import copy
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import transformers
from safetensors.torch import save_file
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import prunekit as pk  # noqa: E402
from prunekit.core.distributed import barrier, is_main_process, world_size  # noqa: E402
from prunekit.recover import recalibrate_norms, train_classifier  # noqa: E402

transformers.logging.set_verbosity_error()


def cnn(norms: bool = True) -> nn.Module:
    """BatchNorm in training mode normalises each process's own rows (SyncBatchNorm, which
    would not, runs on GPUs only), so the models that train here have none."""
    torch.manual_seed(0)
    norm = nn.BatchNorm2d if norms else (lambda channels: nn.Identity())
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), norm(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), norm(32), nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10)).eval()


def images(count: int = 4) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    return [(torch.randn(8, 1, 8, 8, generator=generator),
             torch.randint(0, 10, (8,), generator=generator)) for _ in range(count)]


def bert(classifier: bool = False) -> nn.Module:
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=4,
                                     num_attention_heads=4, intermediate_size=64,
                                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                                     num_labels=3)
    kind = transformers.BertForSequenceClassification if classifier else transformers.BertModel
    return kind(config).eval()


def texts(labels: bool = False) -> list[dict]:
    """Batches whose halves are padded differently, so each process holds a different number
    of real tokens: the means must still be those of the whole batch."""
    generator = torch.Generator().manual_seed(2)
    found = []
    for _ in range(3):
        mask = torch.ones(4, 10, dtype=torch.long)
        mask[0, 4:] = 0
        mask[1, 7:] = 0
        batch = {"input_ids": torch.randint(0, 100, (4, 10), generator=generator),
                 "attention_mask": mask}
        if labels:
            batch["labels"] = torch.randint(0, 3, (4,), generator=generator)
        found.append(batch)
    return found


def plans() -> dict[str, dict]:
    derived = {}
    for criterion in ("apoz", "mean_activation", "taylor", "reconstruction"):
        model, data = cnn(), images()
        result = pk.prune(model, data[0][0], pk.FilterPruning(0.5, criterion),
                          data=pk.rank_share(data))
        derived[f"filters/{criterion}"] = result.plan
    for criterion in ("gradient", "output", "entropy", "reconstruction"):
        model = bert(classifier=criterion == "gradient")
        data = texts(labels=criterion == "gradient")
        example = {k: v for k, v in data[0].items() if k != "labels"}
        result = pk.prune(model, example, pk.HeadPruning(0.5, criterion),
                          data=pk.rank_share(data))
        derived[f"heads/{criterion}"] = result.plan
    for criterion in ("influence", "angular", "output"):
        model, data = bert(), texts()
        result = pk.prune(model, data[0], pk.LayerPruning(2, criterion),
                          data=pk.rank_share(data))
        derived[f"layers/{criterion}"] = result.plan
    return {name: _kept(plan) for name, plan in derived.items()}


def refitted() -> dict[str, torch.Tensor]:
    """Weights fitted to data rather than trained: least-squares reconstruction (the normal
    equations summed over the processes, so one process's fit) and re-estimated BatchNorm
    statistics (each process's averaged, so every process holds the same)."""
    fitted, data = cnn(), images()
    pk.prune(fitted, data[0][0], pk.ChannelPruning(0.5, "l1", reconstruct=True),
             data=pk.rank_share(data))
    renormed = cnn()
    pk.prune(renormed, data[0][0], pk.FilterPruning(0.5, "l1"))
    recalibrate_norms(renormed, pk.rank_share(data))
    return {**{f"reconstructed/{k}": v for k, v in fitted.state_dict().items()},
            **{f"norms/{k}": v for k, v in renormed.state_dict().items()}}


def streamed(out: Path) -> dict[str, dict]:
    source = out / "llama"
    if is_main_process():
        config = transformers.LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64,
                                          num_hidden_layers=4, num_attention_heads=4,
                                          num_key_value_heads=2)
        torch.manual_seed(0)
        transformers.LlamaForCausalLM(config).save_pretrained(source)
    barrier()
    derived = {}
    for name, method in (("depth", pk.LayerPruning(2, "influence")),
                         ("width", pk.FilterPruning(0.5, "apoz"))):
        result = pk.prune_streamed(source, out / f"streamed-{name}", method,
                                   data=pk.rank_share(texts()))
        derived[f"streamed/{name}"] = _kept(result.plan)
    return derived


def _kept(plan: pk.Plan) -> dict:
    """What a plan keeps; its readable group summaries carry scores, whose last bits depend
    on the order in which the processes' sums were added."""
    return {"tensors": {name: {str(dim): kept for dim, kept in dims.items()}
                        for name, dims in plan.tensors.items()},
            "layers": plan.layers}


def distilled() -> tuple[dict, dict[str, torch.Tensor]]:
    teacher = bert()
    data = texts()
    student = copy.deepcopy(teacher)
    plan = pk.prune(student, data[0], pk.LayerPruning(1, "last")).plan
    result = pk.distill(student, teacher, pk.rank_share(data), steps=4, lr=1e-3, warmup=0,
                        plan=plan)
    sharded = copy.deepcopy(teacher)
    pk.prune(sharded, data[0], pk.LayerPruning(1, "last"))
    fsdp = pk.distill(sharded, teacher, pk.rank_share(data), steps=4, lr=1e-3, warmup=0,
                      plan=plan, parallel="fsdp", accumulate=2)
    # the sharded copy trained; the model given back is a plain module holding its weights
    assert type(sharded) is transformers.BertModel
    assert all(type(p) is nn.Parameter for p in sharded.parameters())
    narrow = copy.deepcopy(teacher)
    pk.prune(narrow, data[0], pk.HiddenPruning(0.5))
    projected = pk.distill(narrow, teacher, pk.rank_share(data), steps=3, lr=1e-3,
                           hidden_loss="cosine", parallel="fsdp")
    classifier, trained = cnn(norms=False), cnn(norms=False)
    pk.prune(trained, images()[0][0], pk.FilterPruning(0.5, "l1"))
    logits = pk.distill(trained, classifier, pk.rank_share([x for x, _ in images()]), steps=3,
                        lr=1e-2, accumulate=2)
    tuned = cnn(norms=False)
    epochs = train_classifier(tuned, pk.rank_share(images()), epochs=2, lr=1e-2)
    losses = {"layers": result.losses, "hidden": result.hidden_losses,
              "projected": projected.losses, "fsdp": fsdp.losses, "logits": logits.losses, "fine-tuned": epochs,
              "processes": result.processes}
    weights = {**{f"layers/{k}": v for k, v in student.state_dict().items()},
               **{f"projected/{k}": v for k, v in narrow.state_dict().items()},
               **{f"fsdp/{k}": v for k, v in sharded.state_dict().items()},
               **{f"projection/{k}": p.linear.weight for k, p in projected.projections.items()},
               **{f"logits/{k}": v for k, v in trained.state_dict().items()},
               **{f"fine-tuned/{k}": v for k, v in tuned.state_dict().items()}}
    return losses, {k: v.detach().contiguous().clone() for k, v in weights.items()}


def main(out: Path) -> None:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group("gloo")
    torch.set_num_threads(1)
    try:
        found = {"out": str(out), "world_size": world_size(), "plans": {**plans(), **streamed(out)}}
        found["losses"], weights = distilled()
        fitted = refitted()
        if is_main_process():
            (out / "derived.json").write_text(json.dumps(found, indent=1))
            save_file(weights, out / "weights.safetensors")
        save_file(fitted, out / f"fitted-{dist.get_rank() if dist.is_initialized() else 0}"
                                f".safetensors")
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
