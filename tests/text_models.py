"""Sequence models the tests convert: small Hugging Face models built from configs, and the papers' text classifiers.

Every Hugging Face model is built from a small config (no hub download); ``HF_HUB_OFFLINE`` is set
before transformers is imported.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def last_token_state(x: torch.Tensor, mask: torch.Tensor, directions: int) -> torch.Tensor:
    """A bidirectional RNN's final state from its output: forward at the last real token, backward at token 0."""
    positions = torch.arange(1, x.shape[1] + 1, device=x.device)
    last = ((mask != 0).long() * positions).argmax(dim=1)
    forward = x[torch.arange(x.shape[0], device=x.device), last]
    if directions == 1:
        return forward
    hidden = x.shape[-1] // 2
    return torch.cat([forward[:, :hidden], x[:, 0, hidden:]], dim=1)


class BiLSTMClassifier(nn.Module):
    """The SCPL paper's LSTM: embedding, 3 bidirectional LSTM layers, FC-tanh-FC on the final state."""

    def __init__(self, vocab_size: int, embed_dim: int = 16, hidden: int = 16, num_classes: int = 2) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=0)
        self.lstm1 = nn.LSTM(embed_dim, hidden, batch_first=True, bidirectional=True)
        self.lstm2 = nn.LSTM(2 * hidden, hidden, batch_first=True, bidirectional=True)
        self.lstm3 = nn.LSTM(2 * hidden, hidden, batch_first=True, bidirectional=True)
        self.classifier = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.Tanh(), nn.Linear(hidden, num_classes))

    def forward(self, ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        x = self.embedding(ids)
        x, _ = self.lstm1(x)
        x, _ = self.lstm2(x)
        x, _ = self.lstm3(x)
        return self.classifier(last_token_state(x, attention_mask, 2))


class Embeddings(nn.Module):
    """Token plus learned position embeddings."""

    def __init__(self, vocab_size: int, dim: int, max_len: int) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocab_size, dim, padding_idx=0)
        self.positions = nn.Embedding(max_len, dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(ids.shape[1], device=ids.device)
        return self.tokens(ids) + self.positions(positions)


class TransformerClassifier(nn.Module):
    """The SCPL paper's Transformer: embedding, 3 encoder layers, masked mean, FC-tanh-FC."""

    def __init__(
        self, vocab_size: int, dim: int = 16, heads: int = 2, layers: int = 3, num_classes: int = 2,
        max_len: int = 64, dropout: float = 0.1,
    ) -> None:  # fmt: skip
        super().__init__()
        self.embedding = Embeddings(vocab_size, dim, max_len)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout=dropout, batch_first=True) for _ in range(layers)
        )
        self.classifier = nn.Sequential(nn.Linear(dim, dim), nn.Tanh(), nn.Linear(dim, num_classes))

    def forward(self, ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        x = self.embedding(ids)
        padding = attention_mask == 0
        for layer in self.layers:
            x = layer(x, src_key_padding_mask=padding)
        weights = attention_mask.to(x.dtype).unsqueeze(-1)
        return self.classifier((x * weights).sum(1) / weights.sum(1).clamp(min=1.0))


class TinyGPT(nn.Module):
    """A nanoGPT-style language model whose head shares the token embedding's weight."""

    def __init__(self, vocab_size: int = 50, dim: int = 16, layers: int = 2, max_len: int = 32) -> None:
        super().__init__()
        self.wte = nn.Embedding(vocab_size, dim)
        self.wpe = nn.Embedding(max_len, dim)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(dim, 2, 2 * dim, batch_first=True) for _ in range(layers)
        )
        self.ln_f = nn.LayerNorm(dim)
        self.lm_head = nn.Linear(dim, vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # tied, as in GPT-2

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.wte(ids) + self.wpe(torch.arange(ids.shape[1], device=ids.device))
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))


# ---------------------------------------------------------------------------------------------
# Hugging Face models


def hf_bert(num_labels: int = 3, layers: int = 3, dropout: float = 0.1) -> nn.Module:
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(
        vocab_size=64, hidden_size=16, num_hidden_layers=layers, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=32, num_labels=num_labels, hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
    )  # fmt: skip
    return BertForSequenceClassification(config)


def hf_distilbert(num_labels: int = 3, layers: int = 3) -> nn.Module:
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    config = DistilBertConfig(
        vocab_size=64, dim=16, n_layers=layers, n_heads=2, hidden_dim=32, max_position_embeddings=32,
        num_labels=num_labels,
    )  # fmt: skip
    return DistilBertForSequenceClassification(config)


def _gpt2_config(num_labels: int, layers: int, **extra: Any) -> Any:
    from transformers import GPT2Config

    return GPT2Config(
        vocab_size=64, n_embd=16, n_layer=layers, n_head=2, n_positions=32, num_labels=num_labels,
        pad_token_id=0, bos_token_id=1, eos_token_id=2, use_cache=False, **extra,
    )  # fmt: skip


def hf_gpt2(num_labels: int = 3, layers: int = 3) -> nn.Module:
    from transformers import GPT2ForSequenceClassification

    return GPT2ForSequenceClassification(_gpt2_config(num_labels, layers))


def hf_gpt2_lm(layers: int = 2) -> nn.Module:
    from transformers import GPT2LMHeadModel

    return GPT2LMHeadModel(_gpt2_config(2, layers))


def hf_vit(num_labels: int = 3, layers: int = 3) -> nn.Module:
    from transformers import ViTConfig, ViTForImageClassification

    config = ViTConfig(
        image_size=8, patch_size=4, num_channels=3, hidden_size=16, num_hidden_layers=layers, num_attention_heads=2,
        intermediate_size=32, num_labels=num_labels,
    )  # fmt: skip
    return ViTForImageClassification(config)


def token_batch(n: int, t: int = 8, vocab: int = 64, seed: int = 0) -> dict[str, torch.Tensor]:
    """``input_ids`` (ids >= 3, right padding) and ``attention_mask`` with varied lengths."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (n, t), generator=g)
    lengths = torch.randint(t // 2, t + 1, (n,), generator=g)
    lengths[0] = t
    mask = (torch.arange(t)[None, :] < lengths[:, None]).long()
    return {"input_ids": ids * mask, "attention_mask": mask}


@dataclass(frozen=True)
class Case:
    """A model to convert: how to build it, where to split, and example inputs."""

    build: Callable[[], nn.Module]
    splits: list[str]
    inputs: Callable[[int], dict[str, torch.Tensor]]


def _images(n: int) -> dict[str, torch.Tensor]:
    return {"pixel_values": torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(n))}


HF_CASES: dict[str, Case] = {
    "bert": Case(hf_bert, ["bert.embeddings", "bert.encoder.layer.0", "bert.encoder.layer.1"], token_batch),
    "distilbert": Case(
        hf_distilbert,
        ["distilbert.embeddings", "distilbert.transformer.layer.0", "distilbert.transformer.layer.1"],
        token_batch,
    ),
    "gpt2": Case(hf_gpt2, ["transformer.h.0", "transformer.h.1", "transformer.h.2"], token_batch),
    "vit": Case(hf_vit, ["vit.embeddings", "vit.layers.0", "vit.layers.1"], _images),
}


def _text(n: int) -> dict[str, torch.Tensor]:
    batch = token_batch(n, t=8, vocab=40)
    return {"ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}


TEXT_CASES: dict[str, Case] = {
    "lstm": Case(lambda: BiLSTMClassifier(40), ["embedding", "lstm1", "lstm2"], _text),
    "transformer": Case(lambda: TransformerClassifier(40), ["embedding", "layers.0", "layers.1"], _text),
}
