"""The process group a trainer runs in: starting it from torchrun's environment, checking the ranks agree, placing the stage.

Every rank converts the same model with the same arguments; :func:`check_peers` verifies this at
start-up by exchanging :meth:`~decouple.runtime.protocol.StagedModel.fingerprint`.
"""

from __future__ import annotations

import datetime
import os
from collections import defaultdict
from typing import Any

import torch
import torch.distributed as dist

from ...codegen.stage import Stage
from ...errors import ConfigError
from ..protocol import StagedModel
from .links import collective

__all__ = ["check_staged", "check_peers", "parse_device", "ensure_process_group", "place"]


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


def check_peers(dm: StagedModel, world_size: int) -> None:
    """Every rank converted the same model the same way (a collective: every rank calls it)."""
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


def _ranks(ranks: list[int]) -> str:
    return ("rank " if len(ranks) == 1 else "ranks ") + ", ".join(str(r) for r in ranks)


def parse_device(device: str | torch.device | None) -> torch.device | None:
    """The device a rank's stage runs on (``"cuda"`` means GPU ``LOCAL_RANK``), checked to exist here."""
    if device is None:
        return None
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"device must be a device name like 'cpu' or 'cuda': {exc}") from exc
    if parsed.type == "cuda" and parsed.index is None:
        parsed = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if parsed.type == "cuda" and (not torch.cuda.is_available() or (parsed.index or 0) >= torch.cuda.device_count()):
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


def place(stage: Stage, device: torch.device) -> None:
    """Move a stage (module, objective, optimizer state) to ``device``."""
    if stage.device == device:
        return
    stage.to(device)
    stage.device = device
    if stage.optimizer is not None and stage.optimizer.state:
        stage.optimizer.load_state_dict(stage.optimizer.state_dict())  # moves its state to the parameters' device
