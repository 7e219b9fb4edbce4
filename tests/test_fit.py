"""``fit`` for real runs: resume equals an uninterrupted run, checkpoints are atomic and pruned, validation
measures the inference path, loggers and callbacks see every step and epoch."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

import decouple

from .helpers import one_thread
from .test_trainer import _cnn, _everything, _images, _mlp, _vectors, assert_same_state


def _shuffled(n: int = 28, batch: int = 6) -> torch.utils.data.DataLoader[Any]:
    """A loader that reshuffles every epoch from torch's global generator (which checkpoints restore)."""
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(n, 3, 8, 8, generator=g), torch.arange(n) % 3
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=batch, shuffle=True)


def _run(tmp: Path | None, epochs: int, *, resume: bool = False, seed: int = 0, **kw: Any) -> decouple.DecoupledModel:
    dm = _cnn(seed=seed, **_everything(scheduler=lambda opt: torch.optim.lr_scheduler.OneCycleLR(opt, 0.05, 15)))
    with one_thread():
        dm.fit(_shuffled(), epochs=epochs, pipelined=False, progress=False, checkpoint_dir=tmp, resume=resume, **kw)
    return dm


@pytest.mark.timeout(120)
def test_resume_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    """3 epochs in one go == 2 epochs, a fresh conversion (other heads, other RNG state), resume, 1 more: bit for bit."""
    torch.manual_seed(11)
    straight = _run(None, 3)
    torch.manual_seed(11)
    _run(tmp_path, 2)
    torch.manual_seed(999)  # the checkpoint restores the generators the loader shuffles with
    resumed = _run(tmp_path, 3, resume=True, seed=123)
    assert_same_state(resumed, straight)
    assert resumed.steps == straight.steps == 15
    assert [p.name for p in sorted(tmp_path.iterdir())] == ["epoch0002.pt", "epoch0003.pt"]  # keep_checkpoints=2


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_resume_in_a_new_process_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    torch.manual_seed(11)
    straight = _run(None, 3)
    code = (
        "import torch; from tests.test_fit import _run; from pathlib import Path; "
        f"torch.manual_seed(11); _run(Path({str(tmp_path)!r}), 2)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parent.parent, timeout=120)
    resumed = _run(tmp_path, 3, resume=True, seed=5)
    assert_same_state(resumed, straight)


@pytest.mark.timeout(120)
def test_a_truncated_checkpoint_is_never_picked(tmp_path: Path) -> None:
    torch.manual_seed(11)
    straight = _run(None, 3)
    torch.manual_seed(11)
    _run(tmp_path, 2, keep_checkpoints=3)
    newest = tmp_path / "epoch0002.pt"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # a write cut off halfway
    (tmp_path / ".epoch0003.pt.123.tmp").write_bytes(b"a crash mid-save")  # what an interrupted save leaves
    resumed = _run(tmp_path, 3, resume=True, seed=5)  # resumes after epoch 1 and trains 2 more
    assert_same_state(resumed, straight)
    assert len(resumed.fit(_shuffled(), epochs=3, progress=False, checkpoint_dir=tmp_path, resume=True)) == 3


def test_resume_refuses_a_checkpoint_of_another_conversion(tmp_path: Path) -> None:
    _mlp().fit(_vectors([4, 4]), progress=False, checkpoint_dir=tmp_path)
    other = _cnn()
    with pytest.raises(decouple.ConfigError, match="different conversion"):
        other.fit(_images([6]), progress=False, checkpoint_dir=tmp_path, resume=True)
    with pytest.raises(decouple.ConfigError, match="pass checkpoint_dir"):
        other.fit(_images([6]), progress=False, resume=True)
    with pytest.raises(decouple.ConfigError, match="keep_checkpoints"):
        other.fit(_images([6]), progress=False, checkpoint_dir=tmp_path, keep_checkpoints=0)


def test_resume_without_a_checkpoint_starts_from_the_beginning(tmp_path: Path) -> None:
    history = _mlp().fit(_vectors([4, 4]), epochs=2, progress=False, checkpoint_dir=tmp_path / "new", resume=True)
    assert len(history) == 2 and sorted(p.name for p in (tmp_path / "new").iterdir()) == [
        "epoch0001.pt",
        "epoch0002.pt",
    ]
    state = torch.load(tmp_path / "new" / "epoch0002.pt", weights_only=True)
    assert state["epoch"] == 2 and len(state["history"]) == 2 and state["format"] == "decouple/2"


# -- validation ----------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["scl", "early_exit", "al"])
def test_validation_measures_the_inference_path(method: str) -> None:
    dm = _cnn(method)
    val = _images([5, 7])
    (stats,) = dm.fit(_images([6, 6]), progress=False, validation=val)
    module = dm.inference_module()
    correct = sum(int((module(x).argmax(1) == y).sum()) for x, y in val)
    assert stats.validation["accuracy"] == pytest.approx(correct / 12)
    expected_exits = {"early_exit": {"exit1_accuracy", "exit2_accuracy"}, "al": {"exit1_accuracy"}}.get(method, set())
    assert {k for k in stats.validation if k.startswith("exit")} == expected_exits
    for key in expected_exits:
        exit_module = dm.inference_module(exit=int(key[4]))
        correct = sum(int((exit_module(x).argmax(1) == y).sum()) for x, y in val)
        assert stats.validation[key] == pytest.approx(correct / 12)
    if method != "al":
        with torch.no_grad():
            loss = sum(float(torch.nn.functional.cross_entropy(module(x), y)) * len(y) for x, y in val) / 12
            assert stats.validation["loss"] == pytest.approx(loss, rel=1e-5)


# -- loggers, callbacks, progress bar --------------------------------------------------------------
class _Recorder(decouple.Callback):
    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    def on_fit_start(self, dm: Any, first_epoch: int, epochs: int) -> None:
        self.events.append(("start", first_epoch, epochs))

    def on_step(self, dm: Any, log: decouple.StepLog) -> None:
        self.events.append(("step", log.epoch, log.batch, log.step, sorted(log.losses), sorted(log.learning_rates)))

    def on_epoch_end(self, dm: Any, epoch: int, stats: decouple.RunStats) -> None:
        self.events.append(("epoch", epoch, dm.steps, "accuracy" in stats.validation))

    def on_fit_end(self, dm: Any, history: Any) -> None:
        self.events.append(("end", len(history)))


@pytest.mark.parametrize("pipelined", [True, False], ids=["pipelined", "sequential"])
def test_callbacks_see_every_step_in_order_and_every_epoch(pipelined: bool) -> None:
    recorder = _Recorder()
    _mlp().fit(_vectors([4, 4, 4]), epochs=2, progress=False, pipelined=pipelined, callbacks=[recorder],
               validation=_vectors([4]))  # fmt: skip
    stages = ["stage0", "stage1", "stage2"]
    steps = [("step", e, b, 3 * e + b + 1, stages, stages) for e in range(2) for b in range(3)]
    assert recorder.events == [
        ("start", 0, 2), *steps[:3], ("epoch", 0, 3, True), *steps[3:], ("epoch", 1, 6, True), ("end", 2),
    ]  # fmt: skip
    with pytest.raises(decouple.ConfigError, match="decouple.Callback"):
        _mlp().fit(_vectors([4]), progress=False, callbacks=[lambda dm: None])  # type: ignore[list-item]


def test_log_dir_gets_a_csv_per_epoch_and_per_step(tmp_path: Path) -> None:
    dm = _mlp(scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, 1, 0.5))
    dm.fit(_vectors([4] * 3), epochs=2, progress=False, validation=_vectors([4]), log_dir=tmp_path)
    with (tmp_path / "epochs.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert {"stage0_loss", "stage2_loss", "stage0_lr", "samples_per_s", "val_accuracy", "val_loss"} <= set(rows[0])
    assert float(rows[1]["stage0_lr"]) == pytest.approx(1e-3 * 0.5**6)  # after the epoch's last (6th) step
    assert not (tmp_path / "steps.csv").exists()  # one row every 50 steps
    dm.fit(_vectors([4] * 3), epochs=3, progress=False, callbacks=decouple.CSVLogger(tmp_path / "each", log_every=2))
    with (tmp_path / "each" / "steps.csv").open() as f:
        steps = list(csv.DictReader(f))
    assert [int(r["step"]) for r in steps] == [8, 10, 12, 14] and float(steps[0]["stage2_loss"]) > 0


def test_tensorboard_events_are_written(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")  # the [tensorboard] extra (in the dev extra, so CI runs this)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _mlp().fit(_vectors([4] * 10), epochs=2, progress=False, validation=_vectors([4]), log_dir=tmp_path)
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/stage0_loss", "train/stage2_lr", "epoch/stage1_loss", "epoch/samples_per_s", "val/accuracy"} <= tags
    assert [e.step for e in events.Scalars("val/accuracy")] == [1, 2]
    assert [e.step for e in events.Scalars("train/stage0_loss")] == [10, 20]


def test_the_progress_bar_shows_learning_rate_and_validation_accuracy(capsys: pytest.CaptureFixture[str]) -> None:
    _mlp().fit(_vectors([4, 4]), epochs=1, validation=_vectors([4]))
    err = capsys.readouterr().err
    assert "lr=1.00e-03" in err and "val_acc=" in err
