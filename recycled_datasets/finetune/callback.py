"""The trainer callback that drives the progress bar and keeps the losses a run logged."""

from __future__ import annotations

import logging
from contextlib import ExitStack
from typing import Any

logger = logging.getLogger(__name__)


def report_callback() -> Any:
    from transformers import TrainerCallback

    from recycled_datasets.progress import progress

    class Report(TrainerCallback):
        """Drives a rich progress bar and logs the loss; keeps the (step, loss) pairs this run logged."""

        def __init__(self) -> None:
            self.first_step = 0
            self.losses: list[tuple[int, float]] = []
            self._stack = ExitStack()
            self._bar: Any = None
            self._task: Any = None

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.first_step = state.global_step
            if state.is_world_process_zero:
                self._bar = self._stack.enter_context(progress())
                self._task = self._bar.add_task("fine-tuning", total=state.max_steps, completed=state.global_step)

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if self._bar is not None:
                self._bar.update(self._task, completed=state.global_step)

        def on_log(
            self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any
        ) -> None:
            if not logs or "loss" not in logs:
                return
            self.losses.append((state.global_step, float(logs["loss"])))
            if state.is_world_process_zero:
                extra = "".join(
                    f", {name} {logs[name]:.4g}"
                    for name in ("learning_rate", "grad_norm", "mean_token_accuracy")
                    if name in logs
                )
                logger.info("step %d/%d: loss %.4f%s", state.global_step, state.max_steps, logs["loss"], extra)

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self._stack.close()
            self._bar = None

    return Report()
