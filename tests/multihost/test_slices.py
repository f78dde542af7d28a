"""Multi-slice emulation: 2 slices of 2 JAX processes (1 CPU device each), the mesh's `data` axis across the
slices as a multi-slice TPU job lays it out, equals one process of 4 devices with the same mesh. Slow."""

from __future__ import annotations

import numpy as np
import pytest

from tests.multihost import runs

OVERRIDES = ("total_steps=4", "batch_size=16", "log_every=1", "checkpoint_every=4", "eval_every=0",
             "optim.warmup_steps=2", "mesh.data=2", "mesh.fsdp=2")


@pytest.mark.slow
def test_two_slices_of_two_processes_equal_one_process(tmp_path):
    one, two = str(tmp_path / "one"), str(tmp_path / "slices")
    cmd = runs.launch_cmd(4, 1, *runs.train_args(runs.DIGITS, two, *OVERRIDES))
    cmd.insert(cmd.index("--"), "--slices=2")
    status = runs.run(cmd, str(tmp_path / "slices.log"))
    assert status == 0, runs.read(str(tmp_path / "slices.log"))[-3000:]
    log = str(tmp_path / "one.log")
    assert runs.run(runs.single_process(*runs.train_args(runs.DIGITS, one, *OVERRIDES)), log, devices=4) == 0, \
        runs.read(log)[-3000:]
    got, expected = runs.train_losses(two), runs.train_losses(one)
    assert sorted(got) == sorted(expected) == [1, 2, 3, 4]
    np.testing.assert_allclose([got[s] for s in got], [expected[s] for s in got], rtol=0, atol=1e-5)
    for key, value in runs.final_eval(one).items():
        np.testing.assert_allclose(runs.final_eval(two)[key], value, rtol=1e-4, atol=1e-5, err_msg=key)
