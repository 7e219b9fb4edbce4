"""Identity vs linear vs MLP projection heads for SCL (Delog-SCL appendix A.4, table 9), at small scale.

    python examples/projection_heads.py                          # ConvNet + VGG on the bundled MNIST subset
    python examples/projection_heads.py --archs vgg --seeds 3 --baseline
    python examples/projection_heads.py --archs vgg,resnet18 --dataset cifar10 --data-root ~/data \\
        --device cuda --width paper --epochs 200 --views 2      # paper scale, on a GPU

Every stage but the last trains its block with a supervised contrastive loss on the output of a
projection head g: the identity (the pooled representation itself), a linear map, or the papers'
MLP (Linear(d, 512)-ReLU-Linear(512, 1024)). Only the head differs between the rows; the
inference model (and its parameter count) is the same. Writes accuracy_per_epoch.csv,
summary.csv, tables.txt, accuracy_vs_epoch.png and config.json to --out.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from decouple.experiments.models import ARCHITECTURES
from decouple.experiments.results import (
    accuracy_table,
    parameter_table,
    plot_curves,
    write_epochs_csv,
    write_summary_csv,
)
from decouple.experiments.study import Variant, add_study_arguments, run_script, study_from_args

HEADS = ("identity", "linear", "mlp")  # the rows of the papers' table


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--heads", default=",".join(HEADS), help=f"comma-separated, from {', '.join(HEADS)} (default all)"
    )
    parser.add_argument("--baseline", action="store_true", help="also train the model with bp, for reference")
    add_study_arguments(parser, archs="convnet,vgg", epochs=3, seeds=2, out="results/projection_heads")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    study = study_from_args(args)
    heads = [h.strip() for h in args.heads.split(",") if h.strip()]
    if not heads or any(h not in HEADS for h in heads):
        from decouple.errors import ConfigError

        raise ConfigError(f"--heads takes a comma-separated subset of {', '.join(HEADS)}, got {args.heads!r}")
    study.save_config(argv if argv is not None else sys.argv[1:])
    variants = [Variant(f"scl, {h} head", "scl", {"head": h}) for h in heads]
    if args.baseline:
        variants.append(Variant("bp", "bp"))
    print(f"{study.dataset}: {', '.join(study.archs)} x heads {', '.join(heads)}; {study.describe()}", flush=True)
    results = study.run(variants)

    titles = {a: ARCHITECTURES[a].title for a in study.archs}
    table = accuracy_table(results, titles)
    params = parameter_table(results, titles)
    print(f"\ntest accuracy on {study.dataset} after {study.epochs} epochs\n{table}\n\n{params}")
    (study.out / "tables.txt").write_text(f"{table}\n\n{params}\n")
    write_epochs_csv(results, study.out / "accuracy_per_epoch.csv")
    write_summary_csv(results, study.out / "summary.csv")
    plot_curves(
        results,
        study.out / "accuracy_vs_epoch.png",
        titles=titles,
        title="SCL with identity, linear and MLP projection heads",
    )
    print(f"\nwrote {study.out}/: accuracy_per_epoch.csv, summary.csv, tables.txt, accuracy_vs_epoch.png, config.json")
    return 0


if __name__ == "__main__":
    run_script(main, "projection_heads.py")
