"""Where a run's numbers go: `metrics.jsonl` (one JSON object per line), TensorBoard events, progress.

Only process 0 writes. Progress (step, loss, examples/s, ETA) is a tqdm bar on a terminal and a plain log line at
every train record otherwise, so logs of batch jobs stay readable.

A resumed run repeats the steps after its checkpoint, so on opening, `metrics.jsonl` drops what the resumed run
will write again: the lines after the resumed step, and a final evaluation at it (a finished run re-run, or one
extended by a larger `total_steps`, evaluates again). Every (step, split) pair therefore appears once.

The workdir may be a `gs://` URL (`mmjax.paths`): object storage cannot append, so there `metrics.jsonl` is
rewritten from the records kept in memory at each write; TensorBoard writes there itself (google-cloud-storage).
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from typing import Any

import jax
from etils import epath

from mmjax import paths

log = logging.getLogger(__name__)


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


def drop_lines_from(path: str, step: int) -> int:
    """Removes the records a run resumed at `step` will write again (see the module docstring) and any line cut
    short by a killed process; returns how many lines were removed."""
    if not epath.Path(path).exists():
        return 0
    lines = [line + "\n" for line in epath.Path(path).read_text().splitlines() if line.strip()]
    kept = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            log.warning("%s: dropping an unreadable line %r", path, line[:80])
            continue
        if record["step"] < step or (record["step"] == step and not record.get("final")):
            kept.append(line)
    if len(kept) != len(lines):
        epath.Path(path + ".tmp").write_text("".join(kept))
        epath.Path(path + ".tmp").replace(path)
    return len(lines) - len(kept)


class MetricsWriter:
    def __init__(self, workdir: str, total_steps: int, *, initial_step: int = 0, tensorboard: bool = True):
        self.active = jax.process_index() == 0
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.total_steps = total_steps
        self._tb = None
        self._bar = None
        self._lines: list[str] | None = None  # the whole file, for object storage (which cannot append)
        if not self.active:
            return
        dropped = drop_lines_from(self.path, initial_step)
        if dropped:
            log.info("metrics.jsonl: dropped %d record(s) that the run resumed at step %d writes again",
                     dropped, initial_step)
        if paths.is_remote(self.path):
            metrics = epath.Path(self.path)
            self._lines = metrics.read_text().splitlines(keepends=True) if metrics.exists() else []
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
        line = json.dumps(record) + "\n"
        if self._lines is None:
            with open(self.path, "a") as f:
                f.write(line)
        else:
            self._lines.append(line)
            epath.Path(self.path).write_text("".join(self._lines))
        if self._tb is not None:
            for k, v in record.items():
                if isinstance(v, int | float) and not isinstance(v, bool) and k != "step":
                    self._tb.add_scalar(f"{split}/{k}", v, step)
            self._tb.flush()
        if split == "train":
            self._progress(record)
        return record

    def _progress(self, record: dict[str, Any]) -> None:
        if self._bar is not None:
            self._bar.set_postfix({k: f"{record[k]:.4g}" for k in ("loss", "examples_per_sec") if k in record})
            return
        parts = [f"step {record['step']}/{self.total_steps}"]
        if isinstance(record.get("loss"), float):
            parts.append(f"loss {record['loss']:.4g}")
        if record.get("examples_per_sec"):
            parts.append(f"{record['examples_per_sec']:.1f} examples/s")
        if isinstance(record.get("goodput"), float):
            parts.append(f"goodput {record['goodput']:.0%}")
        if record.get("steps_per_sec"):
            parts.append(f"ETA {_duration((self.total_steps - record['step']) / record['steps_per_sec'])}")
        if record.get("skipped_records"):   # per reason, as in metrics.jsonl
            reasons = " ".join(f"{k.split('/', 1)[1]}={v}" for k, v in record.items() if k.startswith("skipped/"))
            parts.append(f"skipped {record['skipped_records']} records ({reasons})")
        log.info("%s", ", ".join(parts))

    def advance(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._tb is not None:
            self._tb.close()
