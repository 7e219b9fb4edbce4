"""How local heads read recurrent stages over padded text (issue 17): final states, embedding stages, LSTM state."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import decouple
from decouple.objectives.pools import FinalState, TokenMean, first_valid_index, last_valid_index

LENGTHS = [7, 4, 2]


def _padded(batch_first: bool = True) -> tuple[nn.LSTM, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    lstm = nn.LSTM(5, 4, batch_first=True, bidirectional=True)
    x = torch.randn(3, 7, 5)
    mask = torch.arange(7)[None] < torch.tensor(LENGTHS)[:, None]
    return lstm, x * mask[..., None], mask


def test_first_and_last_valid_index() -> None:
    right = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [0, 0, 0, 0]])
    assert first_valid_index(right).tolist() == [0, 0, 0]
    assert last_valid_index(right).tolist() == [2, 1, 0]
    assert first_valid_index(right.flip(1)).tolist() == [1, 2, 0]
    assert last_valid_index(right.flip(1)).tolist() == [3, 3, 0]


def test_final_state_with_a_mask_does_not_read_the_state_after_the_padding() -> None:
    """What nn.LSTM returns over right padding: h_n's forward half has read the padding; the pool must not."""
    lstm, x, mask = _padded()
    out, (h, c) = lstm(x)
    pooled = FinalState(directions=2)((out, (h, c)), mask)
    packed = pack_padded_sequence(x, torch.tensor(LENGTHS), batch_first=True, enforce_sorted=False)
    _, (h_packed, _) = lstm(packed)
    # forward direction: exactly the state after the last real token (what packing gives)
    torch.testing.assert_close(pooled[:, :4], h_packed[0])
    # backward direction: where it finished, at the first token (unpacked it started in the padding)
    torch.testing.assert_close(pooled[:, 4:], out[:, 0, 4:])
    # and the old reading, h_n, differs for every padded row
    assert not torch.allclose(pooled[1:, :4], h[0, 1:])


def test_final_state_with_left_padding_reads_the_backward_direction_at_the_first_real_token() -> None:
    lstm, x, mask = _padded()
    x, mask = x.flip(1), mask.flip(1)  # the same texts, padded on the left
    out, state = lstm(x)
    pooled = FinalState(directions=2)((out, state), mask)
    first = torch.tensor([7 - n for n in LENGTHS])
    torch.testing.assert_close(pooled[:, :4], out[:, -1, :4])
    torch.testing.assert_close(pooled[:, 4:], out[torch.arange(3), first, 4:])


def test_final_state_without_a_mask_is_h_n() -> None:
    lstm, x, _ = _padded()
    out, (h, c) = lstm(x)
    torch.testing.assert_close(FinalState(directions=2)((out, (h, c))), torch.cat([h[0], h[1]], dim=1))
    torch.testing.assert_close(FinalState(directions=2)(out), torch.cat([h[0], h[1]], dim=1))


class _BiLSTM(nn.Module):
    """Embedding and two bidirectional LSTMs; ``pass_state`` hands each LSTM's (h, c) to the next (SCPL's code)."""

    def __init__(self, pass_state: bool = False) -> None:
        super().__init__()
        self.pass_state = pass_state
        self.embedding = nn.Embedding(30, 6, padding_idx=0)
        self.lstm1 = nn.LSTM(6, 4, batch_first=True, bidirectional=True)
        self.lstm2 = nn.LSTM(8, 4, batch_first=True, bidirectional=True)
        self.head = nn.Linear(8, 2)

    def forward(self, ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        x, state = self.lstm1(self.embedding(ids))
        x, _ = self.lstm2(x, state) if self.pass_state else self.lstm2(x)
        return self.head(x.mean(1))


def _text_batch() -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    mask = torch.arange(7)[None] < torch.tensor([7, 4, 2, 5])[:, None]
    return torch.randint(1, 30, (4, 7)) * mask, mask


def test_final_state_on_an_embedding_stage_is_the_masked_mean() -> None:
    """The embedding stage is not recurrent: "final_state" there reads the masked mean of the embeddings."""
    ids, mask = _text_batch()
    inputs = {"ids": ids, "attention_mask": mask}
    dm = decouple.convert(_BiLSTM(), "scl", ["embedding", "lstm1"], inputs, pool="final_state")
    pools = [s.objective.pool for s in dm.stages[:-1]]
    assert isinstance(pools[0], TokenMean)
    assert isinstance(pools[1], FinalState) and pools[1].directions == 2
    assert all(s.objective_extras == {"mask": "attention_mask"} for s in dm.stages[:-1])
    notes = dm.param_counts().notes
    assert any("stage 0" in n and "masked mean" in n for n in notes), notes
    dm.train_step(ids, mask, target=torch.tensor([0, 1, 0, 1]))


def test_final_state_after_a_getitem_of_the_lstm_output_is_recurrent() -> None:
    """A split after ``out = lstm(x)[0]`` still knows the representation comes from a bidirectional LSTM."""

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lstm = nn.LSTM(6, 4, batch_first=True, bidirectional=True)
            self.drop = nn.Dropout(0.0)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.drop(self.lstm(x)[0])

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embedding = nn.Embedding(30, 6, padding_idx=0)
            self.block = Block()
            self.head = nn.Linear(8, 2)

        def forward(self, ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return self.head(self.block(self.embedding(ids)).mean(1))

    ids, mask = _text_batch()
    inputs = {"ids": ids, "attention_mask": mask}
    dm = decouple.convert(Model(), "scl", ["embedding", "block"], inputs, pool="final_state")
    pool = dm.stages[1].objective.pool
    assert isinstance(pool, FinalState) and pool.directions == 2


def test_lstm_state_crosses_the_cut_detached() -> None:
    """SCPL's LSTM passes (h, c) to the next layer: the tuple crosses the cut, without a gradient."""
    ids, mask = _text_batch()
    model = _BiLSTM(pass_state=True)
    dm = decouple.convert(model, "scl", ["lstm1"], {"ids": ids, "attention_mask": mask}, pool="final_state")
    dm.eval()
    torch.testing.assert_close(dm.inference_module()(ids, mask), model.eval()(ids, mask))
    dm.train()
    seen: list[torch.Tensor] = []
    hook = dm.stages[1].module.lstm2.register_forward_pre_hook(lambda _m, args: seen.extend([args[1][0], args[1][1]]))
    dm.train_step(ids, mask, target=torch.tensor([0, 1, 0, 1]))
    hook.remove()
    assert len(seen) == 2 and all(t.shape == (2, 4, 4) and not t.requires_grad for t in seen)
