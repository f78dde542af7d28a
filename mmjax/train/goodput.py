"""Where a run's wall time goes: the goodput account, kept across preemptions and restarts.

Every second of a trainer session (from `Trainer(...)` to its last record) is booked to one part:

  setup               building the model, mesh, data pipeline and the fresh state
  checkpoint_restore  restoring the newest checkpoint
  compile             each session's first train step (tracing and compiling dominate it)
  step                productive training steps (dispatch, the cross-host agreement, logging)
  input               waiting for the next batch
  checkpoint_save     handing checkpoints to orbax (the async writes overlap the steps) and waiting for the last
  eval                evaluations
  lost                steps trained but lost: a session resumed at checkpoint step s after the previous session
                      had logged step L > s repeats L - s steps; their time (at that session's mean step time) is
                      moved from `step` to `lost`

The goodput is `step / wall`. `unaccounted_s` is wall time outside every part (should stay near 0; a killed
session's time after its last record is not known to the account at all). The account is `workdir/goodput.json`,
written by process 0 at every train record, checkpoint and the end; a resumed run adds to it. Each record in
metrics.jsonl carries the running totals as `goodput/<part>_s`, `goodput/wall_s` and the fraction `goodput`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator
from typing import Any

from etils import epath

log = logging.getLogger(__name__)
PARTS = ("setup", "checkpoint_restore", "compile", "step", "input", "checkpoint_save", "eval", "lost")
FILE = "goodput.json"


class Goodput:
    """One session's timers on top of the account the earlier sessions left in `workdir/goodput.json`."""

    def __init__(self, workdir: str, *, writes: bool, started: float | None = None):
        self.path = os.path.join(workdir, FILE)
        self.writes = writes
        self.started = time.perf_counter() if started is None else started
        self.seconds = dict.fromkeys(PARTS, 0.0)
        self.steps = 0              # steps timed under `step` this session
        self.previous = self._read()

    def _read(self) -> dict[str, Any]:
        empty = {"seconds": dict.fromkeys(PARTS, 0.0), "wall": 0.0, "steps": 0, "last_step": 0, "sessions": 0,
                 "lost_steps": 0}
        path = epath.Path(self.path)
        if not path.exists():
            return empty
        try:
            saved = json.loads(path.read_text())
        except ValueError:
            log.warning("%s is unreadable; the goodput account starts again", self.path)
            return empty
        return {**empty, **saved, "seconds": {**empty["seconds"], **saved.get("seconds", {})}}

    @contextlib.contextmanager
    def time(self, part: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[part] += time.perf_counter() - start

    def resumed_at(self, step: int) -> None:
        """Books the steps the earlier sessions trained past `step` (the checkpoint resumed) as lost."""
        prev = self.previous
        lost_steps = max(0, prev["last_step"] - step)
        if lost_steps and prev["steps"]:
            seconds = min(prev["seconds"]["step"], lost_steps * prev["seconds"]["step"] / prev["steps"])
            prev["seconds"]["step"] -= seconds
            prev["seconds"]["lost"] += seconds
            prev["steps"] -= lost_steps
            prev["lost_steps"] += lost_steps
            log.info("goodput: resumed at step %d after step %d was reached: %d step(s), %.1f s lost", step,
                     prev["last_step"], lost_steps, seconds)
        prev["last_step"] = step

    def totals(self) -> dict[str, Any]:
        """The whole account so far (every session), as metrics-record fields."""
        wall = self.previous["wall"] + time.perf_counter() - self.started
        parts = {p: self.previous["seconds"][p] + self.seconds[p] for p in PARTS}
        return {"goodput": parts["step"] / wall if wall else 0.0, "goodput/wall_s": wall,
                **{f"goodput/{p}_s": s for p, s in parts.items()},
                "goodput/unaccounted_s": wall - sum(parts.values()),
                "goodput/lost_steps": self.previous["lost_steps"]}

    def save(self, step: int) -> None:
        if not self.writes:
            return
        totals = self.totals()
        account = {"seconds": {p: totals[f"goodput/{p}_s"] for p in PARTS}, "wall": totals["goodput/wall_s"],
                   "steps": self.previous["steps"] + self.steps, "last_step": step,
                   "sessions": self.previous["sessions"] + 1, "lost_steps": self.previous["lost_steps"]}
        tmp = epath.Path(self.path + ".tmp")
        tmp.write_text(json.dumps(account, indent=1))
        tmp.replace(self.path)
