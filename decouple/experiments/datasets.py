"""Small real data sets shipped inside the package (an MNIST subset, Rotten Tomatoes snippets, health news
headlines), with loaders.

The files live in ``decouple/experiments/data/`` (built by ``tools/make_datasets.py``, sources and licences in
``decouple/experiments/data/README.md``), so everything here works offline right after ``pip install``:

    train, test = mnist_loaders(batch_size=128, seed=0)       # (x, y) batches, x (B, 1, 28, 28)
    train, test, vocab = text_loaders(batch_size=64)          # (ids, mask, label) batches
    text_loaders(dataset="health_news")                       # 16-way news source of health headlines

Text is tokenised by :func:`tokenize` (lowercase, then the regex ``[a-z0-9']+``) into a word-level
:class:`Vocabulary` built from the training split, as in the papers; unseen words map to ``<unk>``.
"""

from __future__ import annotations

import csv
import gzip
import io
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from ..errors import DecoupleError, close_matches

__all__ = [
    "SPLITS",
    "MNIST_MEAN",
    "MNIST_STD",
    "PAD",
    "UNK",
    "PAD_ID",
    "UNK_ID",
    "load_mnist",
    "mnist_loaders",
    "load_rotten_tomatoes",
    "load_health_news",
    "HEALTH_NEWS_SOURCES",
    "tokenize",
    "Vocabulary",
    "build_vocabulary",
    "text_loaders",
    "TEXT_DATASETS",
    "load_text",
]

SPLITS = ("train", "test")
MNIST_MEAN = 0.1307
MNIST_STD = 0.3081
PAD, UNK = "<pad>", "<unk>"
PAD_ID, UNK_ID = 0, 1

_MNIST_FILE = "mnist_subset.npz"
_TEXT_FILE = "rotten_tomatoes.csv.gz"
#: the bundled text data sets ``text_loaders(dataset=...)`` reads
TEXT_DATASETS = ("rotten_tomatoes", "health_news")
#: the 16 Twitter accounts of ``health_news``; label ``i`` is ``HEALTH_NEWS_SOURCES[i]``
HEALTH_NEWS_SOURCES = (
    "bbchealth", "cbchealth", "cnnhealth", "everydayhealth", "foxnewshealth", "gdnhealthcare", "goodhealth",
    "KaiserHealthNews", "latimeshealth", "msnhealthnews", "NBChealth", "nprhealth", "nytimeshealth", "reuters_health",
    "usnewshealth", "wsjhealth",
)  # fmt: skip
_HEALTH_FILE = "health_news.csv.gz"
_TOKEN_RE = re.compile(r"[a-z0-9']+")


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise DecoupleError(
            f"unknown split {split!r}; valid splits are {', '.join(map(repr, SPLITS))}"
            + close_matches(str(split), SPLITS)
        )


def _check_positive(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DecoupleError(f"{name} must be a positive int, got {value!r}")


def _read_data_file(name: str) -> bytes:
    """The bytes of ``decouple/experiments/data/<name>``, located with importlib.resources."""
    resource = resources.files("decouple.experiments") / "data" / name
    if not resource.is_file():
        raise FileNotFoundError(
            f"decouple/experiments/data/{name} is missing from the installed package; reinstall torch-decouple, "
            "or rebuild it in a source checkout with `python tools/make_datasets.py`"
        )
    return resource.read_bytes()


@cache
def _mnist_arrays() -> dict[str, np.ndarray]:
    """The shipped MNIST arrays (uint8 images (N, 28, 28), uint8 labels), read once and made read-only."""
    with np.load(io.BytesIO(_read_data_file(_MNIST_FILE)), allow_pickle=False) as npz:
        arrays = {key: npz[key] for key in npz.files}
    for array in arrays.values():
        array.flags.writeable = False
    return arrays


def load_mnist(split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """The shipped MNIST subset: images float32 (N, 1, 28, 28) in [0, 1] and labels int64 (N,).

    ``train`` has 12,000 images from the official training set, ``test`` 2,000 from the official
    test set, both 10% per class and ordered so that every prefix of 10 * k samples holds k of each class.
    """
    _check_split(split)
    arrays = _mnist_arrays()
    x = torch.from_numpy(arrays[f"x_{split}"].astype(np.float32)).div_(255.0).unsqueeze(1)
    y = torch.from_numpy(arrays[f"y_{split}"].astype(np.int64))
    return x, y


def _take(x: torch.Tensor, y: torch.Tensor, limit: int | None, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``limit`` samples (all of them for None)."""
    if limit is None:
        return x, y
    _check_positive(name, limit)
    if limit > len(y):
        raise DecoupleError(f"{name}={limit} exceeds the {len(y)} shipped samples; pass at most {len(y)} or None")
    return x[:limit], y[:limit]


def _seeded_generator(seed: int) -> torch.Generator:
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator


def mnist_loaders(
    batch_size: int = 128,
    *,
    train_limit: int | None = None,
    test_limit: int | None = None,
    seed: int = 0,
    normalize: bool = True,
    drop_last: bool = False,
) -> tuple[DataLoader, DataLoader]:
    """Train and test loaders of ``(x, y)`` batches over the shipped MNIST subset.

    The training loader reshuffles every epoch from a ``torch.Generator`` seeded by ``seed`` (same
    seed, same order); the test loader keeps the file order. ``normalize`` standardises the pixels
    with the usual MNIST mean and std (0.1307, 0.3081); ``*_limit`` keeps the first N samples;
    ``drop_last`` drops a last training batch smaller than ``batch_size`` (data-parallel replicas
    need every batch to split into equal shards).
    """
    _check_positive("batch_size", batch_size)
    x_train, y_train = _take(*load_mnist("train"), train_limit, "train_limit")
    x_test, y_test = _take(*load_mnist("test"), test_limit, "test_limit")
    if normalize:
        x_train = (x_train - MNIST_MEAN) / MNIST_STD
        x_test = (x_test - MNIST_MEAN) / MNIST_STD
    train = DataLoader(
        TensorDataset(x_train, y_train),
        batch_size=batch_size,
        shuffle=True,
        generator=_seeded_generator(seed),
        drop_last=drop_last,
    )
    test = DataLoader(TensorDataset(x_test, y_test), batch_size=batch_size, shuffle=False)
    return train, test


@cache
def _text_rows() -> tuple[tuple[str, int, str], ...]:
    """The shipped snippets as (text, label, split) rows, read once."""
    text = gzip.decompress(_read_data_file(_TEXT_FILE)).decode("utf-8")
    return tuple(
        (row["text"], int(row["label"]), row["split"]) for row in csv.DictReader(io.StringIO(text, newline=""))
    )


def load_rotten_tomatoes(split: str = "train") -> tuple[list[str], torch.Tensor]:
    """The Rotten Tomatoes snippets of ``split`` and their labels, int64 (N,), 1 = fresh, 0 = rotten.

    ``train`` has 10,000 snippets, ``test`` the other 2,808; the split is stratified by label and
    never puts the same text in both.
    """
    _check_split(split)
    rows = [(text, label) for text, label, s in _text_rows() if s == split]
    return [text for text, _ in rows], torch.tensor([label for _, label in rows], dtype=torch.int64)


@cache
def _health_rows() -> tuple[tuple[str, int, str], ...]:
    text = gzip.decompress(_read_data_file(_HEALTH_FILE)).decode("utf-8")
    rows = csv.DictReader(io.StringIO(text, newline=""))
    return tuple((row["text"], int(row["label"]), row["split"]) for row in rows)


def load_health_news(split: str = "train") -> tuple[list[str], torch.Tensor]:
    """Health news headlines tweeted by 16 news outlets, and which outlet, int64 (N,) (``HEALTH_NEWS_SOURCES``).

    ``train`` has 1,000 headlines per outlet (16,000), ``test`` 250 per outlet (4,000); links are
    removed, and no text is in both splits or under two outlets (UCI "Health News in Twitter").
    """
    _check_split(split)
    rows = [(text, label) for text, label, s in _health_rows() if s == split]
    return [text for text, _ in rows], torch.tensor([label for _, label in rows], dtype=torch.int64)


def load_text(dataset: str = "rotten_tomatoes", split: str = "train") -> tuple[list[str], torch.Tensor]:
    """The texts of a bundled text data set's ``split`` and their labels, int64 (N,) (see :data:`TEXT_DATASETS`)."""
    if dataset == "rotten_tomatoes":
        return load_rotten_tomatoes(split)
    if dataset == "health_news":
        return load_health_news(split)
    known = ", ".join(TEXT_DATASETS)
    raise DecoupleError(
        f"unknown text data set {dataset!r}; bundled: {known}" + close_matches(str(dataset), TEXT_DATASETS)
    )


def tokenize(text: str) -> list[str]:
    """Lowercase ``text`` and return its runs of ``[a-z0-9']`` (other characters separate words)."""
    return _TOKEN_RE.findall(text.lower())


def _check_texts(texts: Iterable[str]) -> None:
    if isinstance(texts, str):
        raise TypeError("texts must be a sequence of strings, got a single str; wrap it in a list: [text]")


@dataclass(frozen=True)
class Vocabulary:
    """A word-level vocabulary: ``tokens[i]`` is the word of id ``i``; ids 0 and 1 are ``<pad>`` and ``<unk>``."""

    tokens: tuple[str, ...]
    _index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if tuple(self.tokens[:2]) != (PAD, UNK):
            raise DecoupleError(f"a Vocabulary must start with {PAD!r}, {UNK!r}; got {tuple(self.tokens[:2])!r}")
        index = {token: i for i, token in enumerate(self.tokens)}
        if len(index) != len(self.tokens):
            duplicates = sorted(t for t, n in Counter(self.tokens).items() if n > 1)
            raise DecoupleError(f"a Vocabulary lists each token once; duplicated: {duplicates[:5]!r}")
        object.__setattr__(self, "tokens", tuple(self.tokens))
        object.__setattr__(self, "_index", index)

    def __len__(self) -> int:
        return len(self.tokens)

    def __contains__(self, token: object) -> bool:
        return token in self._index

    def id(self, token: str) -> int:
        """The id of ``token``, or ``UNK_ID`` for a word outside the vocabulary."""
        return self._index.get(token, UNK_ID)

    def encode(self, texts: Sequence[str], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids int64 (N, max_len) and mask bool (N, max_len) of ``texts``, right-padded with ``<pad>``.

        Texts longer than ``max_len`` words keep their first ``max_len``; ``mask`` is True on real
        tokens (an empty text has an all-False row).
        """
        _check_texts(texts)
        _check_positive("max_len", max_len)
        ids = torch.full((len(texts), max_len), PAD_ID, dtype=torch.int64)
        for row, text in enumerate(texts):
            words = tokenize(text)[:max_len]
            ids[row, : len(words)] = torch.tensor([self.id(w) for w in words], dtype=torch.int64)
        return ids, ids != PAD_ID


def build_vocabulary(texts: Iterable[str], max_size: int = 30000, min_freq: int = 1) -> Vocabulary:
    """The vocabulary of ``texts``: ``<pad>``, ``<unk>``, then words seen at least ``min_freq`` times.

    Words are ordered most frequent first, ties alphabetically, and cut so that the vocabulary,
    specials included, has at most ``max_size`` entries.
    """
    _check_texts(texts)
    _check_positive("min_freq", min_freq)
    if isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 2:
        raise DecoupleError(f"max_size must be an int >= 2 (room for {PAD!r} and {UNK!r}), got {max_size!r}")
    counts = Counter(word for text in texts for word in tokenize(text))
    words = sorted((w for w, n in counts.items() if n >= min_freq), key=lambda w: (-counts[w], w))
    return Vocabulary((PAD, UNK, *words[: max_size - 2]))


def text_loaders(
    batch_size: int = 64,
    *,
    max_len: int = 48,
    max_vocab: int = 30000,
    seed: int = 0,
    dataset: str = "rotten_tomatoes",
) -> tuple[DataLoader, DataLoader, Vocabulary]:
    """Train and test loaders of ``(ids, mask, label)`` batches over a bundled text data set (``TEXT_DATASETS``).

    The vocabulary is built from the training split only (at most ``max_vocab`` entries); texts are
    encoded to ``max_len`` ids. The training loader reshuffles every epoch from a ``torch.Generator``
    seeded by ``seed``; the test loader keeps the file order.
    """
    _check_positive("batch_size", batch_size)
    train_texts, train_labels = load_text(dataset, "train")
    test_texts, test_labels = load_text(dataset, "test")
    vocab = build_vocabulary(train_texts, max_size=max_vocab)
    train = DataLoader(
        TensorDataset(*vocab.encode(train_texts, max_len), train_labels),
        batch_size=batch_size,
        shuffle=True,
        generator=_seeded_generator(seed),
    )
    test = DataLoader(TensorDataset(*vocab.encode(test_texts, max_len), test_labels), batch_size=batch_size)
    return train, test, vocab
