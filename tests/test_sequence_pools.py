"""How local heads read recurrent stages over padded text (issue 17): final states, embedding stages, state hand-over."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from decouple.objectives.pools import FinalState, first_valid_index, last_valid_index

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
