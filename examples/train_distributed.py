"""Train a small CNN on the bundled MNIST subset with one stage per process (torch.distributed).

    torchrun --nproc-per-node 2 examples/train_distributed.py      # one stage per rank, gloo on CPU
    python examples/train_distributed.py --nprocs 2                 # the same, without torchrun
    python examples/train_distributed.py --nprocs 4 --replicas 2    # 2 stages x 2 data-parallel replicas
    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-endpoint HOST:29500 examples/train_distributed.py \
        --replicas 4 --device cuda                                  # 4 stages x 4 replicas on 16 GPUs

Every rank converts the model the same way (splits=<world size / replicas>, balanced by FLOPs) and
trains its own stage of its own replica; rank 0 reads the data and hands each replica its shard of
every batch, and each rank hands its detached activations and the labels to the next stage of its
replica, averaging its gradients with the other replicas of its stage. At the end every rank writes its checkpoint to --checkpoint, and rank 0
gathers the trained weights into SmallCNN and evaluates it on the test split.
"""

from __future__ import annotations

import argparse
import os

import torch
from torch import nn

import decouple
from decouple.distributed import StageTrainer, StepRecord, gather_effective_state_dict, launch
from decouple.experiments.datasets import mnist_loaders
from decouple.experiments.study import add_training_arguments


class SmallCNN(nn.Module):
    """Three conv blocks and a classifier: a vanilla ConvNet sized for MNIST."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.block1 = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2))
        self.block2 = nn.Sequential(nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2))
        self.block3 = nn.Sequential(nn.Conv2d(64, 128, 3, padding=1), nn.BatchNorm2d(128), nn.ReLU())
        self.classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.block3(self.block2(self.block1(x))))


def accuracy(module: nn.Module, loader) -> float:
    correct = total = 0
    with torch.no_grad():
        for x, y in loader:
            correct += (module(x).argmax(1) == y).sum().item()
            total += len(y)
    return correct / total


def progress(record: StepRecord) -> None:
    if record.batch % 20 == 0 and record.loss is not None:
        print(
            f"[stage {record.stage}] epoch {record.epoch + 1} batch {record.batch:3d}  loss {record.loss:.3f}",
            flush=True,
        )


def train(args: argparse.Namespace) -> None:
    """What every rank runs."""
    torch.manual_seed(args.seed)  # the same initial weights on every rank
    world = int(os.environ["WORLD_SIZE"])
    stages = world // args.replicas
    model = SmallCNN()
    dm = decouple.convert(model, method=args.method, splits=stages, example_inputs=(torch.randn(2, 1, 28, 28),),
                          precision=args.precision, compile=args.compile)  # fmt: skip
    trainer = StageTrainer(dm, replicas=args.replicas, device=args.device)
    last = trainer.rank == stages - 1  # replica 0's last stage reports progress
    train_loader, test_loader = (
        mnist_loaders(
            batch_size=args.batch_size, train_limit=args.train_limit, seed=args.seed, drop_last=args.replicas > 1
        )
        if trainer.rank == 0
        else (None, None)
    )
    print(
        f"rank {trainer.rank}/{world}: stage {trainer.stage.index} of replica {trainer.mesh.replica} holds "
        f"{', '.join(dm.param_counts().stages[trainer.stage.index].modules)}",
        flush=True,
    )

    history = trainer.fit(train_loader, epochs=args.epochs, on_step=progress if last else None)
    trainer.save(args.checkpoint)
    weights = gather_effective_state_dict(trainer)
    if trainer.rank == 0:
        for stage, losses in history.losses.items():
            print(f"{stage}: mean local loss per epoch {', '.join(f'{v:.3f}' for v in losses)}")
        print(
            f"{history.batches} global batches per stage in {history.seconds:.1f}s; checkpoints in {args.checkpoint}/"
        )
        model.load_state_dict(weights)  # the trained weights, back in SmallCNN
        print(f"test accuracy of SmallCNN with the trained weights: {accuracy(model.eval(), test_loader):.4f}")
    trainer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nprocs", type=int, default=None, help="start this many local ranks (without torchrun)")
    parser.add_argument(
        "--replicas", type=int, default=1, help="data-parallel replicas of every stage (world size / stages)"
    )
    parser.add_argument("--method", default="scl", choices=sorted(m for m in decouple.METHODS if m != "bp"))
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--train-limit", type=int, default=None, help="train on the first N samples only")
    parser.add_argument("--device", default=None, help="'cuda' puts each rank's stage on its own GPU (NCCL)")
    parser.add_argument("--checkpoint", default="checkpoints/train_distributed")
    parser.add_argument("--seed", type=int, default=0)
    add_training_arguments(parser)  # --precision, --compile: every rank trains its stage with them
    args = parser.parse_args()

    if "RANK" in os.environ:  # started by torchrun
        train(args)
    else:
        launch(train, args.nprocs or 2, args, backend="nccl" if args.device == "cuda" else "gloo")


if __name__ == "__main__":
    main()
