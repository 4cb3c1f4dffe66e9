"""Train, prune and recover on several processes with torch.distributed.

A small ResNet learns scikit-learn's handwritten digits; half its filters go by Taylor
importance, calibrated on every process's share of the data and summed across them, so every
process derives the same plan; the pruned model is then distilled from the unpruned one
under DistributedDataParallel, and the first process saves it.

    python examples/distributed_recovery.py                              # one process
    torchrun --nproc-per-node 2 examples/distributed_recovery.py         # two on a CPU (gloo)
    torchrun --nproc-per-node 8 examples/distributed_recovery.py --out pruned   # 8 GPUs (nccl)

Each process reads its rows of every 64-image batch (``pk.rank_share``), so use 1, 2, 4 or 8
processes; with a ``DistributedSampler`` any number works.
"""

import argparse
import copy
import hashlib
import os
import sys

import torch
import torch.distributed as dist

import prunekit as pk
from prunekit.cli.data import load_digits
from prunekit.cli.demo import digits_resnet
from prunekit.recover import evaluate_accuracy, train_classifier


class OnDevice:
    """Batches moved to the device as they are read; re-iterable for several epochs."""

    def __init__(self, batches, device):
        self.batches, self.device = batches, device

    def __iter__(self):
        for inputs, labels in self.batches:
            yield inputs.to(self.device), labels.to(self.device)

    def __len__(self):
        return len(self.batches)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="distillation steps")
    parser.add_argument("--out", default="pruned_digits", help="where the first process saves")
    args = parser.parse_args()

    gpus = torch.cuda.is_available()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group("nccl" if gpus else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if gpus else "cpu"
    if gpus:
        torch.cuda.set_device(device)

    torch.manual_seed(0)  # the same start on every process (DDP also broadcasts rank 0's)
    digits = load_digits(batch_size=64)
    train = OnDevice(pk.rank_share(digits.train), device)
    model = digits_resnet(width=16).to(device)
    train_classifier(model, train, epochs=4, lr=3e-3)
    model.eval()

    teacher, pruned = model, copy.deepcopy(model)
    example = next(iter(digits.test))[0][:1].to(device)
    plan = pk.prune(pruned, example, pk.FilterPruning(0.5, "taylor"),
                    data=OnDevice(pk.rank_share(digits.calibration), device)).plan
    digest = hashlib.sha256(plan.to_json().encode()).hexdigest()[:12]
    params = pk.measure(pruned, example, latency=False).params
    # one write of the whole line: two processes printing at once cannot splice their lines
    sys.stdout.write(f"process {rank}: plan {digest}, {params:,} params\n")
    sys.stdout.flush()

    test = OnDevice(digits.test, device)
    before = evaluate_accuracy(pruned, test)
    result = pk.distill(pruned, teacher, train, steps=args.steps, lr=3e-3)
    if rank == 0:
        print(f"accuracy: unpruned {evaluate_accuracy(teacher, test):.3f}, pruned "
              f"{before:.3f}, distilled {evaluate_accuracy(pruned, test):.3f} "
              f"({result.steps} steps on {result.processes} process(es), "
              f"{result.steps_per_second:.1f} steps/s)")
        pk.save(pruned.cpu(), args.out, plan)
        print(f"saved to {args.out}/")
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
