"""The goodput account on a fake clock: parts sum to the wall time, it persists across sessions, and a session
resumed from an older checkpoint books the steps it must repeat as lost."""

from __future__ import annotations

import json
import os

import pytest

from mmjax.train import goodput


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_account_sums_to_wall_time_and_counts_lost_steps_across_a_resume(tmp_path, monkeypatch):
    clock = Clock()
    monkeypatch.setattr(goodput.time, "perf_counter", clock)
    first = goodput.Goodput(str(tmp_path), writes=True)
    with first.time("setup"):
        clock.now += 3
    with first.time("compile"):
        clock.now += 5
    for _ in range(10):                       # steps 2..11 at 0.5 s, 0.1 s input wait each
        with first.time("input"):
            clock.now += 0.1
        with first.time("step"):
            clock.now += 0.5
        first.steps += 1
    with first.time("checkpoint_save"):       # a checkpoint of step 6 (say), then logged up to step 11
        clock.now += 1
    clock.now += 0.25                         # time outside every part
    first.save(11)
    totals = first.totals()
    assert totals["goodput/wall_s"] == pytest.approx(15.25)
    assert totals["goodput/unaccounted_s"] == pytest.approx(0.25)
    assert totals["goodput"] == pytest.approx(5 / 15.25)

    clock.now = 100.0                         # the process died; a new one starts and resumes checkpoint 6
    second = goodput.Goodput(str(tmp_path), writes=True)
    with second.time("checkpoint_restore"):
        clock.now += 2
    second.resumed_at(6)
    totals = second.totals()
    assert totals["goodput/lost_steps"] == 5
    assert totals["goodput/lost_s"] == pytest.approx(2.5)        # 5 steps at the first session's 0.5 s
    assert totals["goodput/step_s"] == pytest.approx(2.5)
    assert totals["goodput/wall_s"] == pytest.approx(17.25)
    parts = sum(totals[f"goodput/{p}_s"] for p in goodput.PARTS)
    assert parts + totals["goodput/unaccounted_s"] == pytest.approx(totals["goodput/wall_s"])
    second.save(6)
    with open(os.path.join(tmp_path, goodput.FILE)) as f:
        saved = json.load(f)
    assert saved["sessions"] == 2 and saved["lost_steps"] == 5 and saved["steps"] == 5


def test_only_the_writing_process_saves(tmp_path):
    goodput.Goodput(str(tmp_path), writes=False).save(3)
    assert not os.path.exists(os.path.join(tmp_path, goodput.FILE))
