"""Local ranks without torchrun: start K processes on gloo over 127.0.0.1 and collect their results.

Why the store lives in the parent: the parent hosts the rendezvous ``TCPStore`` (on a free port
the system picks), so the store outlives every rank, and after a failure the parent reads the
failure board to re-raise the error of the rank that failed first, not the errors of the ranks
that stopped because of it. Gloo is pinned to the loopback interface, so no traffic leaves the
machine.
"""

from __future__ import annotations

import atexit
import datetime
import io
import os
import pickle
import queue
import socket
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ...errors import ConfigError, LaunchError, RankFailedError
from .failures import FailureBoard

__all__ = ["launch", "default_threads"]

_HOST = "127.0.0.1"


def default_threads(nprocs: int) -> int:
    """Intra-op threads per rank: the cores this process may use, shared out among the ranks."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // nprocs)


def _loopback_interface() -> str | None:
    names = {name for _, name in socket.if_nameindex()} if hasattr(socket, "if_nameindex") else set()
    return next((n for n in ("lo", "lo0") if n in names), None)


def _check(nprocs: int, backend: str, threads: int | None, timeout: float) -> None:
    if isinstance(nprocs, bool) or not isinstance(nprocs, int) or nprocs < 1:
        raise ConfigError(f"nprocs must be a positive int (one rank per stage), got {nprocs!r}")
    if backend not in ("gloo", "nccl"):
        raise ConfigError(f"backend must be 'gloo' (CPU) or 'nccl' (one GPU per rank), got {backend!r}")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ConfigError(f"threads must be a positive int or None, got {threads!r}")
    if backend == "nccl":
        available = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if available < nprocs:
            raise ConfigError(f"backend='nccl' with {nprocs} ranks needs {nprocs} GPUs, this machine has {available}")
    if not timeout > 0:
        raise ConfigError(f"timeout must be a positive number of seconds, got {timeout!r}")


def launch(
    fn: Callable[..., Any],
    nprocs: int,
    *args: Any,
    backend: str = "gloo",
    timeout: float = 600.0,
    threads: int | None = None,
    grace: float = 30.0,
) -> list[Any]:
    """Run ``fn(*args)`` in ``nprocs`` local processes forming one process group; return their results.

    Each process is rank ``r`` of a process group initialised on ``backend`` (gloo over
    127.0.0.1, or NCCL with GPU ``r``), with ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE`` set as
    torchrun sets them, so ``decouple.distributed.StageTrainer(dm)`` inside ``fn`` finds its
    stage. Processes are spawned (fresh interpreters: forking a process that has run autograd
    breaks autograd in the child), so ``fn`` must be a module-level function and ``args``
    picklable. ``threads`` sets intra-op threads per rank (default: the cores shared out among
    the ranks). ``timeout`` bounds every wait between ranks.

    Returns ``fn``'s return value per rank (each must survive ``torch.save``). If a rank fails,
    the other ranks stop on their own within about a second; any still running ``grace`` seconds
    later are terminated. Then the exception of the rank that failed first is re-raised,
    chained (``__cause__``) to a :class:`~decouple.errors.LaunchError` with every rank's exit
    code and traceback.
    """
    _check(nprocs, backend, threads, timeout)
    ctx = mp.get_context("spawn")
    span = datetime.timedelta(seconds=timeout)
    store = _loopback_store(nprocs + 1, span)
    results = ctx.Queue()
    config = _RankConfig(nprocs, store.port, backend, timeout, threads or default_threads(nprocs))
    procs = [
        ctx.Process(target=_run_rank, args=(fn, rank, config, args, results), name=f"decouple-rank{rank}")
        for rank in range(nprocs)
    ]
    for p in procs:
        p.start()
    try:
        outcomes = _collect(procs, results, grace)
    finally:
        _stop(procs)
    return _finish(outcomes, {r: p.exitcode for r, p in enumerate(procs)}, FailureBoard(store, -1))


def _loopback_store(world_size: int, timeout: datetime.timedelta) -> dist.TCPStore:
    """A TCPStore listening on 127.0.0.1 only, on a port the system picks."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind((_HOST, 0))
    listener.listen(128)
    port = listener.getsockname()[1]
    fd = listener.detach()  # the store owns the socket from here on
    return dist.TCPStore(
        _HOST, port, world_size, is_master=True, wait_for_workers=False, timeout=timeout, master_listen_fd=fd
    )


@dataclass(frozen=True)
class _RankConfig:
    nprocs: int
    port: int  # of the parent's TCPStore
    backend: str
    timeout: float
    threads: int


# -- in each rank ---------------------------------------------------------------------------
def _run_rank(fn: Callable[..., Any], rank: int, config: _RankConfig, args: tuple[Any, ...], results: Any) -> None:
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(config.nprocs),
        LOCAL_WORLD_SIZE=str(config.nprocs),
        MASTER_ADDR=_HOST,
        MASTER_PORT=str(config.port),
    )
    loopback = _loopback_interface()
    if loopback is not None:
        os.environ["GLOO_SOCKET_IFNAME"] = loopback
    torch.set_num_threads(config.threads)
    span = datetime.timedelta(seconds=config.timeout)
    store = dist.TCPStore(_HOST, config.port, is_master=False, timeout=span)
    code = 0
    try:
        if config.backend == "nccl":
            torch.cuda.set_device(rank)
        dist.init_process_group(config.backend, store=store, rank=rank, world_size=config.nprocs, timeout=span)
        value = fn(*args)
        if dist.is_initialized():
            dist.barrier()  # no rank tears the group down while a peer still talks to it
        results.put((rank, "ok", _dumps(value), ""))
    except BaseException as exc:  # every failure goes back to the parent
        code = 1
        cause = exc.failed_rank if isinstance(exc, RankFailedError) else None
        FailureBoard(store, rank).report(
            f"{type(exc).__name__}: {exc}", origin=not isinstance(exc, RankFailedError), cause=cause
        )
        results.put((rank, "error", _dump_exception(exc), traceback.format_exc()))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    results.close()
    results.join_thread()
    _exit(code)


def _exit(code: int) -> None:
    """End the rank once its result is sent: exit handlers run, Python's teardown of torch (seconds) does not."""
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _dumps(value: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


def _dump_exception(exc: BaseException) -> bytes:
    """The exception's class, args and attributes; a RuntimeError with its text if they do not pickle."""
    try:
        return pickle.dumps((type(exc), exc.args, dict(vars(exc))))
    except Exception:  # unpicklable exception: keep its text
        return pickle.dumps((RuntimeError, (f"{type(exc).__name__}: {exc}",), {}))


def _load_exception(raw: bytes) -> BaseException:
    try:
        cls, args, attrs = pickle.loads(raw)
        exc = cls.__new__(cls)
        exc.args = args
        exc.__dict__.update(attrs)
        return exc
    except Exception as err:  # the class may not import in the parent
        return RuntimeError(f"a rank failed with an exception that could not be rebuilt here ({err})")


# -- in the parent --------------------------------------------------------------------------
def _collect(procs: list[Any], results: Any, grace: float) -> dict[int, tuple[str, bytes, str]]:
    """Read every rank's outcome; after the first failure, give the others ``grace`` seconds."""
    outcomes: dict[int, tuple[str, bytes, str]] = {}
    failed_at: float | None = None
    while True:
        try:
            rank, status, raw, tb = results.get(timeout=0.05)
            outcomes[rank] = (status, raw, tb)
        except queue.Empty:
            pass
        exited = [p.exitcode is not None for p in procs]
        failed = any(o[0] == "error" for o in outcomes.values()) or any(p.exitcode not in (None, 0) for p in procs)
        if failed and failed_at is None:
            failed_at = time.monotonic()
        if all(exited):
            break
        if failed_at is not None and time.monotonic() - failed_at > grace:
            break
    for _ in range(len(procs)):  # whatever was flushed just before the last exit
        try:
            rank, status, raw, tb = results.get(timeout=0.2)
            outcomes[rank] = (status, raw, tb)
        except queue.Empty:
            break
    return outcomes


def _stop(procs: list[Any]) -> None:
    for p in procs:
        if p.is_alive():
            p.terminate()
    deadline = time.monotonic() + 5.0
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
            p.join()


def _finish(
    outcomes: dict[int, tuple[str, bytes, str]], exitcodes: dict[int, int | None], board: FailureBoard
) -> list[Any]:
    ok = all(outcomes.get(r, ("", b"", ""))[0] == "ok" and exitcodes[r] == 0 for r in exitcodes)
    if ok:
        return [torch.load(io.BytesIO(outcomes[r][1]), weights_only=False) for r in sorted(exitcodes)]
    errors = {r: _load_exception(raw) for r, (status, raw, _) in outcomes.items() if status == "error"}
    tracebacks = {r: tb for r, (status, _, tb) in outcomes.items() if status == "error"}
    lines = [_describe(r, exitcodes[r], errors.get(r), outcomes.get(r)) for r in sorted(exitcodes)]
    cause = LaunchError(
        "ranks of the launched run:\n" + "\n".join(lines) + _tracebacks(tracebacks),
        exitcodes=exitcodes,
        tracebacks=tracebacks,
    )
    first = _first_failed(errors, exitcodes, board)
    if first is None or first not in errors:
        raise cause
    raise errors[first] from cause


def _describe(rank: int, code: int | None, error: BaseException | None, outcome: tuple[str, bytes, str] | None) -> str:
    if error is not None:
        return f"  rank {rank}: exit code {code}, {type(error).__name__}: {error}"
    if outcome is not None and outcome[0] == "ok":
        return f"  rank {rank}: exit code {code}, finished"
    if code is not None and code < 0:
        return f"  rank {rank}: killed by signal {-code} (terminated by the launcher after the grace period, or by the system)"
    return f"  rank {rank}: exit code {code} without reporting a result (it died: out of memory, os._exit, a crash)"


def _tracebacks(tracebacks: dict[int, str]) -> str:
    return "".join(f"\n\ntraceback of rank {r}:\n{tb.rstrip()}" for r, tb in sorted(tracebacks.items()))


def _first_failed(
    errors: dict[int, BaseException], exitcodes: dict[int, int | None], board: FailureBoard
) -> int | None:
    record = board.first_failure(wait=0.0)
    if record is not None and record.origin:
        return record.rank
    origins = [r for r, e in sorted(errors.items()) if not isinstance(e, RankFailedError)]
    if origins:
        return origins[0]
    silent = [r for r, code in sorted(exitcodes.items()) if code != 0 and r not in errors]
    if silent:
        return None  # a rank died without an error: the LaunchError says which
    return min(errors) if errors else None
