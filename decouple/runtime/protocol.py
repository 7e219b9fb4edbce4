"""What the runtimes need of a compiled model: a small protocol, so the runtime never imports the model class.

:class:`~decouple.model.DecoupledModel` satisfies it; the runtimes (``fit``, the threaded pipeline,
the rank loop) read its stages, bind a batch's inputs to the first stage's message, count the
steps every stage has trained and compare conversions by fingerprint.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from ..codegen.stage import StageList
from .config import TrainingConfig

if TYPE_CHECKING:
    from .backward_gate import BackwardSlots
    from .pipeline import Pipeline

__all__ = ["StagedModel"]


@runtime_checkable
class StagedModel(Protocol):
    """A model compiled into stages that train with their own objectives and optimizers."""

    method: str
    steps: int  # batches every stage has trained
    training_config: TrainingConfig  # precision, schedules, clipping, accumulation, compile

    stages: StageList

    @property
    def num_stages(self) -> int: ...

    @property
    def end_to_end(self) -> bool:
        """Whether one loss trains every stage (backprop): then stages cannot train on different batches."""

    def bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        """The first stage's message for a call with these inputs (checked against the traced signature)."""

    def fingerprint(self) -> str:
        """A hash of the conversion (method, stage boundaries, parameter shapes)."""

    @property
    def exits(self) -> list[int]:
        """The early exits ``inference_module(exit=l)`` answers from, besides the full inference path."""

    def inference_module(self, *, exit: int | None = None, device: Any = None) -> Any:
        """An eval-mode snapshot of the inference path (or of exit ``exit``)."""

    def task_loss(self, output: Any, target: Any) -> Any:
        """The conversion's task loss (``loss_fn``) on what the model returns."""

    def pipeline(self, *, depth: int = 2, record: bool = False, backward_slots: BackwardSlots = "auto") -> Pipeline:
        """A cross-batch pipeline over the stages."""

    def train(self, mode: bool = True) -> Any: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state_dict: dict[str, Any], strict: bool = True, assign: bool = False) -> Any: ...

    def effective_state_dict(self) -> dict[str, Any]: ...
