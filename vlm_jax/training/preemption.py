"""Preemption: SIGTERM (what Cloud TPU / GCE / Kubernetes / SLURM send before taking a machine away) makes
the train loop save a checkpoint at the next step boundary and exit 0; rerunning the command continues.

The signal handler only sets a flag. `poll()` runs once per step on every process; with several processes
the flags are combined (any process signalled -> all stop after the same step), so every host saves the
same step and leaves the loop together.
"""
from __future__ import annotations

import signal

import jax
import numpy as np

SIGNALS = (signal.SIGTERM,)


class PreemptionFlag:
    """Installs the handler on creation (main thread only; elsewhere it never fires) and `restore()`s the
    previous one. `stop` is the agreed decision of the last `poll()`."""

    def __init__(self):
        self.stop = False
        self.signal_name = ""
        self._received = 0
        self._previous = {}
        for sig in SIGNALS:
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass

    def _handle(self, signum, frame) -> None:
        self._received = signum

    def poll(self) -> bool:
        """Whether to stop after this step: this process's flag, or any process's when there are several."""
        flag = self._received
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            flag = int(np.max(multihost_utils.process_allgather(np.int32(flag))))
        if flag and not self.stop:
            self.stop = True
            self.signal_name = signal.Signals(flag).name
        return self.stop

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
