"""End-to-end trainer behaviour on the digits ViT: exact resume after SIGKILL (and with a relative workdir, each
metrics line once), SIGTERM, corrupt checkpoints, non-finite losses and evaluations, and sharded (8 CPU devices)
vs single-device equality. The input-pipeline side (starved and stuck sources, skip counts) is in
test_trainer_data.py."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from mmjax import cli, configlib
from mmjax.data import pipeline
from mmjax.train import checkpoint
from mmjax.train.trainer import NonFiniteEvalError, NonFiniteLossError, Trainer
from tests.helpers import REPO, run, subprocess_env, train_cmd

CONFIG = os.path.join(REPO, "configs/vit/digits.py")
TINY = ("batch_size=16", "log_every=10", "eval_every=0", "checkpoint_every=50", "keep_checkpoints=10",
        "optim.warmup_steps=10")


def tiny_config(steps: int, *extra: str):
    return configlib.apply_overrides(configlib.load_config_file(f"{CONFIG}:steps={steps}"), [*TINY, *extra])


def read_metrics(workdir: str) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def assert_trees_equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_sigkill_mid_run_then_resume_equals_uninterrupted_run(tmp_path):
    steps = 200
    straight, killed = str(tmp_path / "straight"), str(tmp_path / "killed")
    cmd = lambda wd: train_cmd(f"{CONFIG}:steps={steps}", wd, *TINY)
    proc = subprocess.Popen(cmd(killed), env=subprocess_env(), cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    first = os.path.join(killed, "checkpoints", "50")
    deadline = time.time() + 300
    while not os.path.isdir(first) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not any(r.get("final") for r in read_metrics(killed)), "the run finished before it could be killed"
    resumed = run(cmd(killed))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    done = run(cmd(straight))
    assert done.returncode == 0, done.stderr[-3000:]
    # the goodput account differs (the killed run lost time); everything trained must not
    final = lambda wd: [{k: v for k, v in r.items() if not k.startswith("goodput")} for r in read_metrics(wd)
                        if r.get("final")]
    assert final(killed) == final(straight)
    assert_trees_equal(checkpoint.load_params(killed), checkpoint.load_params(straight))


def test_sigterm_saves_and_exits_then_resumes(tmp_path):
    workdir = str(tmp_path / "run")
    proc = subprocess.Popen(train_cmd(f"{CONFIG}:steps=100000", workdir, *TINY), env=subprocess_env(), cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while not os.path.exists(os.path.join(workdir, "metrics.jsonl")) and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == cli.EXIT_PREEMPTED == 75, out[-2000:]
    assert "preempted" in out
    steps = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), save_every=1, keep=3).steps()
    assert steps and steps[-1] >= 10


def test_corrupt_latest_checkpoint_falls_back_to_previous(tmp_path, caplog):
    workdir = str(tmp_path / "run")
    Trainer(tiny_config(100), workdir).run()
    latest = os.path.join(workdir, "checkpoints", "100", "state")
    for root, _, files in os.walk(latest):
        for name in files:
            with open(os.path.join(root, name), "wb") as f:
                f.write(b"garbage")
    trainer = Trainer(tiny_config(100), workdir)
    trainer.build()
    ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), save_every=50, keep=10)
    data_iter = iter(pipeline.train_dataset(trainer.task.source("train"), trainer.task.preprocess,
                                            global_batch_size=16, seed=0, counter=trainer.counter))
    with caplog.at_level("WARNING"):
        state, step = ckpt.restore(trainer.abstract_state, data_iter)
    assert step == 50 and int(state.step) == 50
    assert any("cannot be restored" in r.message for r in caplog.records)
    assert ckpt.steps() == [50] and os.listdir(os.path.join(workdir, "checkpoints", "corrupt"))[0].startswith("100-")
    for step_dir in ("50",):
        shutil.rmtree(os.path.join(workdir, "checkpoints", step_dir, "state"))
    with pytest.raises(checkpoint.CheckpointError, match="could be restored"):
        ckpt.restore(trainer.abstract_state, data_iter)


def test_relative_workdir_resume_after_a_lost_checkpoint_writes_each_metric_once(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = lambda: tiny_config(40, "checkpoint_every=20")
    first = Trainer(config(), "run").run()
    before = read_metrics("run")
    shutil.rmtree("run/checkpoints/40")   # killed after logging step 40, before its checkpoint was written
    resumed = Trainer(config(), "run").run()
    after = read_metrics("run")
    assert [(r["step"], r["split"]) for r in after] == [(10, "train"), (20, "train"), (30, "train"), (40, "train"),
                                                        (40, "eval")]
    assert [r["loss"] for r in after] == [r["loss"] for r in before]    # steps 21-40 redone exactly
    no_goodput = lambda record: {k: v for k, v in record.items() if not k.startswith("goodput")}
    assert no_goodput(resumed) == no_goodput(first)    # the goodput account differs: the resume lost time


def test_nonfinite_skip_counts_steps_and_a_nonfinite_final_evaluation_is_an_error(tmp_path):
    trainer = Trainer(tiny_config(20, "nonfinite=skip"), str(tmp_path / "run"))
    original_loss, original_eval = trainer.task.loss_fn, trainer.task.evaluate

    def poisoned(params, model_state, batch, rng):   # batches whose first label is 3 give a NaN loss
        loss, aux = original_loss(params, model_state, batch, rng)
        return jax.numpy.where(batch["label"][0] == 3, np.float32("nan"), loss), aux

    trainer.task.loss_fn = poisoned
    trainer.task.evaluate = lambda *a: {**original_eval(*a), "loss": float("nan")}
    with pytest.raises(NonFiniteEvalError, match=r"final evaluation at step 20 is not finite \(loss=nan\)"):
        trainer.run()
    data = iter(pipeline.train_dataset(trainer.task.source("train"), trainer.task.preprocess, global_batch_size=16,
                                       seed=0, counter=pipeline.SkipCounter()))
    firsts = [int(next(data)["label"][0]) for _ in range(20)]
    expected = [firsts[:10].count(3), firsts.count(3)]
    records = read_metrics(str(tmp_path / "run"))
    assert [r["nonfinite_steps"] for r in records if r["split"] == "train"] == expected and expected[1] > 0
    assert all(np.isfinite(r["loss"]) for r in records if r["split"] == "train")  # means over the finite steps
    assert records[-1]["final"] and records[-1]["loss"] == "nan"     # written, then refused


def test_a_warmup_longer_than_the_run_is_warned(tmp_path, caplog):
    with caplog.at_level("WARNING", logger="mmjax.train.trainer"):
        Trainer(tiny_config(20, "optim.warmup_steps=50"), str(tmp_path))
    assert any("warmup_steps=50 is longer than the run (total_steps=20)" in r.getMessage() for r in caplog.records)


def test_nonfinite_loss_stops_without_checkpointing(tmp_path):
    workdir = str(tmp_path / "run")
    trainer = Trainer(tiny_config(30), workdir)
    original = trainer.task.loss_fn

    def poisoned(params, model_state, batch, rng):
        loss, aux = original(params, model_state, batch, rng)
        return loss * np.float32("nan"), aux

    trainer.task.loss_fn = poisoned
    with pytest.raises(NonFiniteLossError, match="non-finite"):
        trainer.run()
    assert not os.path.isdir(os.path.join(workdir, "checkpoints")) or not os.listdir(
        os.path.join(workdir, "checkpoints"))


PROBE = """
import json, sys
import jax
from mmjax import cli, configlib
from mmjax.data import pipeline
from mmjax.train.trainer import Trainer
cfg = configlib.apply_overrides(configlib.load_config_file(sys.argv[1]), sys.argv[2:])
t = Trainer(cfg, "/tmp/mmjax-probe"); t.build()
state = t._init(t._rng)
from mmjax.data import pipeline
from mmjax.train import sharding
data = iter(pipeline.train_dataset(t.task.source('train'), t.task.preprocess, global_batch_size=cfg.batch_size,
                                   seed=cfg.seed, counter=t.counter))
losses = []
with t.activate():
    for _ in range(3):
        state, m = t._step(state, sharding.global_batch(next(data), t.mesh))
        losses.append(float(m['loss']))
kernel = state.params['encoder']['block_0']['mlp']['fc1']['kernel']
qkv = state.params['encoder']['block_0']['attn']['q_proj']['kernel']
spec = lambda a: [x if x is None or isinstance(x, str) else list(x) for x in a.sharding.spec]
mu = [x for x in jax.tree.leaves(state.opt_state) if x.shape == kernel.shape][0]
print(json.dumps({'losses': losses, 'devices': len(jax.devices()), 'fc1': spec(kernel), 'q_proj': spec(qkv),
                  'fc1_shards': len(kernel.addressable_shards), 'mu_fc1': spec(mu)}))
"""


def test_fsdp4_data2_on_8_devices_matches_single_device():
    args = [f"{CONFIG}:steps=3", "batch_size=16"]
    single = run([sys.executable, "-c", PROBE, *args], devices=1)
    assert single.returncode == 0, single.stderr[-3000:]
    multi = run([sys.executable, "-c", PROBE, *args, "mesh.data=2", "mesh.fsdp=4", "mesh.tensor=1"], devices=8)
    assert multi.returncode == 0, multi.stderr[-3000:]
    one, eight = json.loads(single.stdout.splitlines()[-1]), json.loads(multi.stdout.splitlines()[-1])
    assert eight["devices"] == 8 and one["devices"] == 1
    np.testing.assert_allclose(eight["losses"], one["losses"], rtol=2e-6)
    assert eight["fc1"] == ["fsdp", "tensor"]               # (embed, mlp) -> (fsdp, tensor)
    assert eight["mu_fc1"] == ["fsdp", "tensor"]            # Adam moments are sharded like their params
    assert eight["q_proj"][:2] == ["fsdp", "tensor"]        # (embed, heads, head_dim)
    assert eight["fc1_shards"] == 8


def test_pretrained_weights_are_inserted_with_their_sharding_and_checked(tmp_path):
    from mmjax.train.trainer import insert_pretrained

    trainer = Trainer(tiny_config(2), str(tmp_path))
    trainer.build()
    state = trainer._init(trainer._rng)
    head = np.arange(64 * 10, dtype=np.float32).reshape(64, 10)
    new = insert_pretrained(state, {"params": {"head": {"kernel": head}}})
    np.testing.assert_array_equal(new.params["head"]["kernel"], head)
    assert new.params["head"]["kernel"].sharding == state.params["head"]["kernel"].sharding
    assert_trees_equal(new.params["encoder"], state.params["encoder"])
    with pytest.raises(ValueError, match=r"params/head/kernel has shape \(3, 3\)"):
        insert_pretrained(state, {"params": {"head": {"kernel": np.ones((3, 3))}}})
    with pytest.raises(ValueError, match="has no \\['hed'\\]"):
        insert_pretrained(state, {"params": {"hed": {}}})


def test_frozen_parameters_get_no_gradient_work():
    """Stage 1 of the tiny LLaVA trains the projector alone: the compiled step must not back-propagate through
    the frozen tower and LM weights (fewer FLOPs), and the frozen weights must not move."""
    from mmjax.train.trainer import Trainer

    def build(frozen):
        config = configlib.load_config_file("configs/llava/tiny.py:stage=1")
        config = configlib.apply_overrides(config, [f"optim.frozen={frozen}", "batch_size=2"])
        trainer = Trainer(config)
        trainer.build()
        return trainer

    frozen, free = build("('^(?!projector/)',)"), build("()")
    cost = lambda t: t.lower_step().compile().cost_analysis()["flops"]
    assert cost(frozen) < 0.8 * cost(free)
    state = frozen.init_state()
    before = jax.device_get(state.params)
    state, metrics = frozen.train_step(state, frozen.synthetic_batch())
    after = jax.device_get(state.params)
    moved = jax.tree.map(lambda a, b: bool(np.any(a != b)), before, after)
    assert moved["projector"] and not any(jax.tree.leaves(moved["lm"])) and not any(
        jax.tree.leaves(moved["vision_tower"]))
    assert np.isfinite(float(metrics["grad_norm"])) and float(metrics["grad_norm"]) > 0
