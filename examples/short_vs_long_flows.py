"""Multiple short gradient flows vs a single gradient flow (Delog-SCL section 3.3, figure 4), at small scale.

    python examples/short_vs_long_flows.py                       # vanilla ConvNet on the bundled MNIST subset
    python examples/short_vs_long_flows.py --archs vgg --epochs 8 --seeds 3
    python examples/short_vs_long_flows.py --dataset cifar10 --data-root ~/data --device cuda \\
        --width paper --epochs 200 --views 2                     # paper scale, on a GPU

Trains the same model, from the same initial weights on the same batches, three ways:

- "scl (short flows)": Delog-SCL. Every cut detaches, so each block learns from its own
  SupCon head: one short gradient flow per block.
- "bp (single flow)": the paper's baseline. The local SupCon losses are removed and the output
  loss flows through the whole network (method ``bp`` on the same stages).
- "scl heads, no detach": the same SupCon heads as scl, but no detach at the cuts; the local
  losses and the output loss are summed and backpropagated end to end, so every loss's flow is
  long (``--no-joint`` leaves it out). It separates the effect of cutting the flow from the
  effect of having local losses at all.

Writes accuracy_per_epoch.csv, summary.csv, tables.txt, accuracy_vs_epoch.png and config.json
to --out and prints the test accuracy after each epoch.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch

import decouple
from decouple.experiments.models import ARCHITECTURES
from decouple.experiments.results import accuracy_table, plot_curves, write_epochs_csv, write_summary_csv
from decouple.experiments.study import Variant, add_study_arguments, run_script, study_from_args
from decouple.model import DecoupledModel
from decouple.runtime.batches import unpack_batch
from decouple.runtime.stats import RunStats, batch_size

#: scl's heads and losses without the detach at the cuts: every local loss reaches the stages before it
JOINT = decouple.register_method(
    "scl_no_detach",
    decouple.METHODS["scl"].make_objective,
    options=decouple.METHODS["scl"].options,
    detach=False,
    replace=True,  # loading this file again registers it again
    summary="scl's heads without the detach at the cuts; train with joint_fit (summed losses)",
)


def joint_fit(
    dm: DecoupledModel, loader: Iterable[Any], epochs: int, *, progress: bool = True,
    on_epoch_end: Callable[[int, RunStats], Any] | None = None,
) -> list[RunStats]:  # fmt: skip
    """Train on the sum of every stage's loss, backpropagated end to end (a single long flow per loss)."""
    from tqdm.auto import tqdm

    history = []
    optimizers = [s.optimizer for s in dm.stages if s.optimizer is not None]
    for epoch in range(epochs):
        dm.train()
        sums = [0.0] * sum(s.objective is not None for s in dm.stages)
        batches = samples = 0
        start = time.perf_counter()
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{epochs}", unit="batch", disable=not progress, leave=True)
        for batch in bar:
            args, kwargs, target = unpack_batch(batch)
            losses = dm.local_losses(*args, target=target, **kwargs)
            for optimizer in optimizers:
                optimizer.zero_grad(set_to_none=True)
            torch.stack(losses).sum().backward()
            for optimizer in optimizers:
                optimizer.step()
            dm.steps += 1
            sums = [s + float(loss.detach()) for s, loss in zip(sums, losses)]
            batches += 1
            samples += batch_size(args, kwargs, target)
            bar.set_postfix({f"s{k}": f"{float(loss.detach()):.3f}" for k, loss in enumerate(losses)}, refresh=False)
        bar.close()
        dm.end_epoch()  # the per-epoch learning-rate schedule
        stats = RunStats(
            {f"stage{k}": s / max(batches, 1) for k, s in enumerate(sums)},
            batches,
            samples,
            time.perf_counter() - start,
        )
        history.append(stats)
        if on_epoch_end is not None:
            on_epoch_end(epoch, stats)
    return history


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-joint", action="store_true", help="leave out the 'scl heads, no detach' variant")
    add_study_arguments(parser, archs="convnet", epochs=6, seeds=2, out="results/short_vs_long_flows")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    study = study_from_args(args)
    study.save_config(argv if argv is not None else sys.argv[1:])
    variants = [Variant("scl (short flows)", "scl"), Variant("bp (single flow)", "bp")]
    if not args.no_joint:
        variants.append(Variant("scl heads, no detach", JOINT.name, fit=joint_fit))
    print(f"{study.dataset}: {', '.join(study.archs)}; {study.describe()}", flush=True)
    results = study.run(variants)

    titles = {a: ARCHITECTURES[a].title for a in study.archs}
    table = accuracy_table(results, titles)
    epochs = "\n".join(
        f"{r.arch:<9}{r.label:<22} seed {r.seed}: " + " ".join(f"{100 * a:.2f}" for a in r.test_accuracy)
        for r in results
    )
    print(f"\ntest accuracy per epoch\n{epochs}\n\nafter {study.epochs} epochs\n{table}")
    (study.out / "tables.txt").write_text(f"test accuracy per epoch\n{epochs}\n\n{table}\n")
    write_epochs_csv(results, study.out / "accuracy_per_epoch.csv")
    write_summary_csv(results, study.out / "summary.csv")
    plot_curves(results, study.out / "accuracy_vs_epoch.png", titles=titles,
                title="multiple short gradient flows vs a single gradient flow")  # fmt: skip
    print(f"\nwrote {study.out}/: accuracy_per_epoch.csv, summary.csv, tables.txt, accuracy_vs_epoch.png, config.json")
    return 0


if __name__ == "__main__":
    run_script(main, "short_vs_long_flows.py")
