"""Where training metrics go: a per-step JSONL file, TensorBoard event files, the console.

Only process 0 writes; the workdir may be remote (`vlm_jax.paths`). On resume from step k, records after
step k (written by the interrupted run after its last checkpoint) are dropped from the JSONL file and
TensorBoard's view, so both read as one uninterrupted run.
"""
from __future__ import annotations

import json
import time
from typing import Any, Mapping

import jax

from vlm_jax import paths

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


def _truncate_after(path: str, step: int) -> None:
    """Keep only records with `step <= step` (and a complete last line: a kill may cut one)."""
    if not paths.exists(path):
        return
    kept = []
    for line in paths.read_text(path).splitlines(keepends=True):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("step", 0) <= step:
            kept.append(line if line.endswith("\n") else line + "\n")
    paths.write_text(path, "".join(kept))


class MetricsWriter:
    """Writes step records (dicts of numbers) to `metrics.jsonl` and TensorBoard (`tensorboard/`)."""

    def __init__(self, workdir: str, start_step: int, tensorboard: bool = True):
        self._active = jax.process_index() == 0
        self._file = None
        self._tb = None
        if not self._active:
            return
        paths.makedirs(workdir)
        path = paths.join(workdir, METRICS_FILE)
        _truncate_after(path, start_step)
        self._file = paths.Appender(path)
        if tensorboard:
            from tensorboardX import SummaryWriter

            # tensorboardX writes gs:// (google-cloud-storage) and s3:// (boto3) itself.
            self._tb = SummaryWriter(paths.join(workdir, TENSORBOARD_DIR), purge_step=start_step + 1)

    def write(self, step: int, record: Mapping[str, Any]) -> None:
        if not self._active:
            return
        self._file.write(json.dumps({"step": int(step), **{k: _plain(v) for k, v in record.items()}}) + "\n")
        if self._tb is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)):
                    self._tb.add_scalar(key, value, int(step))

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._tb is not None:
            self._tb.close()


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    return value


class Throughput:
    """Wall-clock rates over the interval since the last `rates()` call."""

    def __init__(self):
        self._start = time.perf_counter()
        self._sums: dict[str, float] = {}

    def add(self, **amounts: float) -> None:
        for key, value in amounts.items():
            self._sums[key] = self._sums.get(key, 0.0) + float(value)

    def rates(self) -> tuple[float, dict[str, float]]:
        """(seconds elapsed, {name: amount per second}), and restart the interval."""
        now = time.perf_counter()
        seconds = max(now - self._start, 1e-9)
        rates = {key: value / seconds for key, value in self._sums.items()}
        self._start, self._sums = now, {}
        return seconds, rates
