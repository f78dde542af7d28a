"""Every loader takes the newest restorable checkpoint: corrupt newer steps are moved aside (only when an older one
restores), paths may be relative, and a missing item is the caller's error, not corruption."""

from __future__ import annotations

import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from mmjax import configlib
from mmjax.train import checkpoint
from mmjax.train.trainer import Trainer
from tests.helpers import REPO

DIGITS = os.path.join(REPO, "configs/vit/digits.py")


def make_steps(ckpt_dir, *steps: int) -> None:
    for step in steps:
        os.makedirs(os.path.join(ckpt_dir, str(step)))


def test_newer_failing_steps_are_quarantined_once_an_older_one_restores(tmp_path, caplog):
    ckpt_dir = str(tmp_path)
    make_steps(ckpt_dir, 10, 20, 30)

    def restore(step: int) -> str:
        if step > 10:
            raise OSError(f"garbage in step {step}\nsecond line")
        return f"state {step}"

    assert checkpoint.restore_newest(ckpt_dir, [10, 20, 30], restore) == ("state 10", 10)
    assert checkpoint.checkpoint_steps(ckpt_dir) == [10]
    moved = sorted(os.listdir(os.path.join(ckpt_dir, "corrupt")))
    assert [name.split("-")[0] for name in moved] == ["20", "30"]
    warnings = [r.getMessage() for r in caplog.records]
    assert any("30 cannot be restored (OSError: garbage in step 30)" in w for w in warnings)
    assert any("30 moved aside to" in w and "corrupt" in w for w in warnings)


def test_nothing_is_moved_when_no_step_restores(tmp_path):
    ckpt_dir = str(tmp_path)
    make_steps(ckpt_dir, 10, 20)

    def restore(step: int):
        raise ValueError("shapes do not match the model")   # e.g. the caller's model changed: not corruption

    with pytest.raises(checkpoint.CheckpointError, match=r"no checkpoint in .* could be restored \(step 20: "
                                                         r"ValueError: shapes do not match the model; step 10: "):
        checkpoint.restore_newest(ckpt_dir, [10, 20], restore)
    assert checkpoint.checkpoint_steps(ckpt_dir) == [10, 20]


def test_a_missing_item_is_the_callers_error_not_corruption(tmp_path):
    make_steps(str(tmp_path), 10, 20)

    def restore(step: int):
        raise checkpoint.CheckpointError(f"step {step} has no 'ema_params'")

    with pytest.raises(checkpoint.CheckpointError, match="step 20 has no 'ema_params'"):
        checkpoint.restore_newest(str(tmp_path), [10, 20], restore)
    assert checkpoint.checkpoint_steps(str(tmp_path)) == [10, 20]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A 40-step digits run with checkpoints at 20 and 40."""
    workdir = str(tmp_path_factory.mktemp("digits") / "run")
    config = configlib.apply_overrides(configlib.load_config_file(f"{DIGITS}:steps=40"),
                                       ["batch_size=16", "log_every=20", "checkpoint_every=20", "keep_checkpoints=5",
                                        "optim.warmup_steps=5"])
    Trainer(config, workdir).run()
    return workdir


def corrupt(state_dir: str) -> None:
    for root, _, files in os.walk(state_dir):
        for name in files:
            with open(os.path.join(root, name), "wb") as f:
                f.write(b"garbage")


def test_load_params_with_a_relative_path_falls_back_and_leaves_the_run_consistent(finished_run, tmp_path,
                                                                                   monkeypatch):
    import shutil

    shutil.copytree(finished_run, tmp_path / "run")
    with ocp.StandardCheckpointer() as ckptr:
        step20 = ckptr.restore(str(tmp_path / "run" / "checkpoints" / "20" / "state"))["params"]
    corrupt(str(tmp_path / "run" / "checkpoints" / "40" / "state"))
    monkeypatch.chdir(tmp_path)
    params = checkpoint.load_params("run")
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(step20), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert checkpoint.checkpoint_steps("run/checkpoints") == [20]
    assert [d.split("-")[0] for d in os.listdir("run/checkpoints/corrupt")] == ["40"]
    assert checkpoint.Checkpointer("run/checkpoints", save_every=20, keep=5).steps() == [20]  # what resume sees
    with pytest.raises(checkpoint.CheckpointError, match="has no 'ema_params'"):
        checkpoint.load_params("run", key="ema_params")   # this run keeps no EMA: said plainly, nothing moved
    assert checkpoint.checkpoint_steps("run/checkpoints") == [20]


def fake_run(workdir: str, config, tree: dict) -> None:
    """A run directory as loaders see it: config.json and one checkpoint's `state` (orbax needs absolute paths,
    so this helper writes with one; the loaders under test get relative ones)."""
    os.makedirs(workdir, exist_ok=True)
    configlib.write_json(config, os.path.join(workdir, "config.json"))
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(os.path.abspath(os.path.join(workdir, "checkpoints", "3", "state")), tree)


def test_every_loader_of_an_earlier_run_takes_a_relative_path(tmp_path, monkeypatch):
    from mmjax import sample
    from mmjax.eval import run as eval_run
    from mmjax.train.tasks.llava import LlavaTask
    from tests.train.test_showo_task import write_tokenizer_run

    monkeypatch.chdir(tmp_path)
    projector = {"projector": {"w": np.arange(3, dtype=np.float32)}}
    llava = configlib.load_config_file(os.path.join(REPO, "configs/llava/tiny.py:stage=2,init=runs/s1"))
    fake_run("runs/s1", llava, {"params": projector})
    # LLaVA stage 2 from stage 1 (config.init.workdir), and `python -m mmjax.eval --workdir runs/s1`
    np.testing.assert_array_equal(LlavaTask(llava).pretrained_variables()["params"]["projector"]["w"], [0, 1, 2])
    _, params = eval_run.load_run("runs/s1")
    np.testing.assert_array_equal(params["projector"]["w"], [0, 1, 2])
    # Show-o's tokenizer run (config.tokenizer.workdir, default runs/vq_tiny4) and `python -m mmjax.sample`
    write_tokenizer_run("runs/vq")
    showo = configlib.load_config_file(
        os.path.join(REPO, "configs/showo/tiny.py:steps=2,width=64,layers=2,records=256,tokenizer=runs/vq"))
    fake_run("runs/showo", showo, {"params": {"x": np.ones(2, np.float32)},
                                   "model_state": {"tokenizer": {"y": np.zeros(2, np.float32)}}})
    task, params, model_state = sample.load_run("runs/showo")
    np.testing.assert_array_equal(params["x"], [1, 1])
    assert list(model_state) == ["tokenizer"]
    assert "encoder" in task.pretrained_variables()["tokenizer"]["params"]
