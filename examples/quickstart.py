"""Quick start: convert a small CNN to SCL and train it for an epoch on the bundled MNIST subset.

    python examples/quickstart.py [--epochs 1] [--method scl] [--batch-size 128]

Prints per-stage losses as it trains, then test accuracy and the parameter table.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

import decouple
from decouple.experiments.datasets import mnist_loaders


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", default="scl", choices=sorted(decouple.METHODS))
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    train, test = mnist_loaders(batch_size=args.batch_size, seed=args.seed)
    model = SmallCNN()
    dm = decouple.convert(
        model,
        method=args.method,
        splits=["block1", "block2"],  # three stages; the last trains block3 and the classifier
        example_inputs=(torch.randn(2, 1, 28, 28),),
    )
    print(f"converted SmallCNN into {dm.num_stages} stages with method {args.method!r}")
    start = time.perf_counter()
    for epoch in range(args.epochs):
        dm.train()
        for i, (x, y) in enumerate(train):
            losses = dm.train_step(x, target=y)
            if i % 20 == 0:
                shown = "  ".join(f"{k} {v:.3f}" for k, v in losses.items())
                print(f"epoch {epoch + 1} batch {i:3d}/{len(train)}  {shown}")
    print(f"trained in {time.perf_counter() - start:.1f}s")

    infer = dm.inference_module()
    print(f"test accuracy: {accuracy(infer, test):.4f}")
    model.load_state_dict(dm.effective_state_dict())  # the trained weights, back in SmallCNN
    model.eval()
    print(f"test accuracy of SmallCNN with the trained weights: {accuracy(model, test):.4f}")
    print(dm.param_counts())


if __name__ == "__main__":
    main()
