"""`config.profile_steps`: a `jax.profiler` trace of a few train steps after warm-up (compilation), written to
WORKDIR/profile for TensorBoard's profile plugin (`tensorboard --logdir WORKDIR/profile`) or Perfetto."""
from __future__ import annotations

import jax


class StepProfiler:
    """Traces steps `first_step + 1 .. first_step + steps` (nothing when `steps` is 0)."""

    def __init__(self, directory: str, *, first_step: int, steps: int):
        self.directory, self.first_step, self.steps = directory, first_step, steps
        self._tracing = False

    def before(self, step: int) -> None:
        """Called before dispatching step `step + 1`."""
        if self.steps > 0 and step == self.first_step and not self._tracing:
            jax.profiler.start_trace(self.directory)
            self._tracing = True

    def after(self, step: int, outputs) -> None:
        """Called after dispatching step `step`; ends the trace once its last step has finished."""
        if self._tracing and step >= self.first_step + self.steps:
            jax.block_until_ready(outputs)
            self.stop()

    def stop(self) -> None:
        if self._tracing:
            jax.profiler.stop_trace()
            self._tracing = False
