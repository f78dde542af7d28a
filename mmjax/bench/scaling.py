"""Several devices of one host: weak scaling, sharded-vs-single equivalence, restoring onto another mesh.

Scaling out is a config change (`mesh.fsdp`, `mesh.tensor`, `batch_size`); these checks show that it pays and
that it computes the same thing:
- `weak_scaling`: the per-device batch fixed, 1 -> N devices; efficiency = throughput(N) / (N * throughput(1)).
- `equivalence`: the first steps' losses with the batch sharded over N devices (FSDP) equal the one-device losses
  on the same global batch (to bf16 / float32 tolerance).
- `restore_across_meshes`: a state saved from an N-device mesh restores through orbax onto an M-device mesh and
  the next step's loss equals the one of the run that stayed on N devices.
They run on GPUs (`scripts/benchmark.py --scaling`) and, for tests, on forced CPU devices
(`XLA_FLAGS=--xla_force_host_platform_device_count=N`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from mmjax import configlib
from mmjax.bench.measure import timed


def sharded_trainer(config_spec: str, overrides: Sequence[str], devices: Sequence[jax.Device],
                    per_device_batch: int, mesh: str = "fsdp") -> Any:
    """A built Trainer over `devices` with `per_device_batch` rows each, sharded along `mesh` (fsdp | data)."""
    from mmjax.train.trainer import Trainer

    n = len(devices)
    layout = {"fsdp": (1, n), "data": (n, 1)}[mesh]
    config = configlib.apply_overrides(configlib.load_config_file(config_spec), [
        *overrides, f"batch_size={per_device_batch * n}", f"mesh.data={layout[0]}", f"mesh.fsdp={layout[1]}",
        "mesh.tensor=1"])
    trainer = Trainer(config, devices=devices)
    trainer.build()
    return trainer


def _losses(trainer: Any, batches: list[dict[str, np.ndarray]]) -> list[float]:
    from mmjax.train import sharding

    state, out = trainer.init_state(), []
    for local in batches:
        state, metrics = trainer.train_step(state, sharding.global_batch(local, trainer.mesh))
        out.append(float(metrics["loss"]))
    return out


def equivalence(config_spec: str, overrides: Sequence[str], n: int, steps: int = 3,
                per_device_batch: int = 1) -> dict[str, list[float]]:
    """Losses of the first `steps` on 1 device and on `n` devices (FSDP), on the same global batches."""
    single = sharded_trainer(config_spec, overrides, jax.devices()[:1], per_device_batch * n)
    many = sharded_trainer(config_spec, overrides, jax.devices()[:n], per_device_batch)
    batches = [single.task.synthetic_batch(per_device_batch * n, seed) for seed in range(steps)]
    return {"one_device": _losses(single, batches), f"{n}_devices": _losses(many, batches)}


def restore_across_meshes(config_spec: str, overrides: Sequence[str], n_from: int, n_to: int, directory: str,
                          per_device_batch: int = 1) -> dict[str, float]:
    """Next-step loss after saving on `n_from` devices, continuing there vs restoring onto `n_to` devices."""
    import orbax.checkpoint as ocp

    from mmjax.train import sharding

    rows = per_device_batch * max(n_from, n_to)
    source = sharded_trainer(config_spec, overrides, jax.devices()[:n_from], rows // n_from)
    target = sharded_trainer(config_spec, overrides, jax.devices()[:n_to], rows // n_to)
    first, second = (source.task.synthetic_batch(rows, seed) for seed in (0, 1))
    state, _ = source.train_step(source.init_state(), sharding.global_batch(first, source.mesh))
    path = os.path.join(os.path.abspath(directory), "state")
    with ocp.StandardCheckpointer() as ckpt:
        ckpt.save(path, state)
        ckpt.wait_until_finished()
        restored = ckpt.restore(path, target.abstract_state)
    _, stayed = source.train_step(state, sharding.global_batch(second, source.mesh))
    _, moved = target.train_step(restored, sharding.global_batch(second, target.mesh))
    return {f"loss_on_{n_from}": float(stayed["loss"]), f"loss_restored_on_{n_to}": float(moved["loss"])}


def weak_scaling(config_spec: str, overrides: Sequence[str], per_device_batch: int, counts: Sequence[int],
                 iters: int = 10) -> list[dict[str, float]]:
    """Step time and throughput per device count, the per-device batch fixed; efficiency against 1 device."""
    rows = []
    for n in counts:
        trainer = sharded_trainer(config_spec, overrides, jax.devices()[:n], per_device_batch)
        state, batch = trainer.init_state(), trainer.synthetic_batch()
        holder = [state]

        def step(trainer=trainer, batch=batch, holder=holder):
            holder[0], metrics = trainer.train_step(holder[0], batch)
            return metrics["loss"]

        sec, _ = timed(step, warmup=2, iters=iters)
        rows.append({"devices": n, "ms": sec * 1e3, "examples_per_s": per_device_batch * n / sec})
    base = rows[0]["examples_per_s"] / rows[0]["devices"]
    for row in rows:
        row["efficiency"] = row["examples_per_s"] / (row["devices"] * base)
    return rows
