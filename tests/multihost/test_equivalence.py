"""Every task as 2 JAX processes x 2 CPU devices equals 1 process x 4 devices (same mesh, same global batch), and
each run's mid-run checkpoint resumes in the other layout and ends equal. Slow: the whole matrix is about an hour
on the shared 2-core machine (CONTRIBUTING.md); the default suite runs ViT digits in test_kill_resume.py.

Losses are compared with LOSS_TOLERANCE (TOLERANCES per task), not bitwise: gloo's cross-process all-reduce and
XLA's in-process one may add the four devices' partial sums in different orders (a few float32 ulps that compound
over steps). Each task's largest difference is printed (`-s`) for docs/multihost.md's table.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import numpy as np
import pytest

from mmjax.train import checkpoint
from tests.helpers import REPO
from tests.multihost import runs

STEPS = 6
COMMON = (f"total_steps={STEPS}", "log_every=1", "checkpoint_every=3", "eval_every=0", "keep_checkpoints=5",
          "optim.warmup_steps=2")
LOSS_TOLERANCE = 1e-4
# (loss atol, final-metric rtol) where the task is discontinuous in float noise: the tokenizer's quantizer picks
# each code by a comparison, so an ulp-level difference in a gradient sum can flip a code and the losses part
# (measured: equal to the bit for 3 steps, then 2.5e-3 apart at step 6 of 6).
TOLERANCES = {"vq": (5e-3, 3e-2)}
TOKENIZER = "vq"   # Show-o reads the tokenizer run of this matrix
# name -> (config, overrides, the run whose workdir `{dep}` stands for)
TASKS = {
    "vit_digits": ("configs/vit/digits.py", ("batch_size=16",), None),
    "vq": ("configs/vq/tiny.py:tokens=4,bits=6", ("batch_size=8", "data.eval.num_records=64", "eval_batch_size=32"),
           None),
    "lm": ("configs/lm/tiny.py", ("batch_size=4",), None),
    "d3pm_digits": ("configs/d3pm/digits.py", ("batch_size=16",), None),
    "llava_stage1": ("configs/llava/tiny.py:stage=1", ("batch_size=8",), None),
    "llava_stage2": ("configs/llava/tiny.py:stage=2,init={dep}", ("batch_size=8",), "llava_stage1"),
    "showo": ("configs/showo/tiny.py:tokenizer={dep},records=200", ("batch_size=4",), TOKENIZER),
    "showo_clip": ("configs/showo/tiny.py:tokenizer={dep},records=200,clip=1", ("batch_size=4",), TOKENIZER),
}
DONE: dict[str, tuple[str, str]] = {}


def train(layout: str, config: str, workdir: str, overrides: tuple[str, ...]) -> tuple[list[str], dict]:
    args = runs.train_args(os.path.join(REPO, config), workdir, *COMMON, *overrides)
    if layout == "1x4":
        return runs.single_process(*args), {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    return runs.launch_cmd(2, 2, *args), {}


def run_all(jobs: list[tuple[str, str, str, tuple[str, ...]]], logs: str) -> None:
    """Runs the (layout, config, workdir, overrides) jobs at once and asserts each succeeded."""
    procs = []
    for layout, config, workdir, overrides in jobs:
        cmd, extra = train(layout, config, workdir, overrides)
        log = os.path.join(logs, os.path.basename(workdir) + ".log")
        procs.append((runs.start(cmd, log, **extra), log))
    for proc, log in procs:
        try:
            status = proc.wait(timeout=1800)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
        assert status == 0, runs.read(log)[-4000:]


def assert_same_run(task: str, got: str, expected: str) -> float:
    """Per-step losses and the final evaluation agree; returns the largest loss difference."""
    atol, rtol = TOLERANCES.get(task, (LOSS_TOLERANCE, 1e-3))
    a, b = runs.train_losses(got), runs.train_losses(expected)
    assert sorted(a) == sorted(b) == list(range(1, STEPS + 1))
    diff = max(abs(a[s] - b[s]) for s in a)
    assert diff <= atol, (a, b)
    final_a, final_b = runs.final_eval(got), runs.final_eval(expected)
    assert final_a.keys() == final_b.keys()
    for key, value in final_b.items():
        np.testing.assert_allclose(final_a[key], value, rtol=rtol, atol=atol, err_msg=key)
    return diff


def resume_from_middle(source: str, target: str) -> None:
    """A copy of `source` without its last checkpoint: the next run resumes at step STEPS // 2."""
    shutil.copytree(source, target)
    ckpts = os.path.join(target, "checkpoints")
    for step in checkpoint.checkpoint_steps(ckpts):
        if step > STEPS // 2:
            shutil.rmtree(os.path.join(ckpts, str(step)))


@pytest.fixture(scope="module")
def matrix_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("matrix"))


@pytest.mark.slow
@pytest.mark.parametrize("task", list(TASKS))
def test_two_processes_equal_one_and_checkpoints_resume_across_layouts(task, matrix_dir):
    config, overrides, dep = TASKS[task]
    if dep is not None:
        if dep not in DONE:   # run alone (-k): make the run it starts from
            dep_config, dep_overrides, _ = TASKS[dep]
            dep_run = os.path.join(matrix_dir, f"{dep}_1x4")
            run_all([("1x4", dep_config, dep_run, dep_overrides)], matrix_dir)
            DONE[dep] = (dep_run, "")
        config = config.format(dep=DONE[dep][0])
    one, two = os.path.join(matrix_dir, f"{task}_1x4"), os.path.join(matrix_dir, f"{task}_2x2")
    run_all([("1x4", config, one, overrides), ("2x2", config, two, overrides)], matrix_dir)
    DONE[task] = (one, two)
    diff = assert_same_run(task, two, one)

    one_in_two, two_in_one = one + "_resumed_2x2", two + "_resumed_1x4"
    resume_from_middle(one, one_in_two)
    resume_from_middle(two, two_in_one)
    run_all([("2x2", config, one_in_two, overrides), ("1x4", config, two_in_one, overrides)], matrix_dir)
    for resumed in (one_in_two, two_in_one):
        assert f"at step {STEPS // 2}" in runs.read(os.path.join(matrix_dir, os.path.basename(resumed) + ".log"))
        diff = max(diff, assert_same_run(task, resumed, one))
    print(f"\n{task}: 2x2 vs 1x4 max |loss difference| over {STEPS} steps and both cross-layout resumes: {diff:.3g}")
