"""Compare local-learning methods on a vanilla ConvNet, a VGG-style net and ResNet-18 (the papers' tables 2-5).

    python examples/vision_compare.py                                  # ConvNet + VGG on the bundled MNIST subset
    python examples/vision_compare.py --methods all                    # every registered method (dgl, predsim, ...)
    python examples/vision_compare.py --archs convnet --seeds 3 --epochs 4
    python examples/vision_compare.py --archs convnet,vgg,resnet18 --dataset cifar10 --data-root ~/data \\
        --device cuda --width paper --epochs 200 --seeds 5 --views 2  # paper scale, on a GPU

Prints the test accuracy table (rows methods, columns architectures, mean ± std over seeds) and
the parameter table (training vs inference parameters per method); writes to --out:
accuracy_per_epoch.csv, summary.csv, accuracy_vs_epoch.png (test accuracy per epoch per
method, the papers' figure) and config.json. Every method of one (architecture, seed) starts
from the same initial weights and sees the same batches. ``--methods`` takes names from
``decouple.METHODS`` (default: the papers' bp, early_exit, al, scl) or ``all``. AL runs with first_loss=ce,
target_grad=False and a bridge with a 1024-wide hidden layer unless --option al:KEY=VALUE says
otherwise (decouple.experiments.RECIPES).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from decouple import METHODS
from decouple.errors import ConfigError
from decouple.experiments import RECIPES
from decouple.experiments.models import ARCHITECTURES
from decouple.experiments.results import (
    accuracy_table,
    parameter_table,
    plot_curves,
    write_epochs_csv,
    write_summary_csv,
)
from decouple.experiments.study import Variant, add_study_arguments, run_script, study_from_args

METHOD_ORDER = ("bp", "early_exit", "al", "scl")  # the papers' row order; --methods all appends the others
DEFAULT_OPTIONS = RECIPES  # --option al:KEY=VALUE overrides them


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--methods",
        default=",".join(METHOD_ORDER),
        help=f"comma-separated registered methods, or 'all' (default {','.join(METHOD_ORDER)}; all: {','.join(METHODS)})",
    )
    add_study_arguments(parser, archs="convnet,vgg", epochs=3, seeds=3, out="results/vision_compare")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    study = study_from_args(args)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if methods == ["all"]:
        methods = [*(m for m in METHOD_ORDER if m in METHODS), *(m for m in METHODS if m not in METHOD_ORDER)]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ConfigError(f"--methods: unknown {unknown}; choose from {', '.join(sorted(METHODS))}")
    for method, options in DEFAULT_OPTIONS.items():
        study.method_options[method] = {**options, **study.method_options.get(method, {})}
    study.save_config(argv if argv is not None else sys.argv[1:])
    print(f"{study.dataset}: {', '.join(study.archs)} x {', '.join(methods)}; {study.describe()}", flush=True)
    print(f"method options: {study.method_options}", flush=True)
    results = study.run([Variant(m, m) for m in methods])

    titles = {a: ARCHITECTURES[a].title for a in study.archs}
    table = accuracy_table(results, titles)
    params = parameter_table(results, titles)
    print(f"\ntest accuracy on {study.dataset} after {study.epochs} epochs\n{table}\n\n{params}")
    (study.out / "tables.txt").write_text(f"{table}\n\n{params}\n")
    write_epochs_csv(results, study.out / "accuracy_per_epoch.csv")
    write_summary_csv(results, study.out / "summary.csv")
    plot_curves(results, study.out / "accuracy_vs_epoch.png", titles=titles,
                title=f"test accuracy vs epoch on {study.dataset} (mean ± std over {len(study.seeds)} seeds)")  # fmt: skip
    print(f"\nwrote {study.out}/: accuracy_per_epoch.csv, summary.csv, tables.txt, accuracy_vs_epoch.png, config.json")
    return 0


if __name__ == "__main__":
    run_script(main, "vision_compare.py")
