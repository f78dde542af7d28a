"""The default suite's multi-host run: ViT digits as 2 JAX processes x 2 CPU devices, one process SIGKILLed while
a checkpoint is being written, the launcher run again; against one process x 4 devices run straight through.

It checks, in one pass (the suite's budget allows one multi-process task): the survivor exits non-zero within the
heartbeat bound instead of hanging in a collective; the checkpoint being written is never committed (the rerun
resumes from the one before); the rerun's per-step losses and final evaluation equal the one-process run's; the
goodput account survives the restart with the lost steps counted and its parts summing to the wall time.
"""

from __future__ import annotations

import json
import os
import signal

import numpy as np

from mmjax import cli
from mmjax.train import checkpoint
from tests.multihost import runs

OVERRIDES = ("total_steps=8", "batch_size=16", "log_every=1", "checkpoint_every=3", "eval_every=0",
             "optim.warmup_steps=2", "keep_checkpoints=5")
# gloo's cross-process all-reduce and XLA's in-process one may add the 4 devices' gradients in different orders.
LOSS_TOLERANCE = 1e-5


def test_a_host_killed_while_checkpointing_stops_all_and_the_rerun_equals_one_process(tmp_path):
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    reference = runs.start(runs.single_process(*runs.train_args(runs.DIGITS, one, *OVERRIDES)),
                           str(tmp_path / "one.log"), XLA_FLAGS="--xla_force_host_platform_device_count=4")
    killed_log = str(tmp_path / "killed.log")
    killed = runs.start(runs.launch_cmd(2, 2, *runs.train_args(runs.DIGITS, two, *OVERRIDES)), killed_log)
    pid = runs.pids(killed_log, 2)
    tmp = runs.wait_for(os.path.join(two, "checkpoints", "6.orbax-checkpoint-tmp*"), proc=killed)
    os.kill(pid[1], signal.SIGKILL)
    status = killed.wait(timeout=300)   # the bound: the survivor is terminated after the 10 s heartbeat timeout
    log = runs.read(killed_log)
    assert status != 0 and runs.exit_statuses(killed_log)[1] == 128 + signal.SIGKILL, log[-3000:]
    assert runs.exit_statuses(killed_log)[0] not in (cli.EXIT_OK, cli.EXIT_PREEMPTED), log[-3000:]
    # The checkpoint being written was never committed: not listed, not restorable, not the newest.
    assert checkpoint.checkpoint_steps(os.path.join(two, "checkpoints")) == [3], tmp
    logged = max(runs.train_losses(two))
    assert logged >= 6 and not any(r.get("final") for r in runs.records(two))

    rerun_log = str(tmp_path / "rerun.log")
    assert runs.run(runs.launch_cmd(2, 2, *runs.train_args(runs.DIGITS, two, *OVERRIDES)), rerun_log) == 0, \
        runs.read(rerun_log)[-3000:]
    assert "at step 3" in runs.read(rerun_log)
    assert reference.wait(timeout=600) == 0, runs.read(str(tmp_path / "one.log"))[-3000:]

    expected, got = runs.train_losses(one), runs.train_losses(two)
    assert sorted(got) == sorted(expected) == list(range(1, 9))
    np.testing.assert_allclose([got[s] for s in sorted(got)], [expected[s] for s in sorted(expected)],
                               rtol=0, atol=LOSS_TOLERANCE)
    final_two, final_one = runs.final_eval(two), runs.final_eval(one)
    assert final_two.keys() == final_one.keys()
    for key, value in final_one.items():
        np.testing.assert_allclose(final_two[key], value, rtol=0, atol=LOSS_TOLERANCE, err_msg=key)
    assert checkpoint.checkpoint_steps(os.path.join(two, "checkpoints")) == [3, 6, 8]

    # Goodput: two sessions in one account; the steps trained past checkpoint 3 before the kill are lost.
    with open(os.path.join(two, "goodput.json")) as f:
        account = json.load(f)
    assert account["sessions"] == 2 and account["lost_steps"] == logged - 3
    assert account["seconds"]["lost"] > 0
    final = next(r for r in runs.records(two) if r.get("final"))
    assert abs(final["goodput/unaccounted_s"]) < 0.05 * final["goodput/wall_s"], final
    assert 0 < final["goodput"] < 1
