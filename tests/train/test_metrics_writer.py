"""metrics.jsonl after a resume holds each (step, split) once; without a terminal, progress is plain log lines."""

from __future__ import annotations

import json
import logging

from mmjax.train.metrics_writer import MetricsWriter, drop_lines_from


def write_lines(path, records, tail=""):
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + tail)


def test_resuming_drops_what_the_resumed_run_writes_again(tmp_path):
    path = tmp_path / "metrics.jsonl"
    records = [{"step": 10, "split": "train"}, {"step": 20, "split": "train"}, {"step": 20, "split": "eval"},
               {"step": 30, "split": "train"}, {"step": 30, "split": "eval", "final": True}]
    write_lines(path, records, tail='{"step": 40, "spl')   # cut short by a SIGKILL
    assert drop_lines_from(str(path), 20) == 3
    assert [json.loads(line) for line in path.read_text().splitlines()] == records[:3]
    write_lines(path, records)
    assert drop_lines_from(str(path), 30) == 1            # a finished run re-run: only its final evaluation goes
    assert [json.loads(line) for line in path.read_text().splitlines()] == records[:4]
    assert drop_lines_from(str(tmp_path / "none.jsonl"), 5) == 0


def test_writer_opened_at_a_resumed_step_leaves_no_duplicates(tmp_path):
    first = MetricsWriter(str(tmp_path), 30, tensorboard=False)
    for step in (10, 20, 30):
        first.write(step, "train", {"loss": 1.0 / step})
    first.close()
    resumed = MetricsWriter(str(tmp_path), 30, initial_step=10, tensorboard=False)
    for step in (20, 30):
        resumed.write(step, "train", {"loss": 2.0 / step})
    resumed.write(30, "eval", {"accuracy": 0.5}, final=True)
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["split"]) for r in lines] == [(10, "train"), (20, "train"), (30, "train"), (30, "eval")]
    assert lines[1]["loss"] == 0.1


def test_progress_without_a_terminal_is_a_plain_log_line(tmp_path, caplog):
    writer = MetricsWriter(str(tmp_path), 1000, tensorboard=False)
    with caplog.at_level(logging.INFO, logger="mmjax.train.metrics_writer"):
        writer.write(100, "train", {"loss": 0.51234, "examples_per_sec": 640.0, "steps_per_sec": 5.0})
        writer.write(100, "eval", {"accuracy": 0.9})
    assert [r.getMessage() for r in caplog.records] == ["step 100/1000, loss 0.5123, 640.0 examples/s, ETA 3m00s"]
