"""`config.profile_steps`: a `jax.profiler` trace of a few train steps after warm-up (compilation), written to
WORKDIR/profile for TensorBoard's profile plugin (`tensorboard --logdir WORKDIR/profile`) or Perfetto. For a
remote workdir the trace is written to a local temporary folder and uploaded when it ends."""
from __future__ import annotations

import shutil
import tempfile

import jax

from vlm_jax import paths


class StepProfiler:
    """Traces steps `first_step + 1 .. first_step + steps` (nothing when `steps` is 0)."""

    def __init__(self, directory: str, *, first_step: int, steps: int):
        self.directory, self.first_step, self.steps = directory, first_step, steps
        self._tracing = False
        self._local = None  # the local folder of a remote directory's trace

    def before(self, step: int) -> None:
        """Called before dispatching step `step + 1`."""
        if self.steps > 0 and step == self.first_step and not self._tracing:
            self._local = tempfile.mkdtemp(prefix="vlm_jax_profile_") if paths.is_remote(self.directory) else None
            jax.profiler.start_trace(self._local or self.directory)
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
            if self._local:
                paths.upload_tree(self._local, self.directory)
                shutil.rmtree(self._local, ignore_errors=True)
