"""What a rank needs before it trains: the process group, checks that every rank converted the same model, placement.

``check_staged`` rejects what cannot run one stage per process; ``check_peers`` compares every
rank's conversion fingerprint and the world size with the number of stages; ``ensure_process_group``
starts the default group from torchrun's environment; ``collective`` turns a failed collective into
a :class:`~.links.LinkError` so the failure board explains it.
"""

from __future__ import annotations

import datetime
import os
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

from ...errors import ConfigError
from ..protocol import StagedModel
from .links import LinkError

__all__ = ["check_staged", "check_peers", "collective", "parse_device", "ensure_process_group", "place"]


# -- checks ---------------------------------------------------------------------------------
def check_staged(dm: Any) -> None:
    """Reject what cannot run one stage per process."""
    if not isinstance(dm, StagedModel):
        raise ConfigError(
            f"StageTrainer takes the DecoupledModel that decouple.convert() returns, got {type(dm).__name__}"
        )
    if dm.end_to_end:
        raise ConfigError(
            f"method {dm.method!r} trains end to end: its gradient crosses every cut, but between ranks only "
            "forward messages flow. Use a decoupled method (e.g. method='scl'), or train it in one process with dm.train_step"
        )


def check_peers(dm: StagedModel, rank: int, world_size: int) -> None:
    """Every rank converted the same model the same way, and there is one rank per stage."""
    seen: list[Any] = [None] * world_size
    collective(lambda: dist.all_gather_object(seen, (dm.fingerprint(), dm.num_stages, dm.method)))
    by_conversion: dict[tuple[str, int, str], list[int]] = defaultdict(list)
    for r, ident in enumerate(seen):
        by_conversion[tuple(ident)].append(r)
    if len(by_conversion) > 1:
        listed = "; ".join(
            f"{_ranks(ranks)}: fingerprint {fp} (method {method!r}, {n} stages)"
            for (fp, n, method), ranks in by_conversion.items()
        )
        raise ConfigError(
            f"the ranks converted different models ({listed}); call decouple.convert() with the same model, "
            "method, splits, options and example input shapes on every rank"
        )
    if world_size != dm.num_stages:
        hint = " (data-parallel replicas of a stage are not supported)" if world_size % dm.num_stages == 0 else ""
        raise ConfigError(
            f"the model has {dm.num_stages} stages but the process group has {world_size} rank{'s' if world_size != 1 else ''}"
            f"{hint}; run one rank "
            f"per stage (torchrun --nproc-per-node {dm.num_stages}, or launch(fn, {dm.num_stages})), or convert "
            f"into {world_size} stages (e.g. splits={world_size})"
        )


def _ranks(ranks: list[int]) -> str:
    return ("rank " if len(ranks) == 1 else "ranks ") + ", ".join(str(r) for r in ranks)


def collective(call: Callable[[], Any]) -> Any:
    """Run a collective; a failure (a peer gone, or the timeout) becomes a :class:`LinkError`."""
    try:
        return call()
    except RuntimeError as exc:
        raise LinkError(str(exc), peer=None, sending=False) from exc


# -- process group and placement ------------------------------------------------------------
def parse_device(device: str | torch.device | None) -> torch.device | None:
    if device is None:
        return None
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"device must be a device name like 'cpu' or 'cuda': {exc}") from exc
    if parsed.type == "cuda" and parsed.index is None:
        parsed = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if parsed.type == "cuda" and (not torch.cuda.is_available() or parsed.index >= torch.cuda.device_count()):
        raise ConfigError(f"device {parsed} is not available on this machine; use device='cpu' (gloo) or a GPU it has")
    return parsed


def ensure_process_group(backend: str, timeout: float) -> bool:
    """Initialise the default process group from torchrun's environment; ``True`` if this call did."""
    if dist.is_initialized():
        return False
    missing = [v for v in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
    if missing:
        raise ConfigError(
            "no torch.distributed process group: start the script with torchrun (torchrun --nproc-per-node N "
            "script.py), run it through decouple.distributed.launch(fn, N), or call "
            f"torch.distributed.init_process_group() first (missing environment variables: {', '.join(missing)})"
        )
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout))
    return True


def place(stage: Any, device: torch.device) -> None:
    if stage.device == device:
        return
    stage.to(device)
    stage.device = device
    if stage.optimizer is not None and stage.optimizer.state:
        stage.optimizer.load_state_dict(stage.optimizer.state_dict())  # moves its state to the parameters' device
