"""The trainer and its input: skip counts per reason in metrics.jsonl (with and without worker processes), a starved
source stopping the run with its reasons (in-process and through the CLI, no hang), and SIGTERM while the source
is stuck exiting with the resume status."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import pytest

from mmjax import cli, configlib
from mmjax.data import pipeline, records
from mmjax.data.sources import DigitsSource
from mmjax.train.trainer import Trainer
from tests.helpers import REPO, run, subprocess_env, train_cmd

DIGITS = os.path.join(REPO, "configs/vit/digits.py")


def write_digits_records(path: str, fault: Callable[[int], str], n: int = 200) -> None:
    """Digits as ArrayRecord, record i "corrupt" (bytes that are not msgpack), "unlabelled" or "" (good) by
    `fault(i)`; record 0 must be good (the example batch reads it)."""
    from array_record.python.array_record_module import ArrayRecordWriter

    source = DigitsSource("train")
    writer = ArrayRecordWriter(path, "group_size:1")
    for i in range(n):
        record = {"image": source[i]["image"], "label": int(source[i]["label"])}
        if fault(i) == "corrupt":
            writer.write(b"\xc1 not msgpack")
        else:
            writer.write(records.encode({"image": record["image"]} if fault(i) == "unlabelled" else record))
    writer.close()


@pytest.mark.parametrize("workers", [0, 2])
def test_metrics_carry_skip_counts_per_reason(tmp_path, workers):
    faults = {1: "corrupt", 2: "unlabelled"}   # a sixth of the records each (half would stop it early)
    write_digits_records(str(tmp_path / "digits.array_record"), lambda i: faults.get(i % 6, ""))
    config = configlib.apply_overrides(configlib.load_config_file(f"{DIGITS}:steps=10"),
                                       ["batch_size=8", "log_every=5", "optim.warmup_steps=2",
                                        f"data_workers={workers}"])
    with config.unlocked():
        config.data.train = {"name": "arrayrecord", "pattern": str(tmp_path / "*.array_record")}
    Trainer(config, str(tmp_path / "run")).run()
    with open(tmp_path / "run" / "metrics.jsonl") as f:
        train = [r for r in map(json.loads, f) if r["split"] == "train"]
    last = train[-1]
    assert last["skipped/undecodable"] > 0 and last["skipped/KeyError"] > 0
    assert last["skipped_records"] == last["skipped/undecodable"] + last["skipped/KeyError"]
    assert train[0]["skipped_records"] <= last["skipped_records"]          # running totals
    # 80 records were used; about one in six read was corrupt and one in six unlabelled (~20 each)
    assert 8 <= last["skipped/undecodable"] <= 100 and 8 <= last["skipped/KeyError"] <= 100


def test_a_starved_source_stops_the_run_with_its_reasons(tmp_path):
    config = configlib.apply_overrides(configlib.load_config_file(f"{DIGITS}:steps=10"),
                                       ["batch_size=8", "data_max_consecutive_skips=50", "optim.warmup_steps=2"])
    trainer = Trainer(config, str(tmp_path / "run"))
    example = trainer.task.example_batch(8)
    trainer.task.example_batch = lambda batch_size: example
    trainer.task.usable_example = lambda source=None: None   # past the pre-compile check: the pipeline stops it

    def broken(record, rng):
        raise ValueError(f"label {record['label']} is cursed")

    trainer.task.preprocess = broken
    start = time.monotonic()
    with pytest.raises(pipeline.DataStarvedError, match=r"records were all skipped\. Reasons: ValueError x\d+ "
                                                        r"\(e\.g\. label \d is cursed\)"):
        trainer.run()
    assert time.monotonic() - start < 300   # a generous bound: it stops, it does not spin


def test_the_train_cli_reports_a_starved_source_in_one_line_and_exits(tmp_path):
    write_digits_records(str(tmp_path / "bad.array_record"),   # only record 0 is usable
                         lambda i: "" if i == 0 else "corrupt" if i % 2 else "unlabelled")
    (tmp_path / "bad_digits.py").write_text(
        "from mmjax.configlib import load_config_file\n\n"
        "def get_config(arg=None):\n"
        f"    c = load_config_file({DIGITS + ':steps=10'!r}).unlock()\n"
        f"    c.data.train = dict(name='arrayrecord', pattern={str(tmp_path / '*.array_record')!r})\n"
        "    return c\n")
    result = run(train_cmd(str(tmp_path / "bad_digits.py"), str(tmp_path / "run"), "batch_size=8",
                           "data_max_consecutive_skips=40"), timeout=300)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == cli.EXIT_USAGE, result.stderr[-3000:]
    assert len(errors) == 1 and "Traceback" not in result.stderr
    assert errors[0].startswith("error: training data starved: the last ")
    assert "undecodable x" in errors[0] and "KeyError x" in errors[0]


STUCK = """
import os, runpy, sys, threading
from mmjax.train.tasks import classification
original = classification.ClassificationTask.preprocess
def stuck_once_told(self, record, rng):
    if rng is not None and os.path.exists(os.environ["STUCK_MARKER"]):   # training records hang from now on
        threading.Event().wait()
    return original(self, record, rng)
classification.ClassificationTask.preprocess = stuck_once_told
sys.argv = ["mmjax.train", *sys.argv[1:]]
runpy.run_module("mmjax.train", run_name="__main__", alter_sys=True)
"""


def logged_steps(workdir) -> list[int]:
    path = workdir / "metrics.jsonl"
    return [json.loads(line)["step"] for line in path.read_text().splitlines()] if path.exists() else []


def test_sigterm_while_the_source_is_stuck_saves_and_exits_with_the_resume_status(tmp_path):
    workdir, marker = tmp_path / "run", tmp_path / "stuck"
    cmd = [sys.executable, "-c", STUCK, *train_cmd(f"{DIGITS}:steps=1000", str(workdir), "batch_size=8",
                                                   "log_every=1", "checkpoint_every=500")[3:]]
    proc = subprocess.Popen(cmd, env={**subprocess_env(), "STUCK_MARKER": str(marker)}, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 600   # compiling the first step on a loaded 2-core machine can take minutes
    while not logged_steps(workdir) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert logged_steps(workdir), "no step was logged"
    marker.touch()
    stable_since, steps = time.time(), logged_steps(workdir)
    while time.time() - stable_since < 5 and time.time() < deadline:   # the batches already read run out
        time.sleep(0.2)
        if logged_steps(workdir) != steps:
            stable_since, steps = time.time(), logged_steps(workdir)
    proc.send_signal(signal.SIGTERM)   # the trainer has been waiting for a batch for 5 s
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == cli.EXIT_PREEMPTED, out[-3000:]
    assert f"preempted at step {steps[-1]}: checkpoint saved; run the same command again to resume" in out
    saved = sorted(int(d) for d in os.listdir(workdir / "checkpoints") if d.isdigit())
    assert saved == [steps[-1]] and steps == list(range(1, steps[-1] + 1))
