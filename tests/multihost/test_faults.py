"""Faults on several hosts (2 JAX processes x 2 CPU devices, ViT digits unless the fault needs other data): a
SIGTERM reaching one host, the coordinator host killed, one host's input starving, a host started with another
config or source. Slow (each starts several multi-process runs); the kill-while-checkpointing case is in the
default suite (test_kill_resume.py). The hosts' timeouts are the short ones of `runs.FAST_TIMEOUTS`."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess

import numpy as np
import pytest

from mmjax import cli, launch
from mmjax.train import checkpoint
from tests.helpers import REPO
from tests.multihost import runs

pytestmark = pytest.mark.slow
OVERRIDES = ("total_steps=14", "batch_size=16", "log_every=1", "checkpoint_every=3", "eval_every=0",
             "optim.warmup_steps=2", "keep_checkpoints=10")
LOSS_TOLERANCE = 1e-5   # see test_kill_resume.py


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> str:
    """The uninterrupted run, one process x 4 devices."""
    workdir = str(tmp_path_factory.mktemp("reference") / "run")
    log = workdir + ".log"
    status = runs.run(runs.single_process(*runs.train_args(runs.DIGITS, workdir, *OVERRIDES)), log, devices=4)
    assert status == 0, runs.read(log)[-3000:]
    return workdir


def test_sigterm_reaching_one_host_stops_every_host_at_one_step_then_the_rerun_resumes(tmp_path, reference):
    workdir, log = str(tmp_path / "run"), str(tmp_path / "run.log")
    proc = runs.start(runs.launch_cmd(2, 2, *runs.train_args(runs.DIGITS, workdir, *OVERRIDES)), log)
    pid = runs.pids(log, 2)
    runs.wait_for(os.path.join(workdir, "checkpoints", "3"), proc=proc)
    os.kill(pid[1], signal.SIGTERM)     # a maintenance event on one VM only
    assert proc.wait(timeout=300) == cli.EXIT_PREEMPTED, runs.read(log)[-3000:]
    assert runs.exit_statuses(log) == {0: cli.EXIT_PREEMPTED, 1: cli.EXIT_PREEMPTED}
    steps = checkpoint.checkpoint_steps(os.path.join(workdir, "checkpoints"))
    stopped = steps[-1]
    assert 3 < stopped < 14, steps
    data = os.listdir(os.path.join(workdir, "checkpoints", str(stopped), "data"))
    assert {"process_0-of-2.json", "process_1-of-2.json"} <= set(data)   # one checkpoint, both hosts' positions
    assert max(runs.train_losses(workdir)) == stopped

    rerun = str(tmp_path / "rerun.log")
    assert runs.run(runs.launch_cmd(2, 2, *runs.train_args(runs.DIGITS, workdir, *OVERRIDES)), rerun) == 0
    assert f"at step {stopped}" in runs.read(rerun)
    got, expected = runs.train_losses(workdir), runs.train_losses(reference)
    assert sorted(got) == sorted(expected)
    np.testing.assert_allclose([got[s] for s in sorted(got)], [expected[s] for s in sorted(expected)],
                               rtol=0, atol=LOSS_TOLERANCE)


def test_the_coordinator_host_killed_ends_the_other_within_the_heartbeat_bound(tmp_path):
    workdir, log = str(tmp_path / "run"), str(tmp_path / "run.log")
    proc = runs.start(runs.launch_cmd(2, 2, *runs.train_args(runs.DIGITS, workdir, *OVERRIDES)), log)
    pid = runs.pids(log, 2)
    runs.wait_for(os.path.join(workdir, "checkpoints", "3"), proc=proc)
    os.kill(pid[0], signal.SIGKILL)
    assert proc.wait(timeout=300) != 0   # the bound: heartbeats to the dead coordinator fail after 10 s
    statuses = runs.exit_statuses(log)
    assert statuses[0] == 128 + signal.SIGKILL and statuses[1] not in (cli.EXIT_OK, cli.EXIT_PREEMPTED), statuses


def write_images(root: str, good: list[bool]) -> None:
    from PIL import Image

    os.makedirs(root)
    rng = np.random.default_rng(0)
    for i, ok in enumerate(good):
        path = os.path.join(root, f"img{i:02d}.png")
        if ok:
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(path)
        else:
            with open(path, "wb") as f:
                f.write(b"not an image")


def test_one_hosts_starving_input_stops_every_host_with_the_cause_named(tmp_path):
    # imagefolder is sharded by host: host 1 reads the odd images, all but one of which are not images.
    root = str(tmp_path / "images")
    write_images(root, [i % 2 == 0 or i == 1 for i in range(16)])
    config = tmp_path / "starving.py"
    config.write_text(
        "import ml_collections\nfrom mmjax import configlib\nfrom mmjax.train.tasks import REGISTRY\n\n"
        "REGISTRY['decoding_vq'] = 'tests.multihost.decoding_task:DecodingVQTask'\n\n\ndef get_config(arg=None):\n"
        f"    c = configlib.load_config_file({os.path.join(REPO, 'configs/vq/tiny.py:tokens=4,bits=6')!r})\n"
        "    c.task = 'decoding_vq'\n"
        f"    c.data.train = ml_collections.ConfigDict(dict(name='imagefolder', root={root!r}))\n"
        "    return c\n")
    log = str(tmp_path / "run.log")
    status = runs.run(runs.launch_cmd(2, 2, *runs.train_args(str(config), str(tmp_path / "run"), "batch_size=8",
                                                             "total_steps=4", "data_max_consecutive_skips=3")),
                      log, timeout=600)
    text = runs.read(log)
    assert status == cli.EXIT_USAGE, text[-3000:]
    assert runs.exit_statuses(log) == {0: cli.EXIT_FAILED, 1: cli.EXIT_USAGE}
    one = next(line for line in text.splitlines() if line.startswith("[1] error: "))
    zero = next(line for line in text.splitlines() if line.startswith("[0] error: "))
    assert zero.endswith(one[len("[1] error: "):]), (zero, one)   # host 0 names host 1's own error
    assert "process 1 of 2 stopped the run: DataStarvedError: " in zero


def start_pair(commands: list[list[str]], checkouts: list[str]) -> list[tuple[int, str]]:
    """Starts process i as `commands[i]` from the checkout `checkouts[i]` (its mmjax is the one imported) with the
    launcher's environment; returns each one's (exit status, output)."""
    port = launch.free_port()
    procs = []
    for i, (cmd, checkout) in enumerate(zip(commands, checkouts, strict=True)):
        env = launch.process_env(i, 2, port, devices_per_process=2, base=runs.env(PYTHONPATH=checkout))
        procs.append(subprocess.Popen(cmd, env=env, cwd=checkout, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
    return [(p.wait(timeout=600), p.stdout.read()) for p in procs]


def test_a_host_with_another_config_or_source_is_refused_on_every_host(tmp_path):
    args = lambda wd, *o: runs.single_process(*runs.train_args(runs.DIGITS, str(tmp_path / wd), "total_steps=2", *o))
    results = start_pair([args("a"), args("a", "seed=1")], [REPO, REPO])
    for status, out in results:
        assert status == cli.EXIT_USAGE, results
        assert "error: process(es) [1] run a different config than process 0 (of 2)" in out
    other = tmp_path / "other"
    shutil.copytree(os.path.join(REPO, "mmjax"), other / "mmjax", ignore=shutil.ignore_patterns("__pycache__"))
    with open(other / "mmjax" / "launch.py", "a") as f:
        f.write("# an edit on one host\n")
    results = start_pair([args("b"), args("b")], [REPO, str(other)])
    for status, out in results:
        assert status == cli.EXIT_USAGE, results
        assert "error: process(es) [1] run a different mmjax source code than process 0 (of 2)" in out
