"""Where a run's numbers go: `metrics.jsonl` (one JSON object per line), TensorBoard events, a progress bar.

Only process 0 writes. The progress bar (steps, loss, examples/s, ETA) is shown only on a terminal, so logs of
batch jobs stay clean.
"""

from __future__ import annotations

import json
import math
import os
import sys
from typing import Any

import jax


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class MetricsWriter:
    def __init__(self, workdir: str, total_steps: int, *, initial_step: int = 0, tensorboard: bool = True):
        self.active = jax.process_index() == 0
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._tb = None
        self._bar = None
        if not self.active:
            return
        if tensorboard:
            try:
                from tensorboardX import SummaryWriter

                self._tb = SummaryWriter(os.path.join(workdir, "tb"))
            except ImportError:  # TensorBoard events are optional; metrics.jsonl is the record of truth
                self._tb = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total_steps, initial=initial_step, dynamic_ncols=True, unit="step")

    def write(self, step: int, split: str, metrics: dict[str, Any], **extra: Any) -> dict[str, Any]:
        record = {"step": int(step), "split": split, **{k: _plain(v) for k, v in metrics.items()}, **extra}
        if not self.active:
            return record
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for k, v in record.items():
                if isinstance(v, int | float) and not isinstance(v, bool) and k != "step":
                    self._tb.add_scalar(f"{split}/{k}", v, step)
            self._tb.flush()
        if self._bar is not None and split == "train":
            self._bar.set_postfix({k: f"{record[k]:.4g}" for k in ("loss", "examples_per_sec") if k in record})
        return record

    def advance(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._tb is not None:
            self._tb.close()
