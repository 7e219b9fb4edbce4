"""The multi-process runtime honours the training configuration and grows fit's validation, logs and checkpoints.

Two ranks equal one process with a scheduler, clipping and accumulation (and a partial last group);
a run checkpointed by two ranks resumes, in two ranks again or in one process, as if uninterrupted.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist

import decouple
from decouple.distributed import StageTrainer, launch
from decouple.runtime.state import merge_stage_checkpoints

from .helpers import one_thread
from .models import MLP
from .test_distributed import WIDTHS, assert_same_state, batches, run_as_threads

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="needs torch.distributed with gloo"
)


def configured_dm(
    seed: int = 0, splits: tuple[str, ...] = ("layers.0", "layers.1"), precision: str = "32"
) -> decouple.DecoupledModel:
    torch.manual_seed(seed)
    return decouple.convert(
        MLP(WIDTHS), method="early_exit", splits=list(splits), example_inputs=(torch.randn(2, 8),),
        optimizer=lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9),
        scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.8),
        clip_grad_norm=0.5, accumulate=3, precision=precision,
    )  # fmt: skip


@pytest.mark.parametrize("precision", ["32", "bf16"])
def test_ranks_equal_one_process_with_schedule_clipping_and_accumulation(precision: str) -> None:
    """bf16 values cross the ranks in bf16 (half the bytes) and train exactly as in one process."""
    data = batches(n=7)  # groups of 3, 3 and a partial 1
    reference = configured_dm(precision=precision)
    with one_thread():
        reference.fit(data, epochs=2, pipelined=False, progress=False)
    dm = configured_dm(precision=precision)
    run_as_threads(dm, data, epochs=2)
    assert_same_state(dm, reference)
    assert all(s.scheduler.last_epoch == 6 for s in dm.stages)


# -- real processes -----------------------------------------------------------------------------
def fit_rank(data: list[Any], val: list[Any], epochs: int, directory: str, resume: bool) -> dict[str, Any]:
    trainer = StageTrainer(configured_dm(seed=7 if resume else 0))  # resuming overwrites every weight
    first = trainer.rank == 0
    history = trainer.fit(data if first else None, epochs, validation=val if first else None,
                          log_dir=Path(directory) / "logs", checkpoint_dir=Path(directory) / "ckpt", resume=resume)  # fmt: skip
    return {"history": history, "state": trainer.state_dict()}


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_ranks_validate_log_checkpoint_and_resume_as_one_process(tmp_path: Path) -> None:
    data, val = batches(n=7), batches(n=2, seed=9)
    reference = configured_dm()
    with one_thread():
        expected = reference.fit(data, epochs=3, pipelined=False, progress=False, validation=val)
    launch(fit_rank, 3, data, val, 2, str(tmp_path), False, threads=1, timeout=120)
    results = launch(fit_rank, 3, data, val, 3, str(tmp_path), True, threads=1, timeout=120)
    dm = configured_dm(seed=3)
    dm.load_state_dict(merge_stage_checkpoints([r["state"] for r in results]))
    assert_same_state(dm, reference)
    assert dm.steps == reference.steps == 21
    history = results[0]["history"]
    assert [m["accuracy"] for m in history.validation] == pytest.approx([s.validation["accuracy"] for s in expected])
    assert history.losses["stage0"] == pytest.approx([s.losses["stage0"] for s in expected])
    ckpt = tmp_path / "ckpt"
    assert sorted(p.name for p in ckpt.iterdir() if p.name.startswith("epoch0003")) == [
        f"epoch0003.stage{k}.pt" for k in range(3)
    ]
    assert not list(ckpt.glob("epoch0001*"))  # keep_checkpoints=2
    rows = _rows(tmp_path / "logs" / "stage1.epochs.csv")
    assert [r["epoch"] for r in rows] == ["1", "2", "3"] and "val_accuracy" in rows[0] and "stage1_lr" in rows[0]

    # the same checkpoints resume in one process: 2 epochs of ranks + 1 epoch here == 3 epochs here
    for f in ckpt.glob("epoch0003*"):
        f.unlink()
    single = configured_dm(seed=5)
    with one_thread():
        single_history = single.fit(data, epochs=3, pipelined=False, progress=False, checkpoint_dir=ckpt, resume=True)
    assert_same_state(single, reference)
    assert len(single_history) == 3
