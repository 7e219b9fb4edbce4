"""The shipped data sets and their loaders: shapes, dtypes, balance, determinism, vocabulary, encoding."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import decouple
from decouple.errors import DecoupleError
from decouple.experiments.datasets import (
    HEALTH_NEWS_SOURCES,
    MNIST_MEAN,
    MNIST_STD,
    PAD,
    PAD_ID,
    TEXT_DATASETS,
    UNK,
    UNK_ID,
    Vocabulary,
    build_vocabulary,
    load_health_news,
    load_mnist,
    load_rotten_tomatoes,
    load_text,
    mnist_loaders,
    text_loaders,
    tokenize,
)


def _labels_in_order(loader: torch.utils.data.DataLoader) -> torch.Tensor:
    return torch.cat([batch[-1] for batch in loader])


# --- the files -----------------------------------------------------------------------------------


def test_data_files_live_inside_the_package() -> None:
    package_dir = Path(decouple.__file__).parent / "experiments"
    for name in ("mnist_subset.npz", "rotten_tomatoes.csv.gz", "health_news.csv.gz"):
        resource = resources.files("decouple.experiments").joinpath("data", name)
        assert resource.is_file()
        assert Path(str(resource)).parent == package_dir / "data"


# --- MNIST ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("split", "n"), [("train", 12_000), ("test", 2_000)])
def test_load_mnist_shapes_dtypes_ranges(split: str, n: int) -> None:
    x, y = load_mnist(split)
    assert x.shape == (n, 1, 28, 28) and x.dtype == torch.float32
    assert y.shape == (n,) and y.dtype == torch.int64
    assert x.min().item() == 0.0 and x.max().item() == 1.0
    assert set(y.tolist()) == set(range(10))
    assert abs(x.mean().item() - MNIST_MEAN) < 0.01


@pytest.mark.parametrize("split", ["train", "test"])
def test_mnist_is_class_balanced_in_every_prefix_of_ten(split: str) -> None:
    _, y = load_mnist(split)
    assert torch.bincount(y, minlength=10).tolist() == [len(y) // 10] * 10
    assert (torch.sort(y.view(-1, 10), dim=1).values == torch.arange(10)).all()


def test_load_mnist_returns_fresh_tensors() -> None:
    x, _ = load_mnist("test")
    x.zero_()
    assert load_mnist("test")[0].max().item() == 1.0


def test_mnist_loaders_batches_limits_and_normalisation() -> None:
    train, test = mnist_loaders(batch_size=100, train_limit=1_000, test_limit=300)
    assert len(train.dataset) == 1_000 and len(test.dataset) == 300
    x, y = next(iter(train))
    assert x.shape == (100, 1, 28, 28) and y.shape == (100,) and y.dtype == torch.int64
    assert torch.bincount(_labels_in_order(train), minlength=10).tolist() == [100] * 10
    raw = load_mnist("test")[0][:300]
    assert torch.allclose(test.dataset.tensors[0], (raw - MNIST_MEAN) / MNIST_STD)
    plain_train, _ = mnist_loaders(train_limit=10, test_limit=10, normalize=False)
    assert torch.equal(plain_train.dataset.tensors[0], load_mnist("train")[0][:10])


def test_mnist_loaders_same_seed_same_order_other_seed_other_order() -> None:
    def order(seed: int) -> torch.Tensor:
        train, _ = mnist_loaders(batch_size=50, train_limit=500, test_limit=10, seed=seed)
        return torch.cat([_labels_in_order(train), _labels_in_order(train)])  # two epochs

    first = order(0)
    assert torch.equal(first, order(0))
    assert not torch.equal(first, order(1))
    assert not torch.equal(first[:500], first[500:])  # reshuffled each epoch


def test_mnist_test_loader_keeps_file_order() -> None:
    _, test = mnist_loaders(batch_size=64, test_limit=200, seed=3)
    assert torch.equal(_labels_in_order(test), load_mnist("test")[1][:200])


@pytest.mark.parametrize("kwargs", [{"train_limit": 12_001}, {"test_limit": 0}, {"batch_size": 0}])
def test_mnist_loaders_reject_bad_sizes(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="train_limit|test_limit|batch_size"):
        mnist_loaders(**kwargs)


@pytest.mark.parametrize("loader", [load_mnist, load_rotten_tomatoes, load_health_news])
def test_bad_split_names_the_valid_splits(loader) -> None:
    with pytest.raises(ValueError, match=r"unknown split 'valid'.*'train', 'test'"):
        loader("valid")


# --- Rotten Tomatoes -----------------------------------------------------------------------------


def test_rotten_tomatoes_splits() -> None:
    train_texts, train_labels = load_rotten_tomatoes("train")
    test_texts, test_labels = load_rotten_tomatoes("test")
    assert (len(train_texts), len(test_texts)) == (10_000, 2_808)
    for texts, labels in ((train_texts, train_labels), (test_texts, test_labels)):
        assert labels.dtype == torch.int64 and labels.shape == (len(texts),)
        assert set(labels.tolist()) == {0, 1}
        assert abs(labels.float().mean().item() - 7_403 / 12_808) < 0.005  # stratified: ~57.8% fresh
        assert all(isinstance(t, str) and t and t == t.strip() for t in texts)
    assert not set(train_texts) & set(test_texts)


# --- health news headlines ----------------------------------------------------------------------


def test_health_news_splits_are_balanced_disjoint_and_without_links() -> None:
    train_texts, train_labels = load_health_news("train")
    test_texts, test_labels = load_health_news("test")
    assert (len(train_texts), len(test_texts)) == (16_000, 4_000) and len(HEALTH_NEWS_SOURCES) == 16
    assert torch.bincount(train_labels).tolist() == [1_000] * 16
    assert torch.bincount(test_labels).tolist() == [250] * 16
    assert not set(train_texts) & set(test_texts)
    assert not any("http" in t for t in train_texts + test_texts)
    assert load_text("health_news", "test")[0] == test_texts


def test_text_loaders_take_every_bundled_data_set_and_name_them_on_a_typo() -> None:
    assert TEXT_DATASETS == ("rotten_tomatoes", "health_news")
    train, _, vocab = text_loaders(batch_size=256, max_len=8, max_vocab=500, dataset="health_news")
    ids, mask, y = next(iter(train))
    assert ids.shape == mask.shape == (256, 8) and int(y.max()) < 16 and len(vocab) == 500
    with pytest.raises(DecoupleError, match="unknown text data set 'health'.*did you mean 'health_news'"):
        text_loaders(dataset="health")


# --- tokenizer, vocabulary, encoding -------------------------------------------------------------


def test_tokenize_lowercases_and_keeps_apostrophes_and_digits() -> None:
    assert tokenize("It's a 10/10 FILM -- truly!") == ["it's", "a", "10", "10", "film", "truly"]
    assert tokenize("  ...  ") == []


def test_build_vocabulary_orders_by_frequency_then_alphabetically() -> None:
    vocab = build_vocabulary(["b a c", "a b", "a d"])
    assert vocab.tokens == (PAD, UNK, "a", "b", "c", "d")
    assert (vocab.id(PAD), vocab.id(UNK), vocab.id("a")) == (PAD_ID, UNK_ID, 2)
    assert vocab.id("never-seen") == UNK_ID and "never-seen" not in vocab
    assert build_vocabulary(["b a c", "a b", "a d"], max_size=4).tokens == (PAD, UNK, "a", "b")
    assert build_vocabulary(["b a c", "a b", "a d"], min_freq=2).tokens == (PAD, UNK, "a", "b")


def test_vocabulary_ids_are_stable_and_order_independent() -> None:
    texts, _ = load_rotten_tomatoes("train")
    vocab = build_vocabulary(texts, max_size=5_000)
    assert len(vocab) == 5_000
    assert vocab == build_vocabulary(list(reversed(texts)), max_size=5_000)
    assert vocab.tokens[:8] == (PAD, UNK, "the", "a", "and", "of", "to", "is")


def test_vocabulary_rejects_bad_tokens_and_sizes() -> None:
    with pytest.raises(ValueError, match="must start with"):
        Vocabulary(("a", PAD, UNK))
    with pytest.raises(ValueError, match="duplicated"):
        Vocabulary((PAD, UNK, "a", "a"))
    with pytest.raises(ValueError, match="max_size"):
        build_vocabulary(["a"], max_size=1)
    with pytest.raises(TypeError, match="wrap it in a list"):
        build_vocabulary("a single string")


def test_encode_pads_right_truncates_and_masks() -> None:
    vocab = build_vocabulary(["good film", "bad film"])
    ids, mask = vocab.encode(["Good film!", "a bad, bad, bad film", ""], max_len=3)
    g, f, b = vocab.id("good"), vocab.id("film"), vocab.id("bad")
    assert ids.dtype == torch.int64 and mask.dtype == torch.bool and ids.shape == mask.shape == (3, 3)
    assert ids.tolist() == [[g, f, PAD_ID], [UNK_ID, b, b], [PAD_ID] * 3]
    assert mask.tolist() == [[True, True, False], [True, True, True], [False] * 3]
    with pytest.raises(TypeError, match="wrap it in a list"):
        vocab.encode("good film", max_len=3)
    with pytest.raises(ValueError, match="max_len"):
        vocab.encode(["good"], max_len=0)


@settings(max_examples=50, deadline=None)
@given(texts=st.lists(st.text(alphabet="ab c'!", max_size=20), max_size=6), max_len=st.integers(1, 8))
def test_encode_mask_marks_exactly_the_kept_tokens(texts: list[str], max_len: int) -> None:
    vocab = build_vocabulary(["a b", "ab"])
    ids, mask = vocab.encode(texts, max_len)
    assert ids.shape == (len(texts), max_len)
    assert mask.sum(1).tolist() == [min(len(tokenize(t)), max_len) for t in texts]
    assert (ids[~mask] == PAD_ID).all() and (ids[mask] != PAD_ID).all()
    assert (mask[:, :-1] | ~mask[:, 1:]).all()  # right-padded: no real token after a pad


def test_text_loaders_batches_vocabulary_from_train_and_determinism() -> None:
    train, test, vocab = text_loaders(batch_size=32, max_len=16, max_vocab=2_000, seed=0)
    ids, mask, label = next(iter(train))
    assert ids.shape == mask.shape == (32, 16) and label.shape == (32,)
    assert (ids.dtype, mask.dtype, label.dtype) == (torch.int64, torch.bool, torch.int64)
    assert len(vocab) == 2_000 and int(ids.max()) < len(vocab)
    assert len(train.dataset) == 10_000 and len(test.dataset) == 2_808
    assert vocab == build_vocabulary(load_rotten_tomatoes("train")[0], max_size=2_000)
    same, _, _ = text_loaders(batch_size=32, max_len=16, max_vocab=2_000, seed=0)
    other, _, _ = text_loaders(batch_size=32, max_len=16, max_vocab=2_000, seed=1)
    assert torch.equal(next(iter(same))[0], ids)
    assert not torch.equal(next(iter(other))[0], ids)
