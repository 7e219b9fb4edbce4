"""Point-to-point messages between two ranks: tensors over c10d send/recv, structure in a header.

Why a header: convert()'s shape propagation knows each boundary value's shape at the example
batch size, but batch sizes vary (the last batch is smaller) and a message or carry may hold
ints, ``None`` and tuples besides tensors. Every message therefore opens with a two-int
preamble (its kind and the header's length), then the header (the pytree structure, shape,
dtype and memory format of each tensor, and the non-tensor leaves, pickled), then one send per
tensor. A header equal to the previous one on the same link is not sent again, so a steady
stream costs one 16-byte send per message besides its tensors.

Headers are unpickled: like ``torch.distributed.recv_object_list``, this trusts the peer ranks.
"""

from __future__ import annotations

import enum
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.utils._pytree as pytree

__all__ = ["Kind", "Header", "Link", "LinkError", "collective", "encode_header", "decode_header"]


class Kind(enum.IntEnum):
    """What a message carries; ``DATA`` reuses the header last sent on the link."""

    DATA_WITH_HEADER = 0
    DATA = 1
    EPOCH_END = 2
    STOP = 3


class LinkError(RuntimeError):
    """A send, receive or collective failed: a peer closed its connection or did not answer in time."""

    def __init__(self, message: str, *, peer: int | None, sending: bool) -> None:
        super().__init__(message)
        self.peer = peer
        self.sending = sending


def collective(call: Callable[[], Any]) -> Any:
    """Run a collective; a failure (a peer gone, or the timeout) becomes a :class:`LinkError`."""
    try:
        return call()
    except RuntimeError as exc:
        raise LinkError(str(exc), peer=None, sending=False) from exc


@dataclass(frozen=True)
class TensorMeta:
    shape: tuple[int, ...]
    dtype: torch.dtype
    channels_last: bool


@dataclass(frozen=True)
class Header:
    """The structure of a payload: its pytree spec and, per leaf, a tensor's meta or the value itself."""

    spec: pytree.TreeSpec
    leaves: tuple[Any, ...]  # TensorMeta for a tensor leaf, ("value", v) for any other leaf


def _wire_form(tensor: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, TensorMeta]:
    """The tensor as it travels (detached, on the link's device, row-major) and its meta."""
    t = tensor.detach()
    if t.device != device:
        t = t.to(device)
    channels_last = t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)
    return t.contiguous(), TensorMeta(tuple(t.shape), t.dtype, channels_last)


def encode_header(payload: Any, device: torch.device) -> tuple[Header, list[torch.Tensor]]:
    """Split ``payload`` into its header and the tensors to send, in leaf order."""
    leaves, spec = pytree.tree_flatten(payload)
    metas: list[Any] = []
    tensors: list[torch.Tensor] = []
    for leaf in leaves:
        if isinstance(leaf, torch.Tensor):
            wire, meta = _wire_form(leaf, device)
            metas.append(meta)
            tensors.append(wire)
        else:
            metas.append(("value", leaf))
    return Header(spec, tuple(metas)), tensors


def _empty(meta: TensorMeta, device: torch.device) -> torch.Tensor:
    return torch.empty(meta.shape, dtype=meta.dtype, device=device)


def _restore_layout(tensor: torch.Tensor, meta: TensorMeta) -> torch.Tensor:
    # c10d sends dense row-major buffers only; a channels-last value gets its layout back here
    return tensor.contiguous(memory_format=torch.channels_last) if meta.channels_last else tensor


def decode_header(header: Header, tensors: list[torch.Tensor]) -> Any:
    """Rebuild a payload from its header and received tensors (in leaf order)."""
    pending = iter(tensors)
    leaves = [_restore_layout(next(pending), m) if isinstance(m, TensorMeta) else m[1] for m in header.leaves]
    return pytree.tree_unflatten(leaves, header.spec)


class Link:
    """One direction of the channel between this rank and ``peer`` in ``group``.

    ``send`` posts a message and returns at once; it first waits for the previous message on the
    link to complete, so at most one message is in flight and its tensors stay alive until then.
    ``recv`` blocks until the next message has arrived. Both raise :class:`LinkError`.
    """

    def __init__(self, group: dist.ProcessGroup, peer: int, device: torch.device, *, tag: int = 0) -> None:
        self.group = group
        self.peer = peer
        self.device = torch.device(device)
        self.tag = tag
        self._in_flight: list[tuple[Any, torch.Tensor]] = []
        self._header_bytes: bytes | None = None
        self._header: Header | None = None

    # -- sending ----------------------------------------------------------------------------
    def send(self, payload: Any) -> None:
        """Post ``payload`` (tensors, ints, None, tuples, dicts, ...) to the peer."""
        header, tensors = encode_header(payload, self.device)
        raw = pickle.dumps(header)
        fresh = raw != self._header_bytes
        posts = [self._preamble(Kind.DATA_WITH_HEADER if fresh else Kind.DATA, len(raw) if fresh else 0)]
        if fresh:
            posts.append(torch.frombuffer(bytearray(raw), dtype=torch.uint8).to(self.device))
        posts.extend(t for t in tensors if t.numel() > 0)
        self._post(posts)
        self._header_bytes = raw

    def send_kind(self, kind: Kind) -> None:
        """Post a marker without payload (end of an epoch, end of the stream)."""
        assert kind in (Kind.EPOCH_END, Kind.STOP)
        self._post([self._preamble(kind, 0)])

    def flush(self) -> None:
        """Wait until every posted message has been delivered."""
        in_flight, self._in_flight = self._in_flight, []
        for work, _ in in_flight:
            self._wait(work, sending=True)

    def _preamble(self, kind: Kind, length: int) -> torch.Tensor:
        return torch.tensor([int(kind), length], dtype=torch.int64, device=self.device)

    def _post(self, tensors: list[torch.Tensor]) -> None:
        self.flush()
        try:
            self._in_flight = [(self.group.send([t], self.peer, self.tag), t) for t in tensors]
        except RuntimeError as exc:
            raise LinkError(str(exc), peer=self.peer, sending=True) from exc

    # -- receiving --------------------------------------------------------------------------
    def recv(self) -> tuple[Kind, Any]:
        """The next message: ``(Kind.DATA, payload)``, or a marker kind and ``None``."""
        preamble = self._receive(torch.empty(2, dtype=torch.int64, device=self.device))
        kind, length = (int(v) for v in preamble.tolist())
        if kind in (Kind.EPOCH_END, Kind.STOP):
            return Kind(kind), None
        if kind == Kind.DATA_WITH_HEADER:
            raw = self._receive(torch.empty(length, dtype=torch.uint8, device=self.device))
            self._header = pickle.loads(raw.cpu().numpy().tobytes())
        assert self._header is not None, f"a message from rank {self.peer} reuses a header it never sent"
        buffers = [_empty(m, self.device) for m in self._header.leaves if isinstance(m, TensorMeta)]
        works = self._post_recv([b for b in buffers if b.numel() > 0])
        for work in works:
            self._wait(work, sending=False)
        return Kind.DATA, decode_header(self._header, buffers)

    def _receive(self, buffer: torch.Tensor) -> torch.Tensor:
        for work in self._post_recv([buffer]):
            self._wait(work, sending=False)
        return buffer

    def _post_recv(self, buffers: list[torch.Tensor]) -> list[Any]:
        try:
            return [self.group.recv([b], self.peer, self.tag) for b in buffers]
        except RuntimeError as exc:
            raise LinkError(str(exc), peer=self.peer, sending=False) from exc

    def _wait(self, work: Any, *, sending: bool) -> None:
        try:
            work.wait()
        except RuntimeError as exc:
            raise LinkError(str(exc), peer=self.peer, sending=sending) from exc
