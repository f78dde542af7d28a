"""The step cost model and the slice planner on tiny configs: FLOPs and residuals traced on the CPU, per-chip bytes
under a mesh, the enumeration (global batch kept, meshes the shapes allow, ranked by predicted time), `--plan`.

Paper-size plans compile for minutes each: they are documented commands (docs/tpu.md), not tests.
"""

from __future__ import annotations

import math
import os
import sys

import pytest

from mmjax import configlib
from mmjax.train import cost_model, planner, preflight, sharding, slice_fit
from mmjax.train.cost_model import Param
from tests.helpers import REPO, run

pytest.importorskip("libtpu")
RULES = (("embed", "fsdp"), ("mlp", "tensor"), ("vocab", "tensor"), ("norm", None))


def load(spec: str):
    return configlib.load_config_file(os.path.join(REPO, "configs", spec))


@pytest.fixture(scope="module")
def vit():
    """configs/vit/digits.py (it has a remat_policy field) profiled without and with full rematerialisation."""
    config = load("vit/digits.py")
    return config, {p: cost_model.profile(planner.with_policy(config, p)) for p in ("none", "full")}


def test_rematerialisation_costs_flops_and_saves_residuals(vit):
    """Full remat recomputes the forward in the backward (between 1 and 4/3 of the FLOPs: the forward is a third
    of a step) and keeps fewer bytes; the traced FLOPs are at least the matmul count 6 x params x examples."""
    _, profiles = vit
    none, full = profiles["none"], profiles["full"]
    assert (none.remat_policy, full.remat_policy) == ("none", "full")
    assert none.flops_per_example < full.flops_per_example <= 4 / 3 * none.flops_per_example * 1.01
    assert full.saved_bytes_per_example < none.saved_bytes_per_example
    matmul_params = sum(math.prod(p.shape) for p in none.params if len(p.shape) >= 2)
    assert none.flops_per_example >= 6 * matmul_params


def test_parameter_bytes_follow_the_sharding_rules():
    config = load("lm/tiny.py")
    with config.unlocked():
        config.sharding.rules = RULES
    kernel = Param((64, 256), ("embed", "mlp"), 4, True)
    assert cost_model.shard_factor(kernel, (1, 4, 2), RULES) == 8
    assert cost_model.shard_factor(Param((66, 256), ("embed", "mlp"), 4, True), (1, 4, 2), RULES) == 2  # 66 % 4
    assert cost_model.shard_factor(Param((64,), ("norm",), 4, True), (1, 4, 2), RULES) == 1
    frozen = Param((64, 256), ("embed", "mlp"), 4, False)
    prof = cost_model.Profile((kernel, frozen), flops_per_example=1e9, saved_bytes_per_example=1e6,
                              remat_policy="none")
    chip = cost_model.CHIPS["v5e"]
    one = cost_model.estimate(prof, chip, (8, 1, 1), examples=8, grad_accum=1, config=config)
    fsdp = cost_model.estimate(prof, chip, (1, 8, 1), examples=8, grad_accum=1, config=config)
    assert one.param_bytes == 2 * 64 * 256 * 4 and fsdp.param_bytes == one.param_bytes / 8
    assert one.optimizer_bytes == 2 * 64 * 256 * 4  # AdamW's two moments of the trained kernel only
    assert one.activation_bytes == fsdp.activation_bytes == cost_model.RESIDUAL_FUSION * 1e6  # 1 example per shard
    accum = cost_model.estimate(prof, chip, (8, 1, 1), examples=8, grad_accum=4, config=config)
    assert accum.gradient_bytes == 2 * one.gradient_bytes  # the accumulator
    assert accum.update_seconds > 4 * accum.step_seconds  # four micro-steps and the data-parallel all-reduce
    assert one.collective_seconds == 0 and fsdp.collective_seconds > 0


def test_plans_keep_the_global_batch_and_rank_by_predicted_time(vit):
    config, profiles = vit
    shapes = slice_fit.model_shapes(config)
    sizes = slice_fit.tensor_dims(shapes, sharding.rules_from_config(config.sharding.rules))
    assert sizes  # heads, MLP and classes split over `tensor`: the meshes respect them
    plans = planner.enumerate_plans(config, "v5e:4x4", profiles, sizes, per_host=4)
    assert plans
    seen = set()
    for p in plans:
        data, fsdp, tensor = p.mesh
        assert data * fsdp * tensor == 16 and p.batch_size % (data * fsdp) == 0 and tensor <= 4
        assert p.batch_size * p.grad_accum == config.batch_size
        assert p.estimate.peak_bytes <= 0.9 * 16 * 1024 ** 3
        seen.add(p.remat_policy)
    assert seen == {"none", "full"}
    times = [p.estimate.update_seconds for p in plans]
    assert times == sorted(times)
    best = plans[0]
    trial = planner.with_policy(config, best.remat_policy)
    with trial.unlocked():
        configlib.apply_overrides(trial, best.overrides(config))
    assert slice_fit.check(trial, shapes, preflight.topology_devices("v5e:4x4")) == []
    assert trial.total_steps == config.total_steps * best.grad_accum
    # a chip too small for any plan: nothing is proposed
    assert planner.enumerate_plans(config, "v5e:4x4", profiles, sizes, per_host=4, headroom=0.999999) == []


def test_plan_cli_prints_the_table_and_one_override_line():
    """--plan on configs/lm/tiny.py for v5e:2x2 without compiles (--plan_k 0): the best plans and the winner."""
    result = run([sys.executable, "-m", "mmjax.train", "--config", "configs/lm/tiny.py", "--plan", "v5e:2x2",
                  "--plan_k", "0"])
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert lines[0].startswith("plan v5e:2x2: 4 chips x 16 GiB, ") and "mesh d,f,t" in lines[1]
    assert len(lines) == 6 and lines[-1].startswith("best: --config.mesh.data=")
    assert "--config.batch_size=" in lines[-1] and "--config.total_steps=" in lines[-1]


@pytest.mark.slow
def test_plan_compiles_the_best_plan():
    """--plan with one compile (a minute or more on 2 cores): the winner's compiled peak is in the table."""
    result = run([sys.executable, "-m", "mmjax.train", "--config", "configs/lm/tiny.py", "--plan", "v5e:2x2",
                  "--plan_k", "1"])
    assert result.returncode == 0, result.stderr[-2000:]
    row = result.stdout.splitlines()[2].split()
    assert row[0] == "1" and float(row[7]) > 0  # compiled peak GiB
