"""Cloud TPU slices by name: chips, the topology string libtpu compiles for, and each generation's HBM per chip.

Cloud names v5e / v6e slices by chips (`v5e-16` = 16 chips, a 4x4 torus) but v4 / v5p slices by TensorCores, two
per chip (`v5p-64` = 32 chips = `v5p:2x4x4`). JAX sees one device per chip on all four generations (v4 and v5p
run their two cores as one "megacore" device), so per-device memory is per-chip memory. Configs use this table to
size their mesh and batch per slice (`configs/showo/pretrain.py:stage=1,slice=v5e-16`); the compile-only
pre-flight (`mmjax.train.preflight`) uses it to build abstract chips and to judge the memory it reports.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import ml_collections

from mmjax.configlib import ConfigError

GIB = 1024 ** 3
HBM_GIB = {"v4": 32, "v5e": 16, "v5p": 95, "v6e": 32}
# libtpu's chip configuration giving one JAX device per chip (v4 would otherwise show each core as a device).
CHIP_CONFIG = {"v4": "megacore", "v5e": "default", "v5p": "megacore", "v6e": "default"}
CORES_PER_CHIP = {"v4": 2, "v5e": 1, "v5p": 2, "v6e": 1}
SLICES = {  # Cloud accelerator type -> topology (chips along each torus axis)
    "v4-8": "v4:2x2x1", "v4-16": "v4:2x2x2", "v4-32": "v4:2x2x4", "v4-64": "v4:2x4x4", "v4-128": "v4:4x4x4",
    "v5e-1": "v5e:1x1", "v5e-4": "v5e:2x2", "v5e-8": "v5e:2x4", "v5e-16": "v5e:4x4", "v5e-32": "v5e:4x8",
    "v5e-64": "v5e:8x8", "v5e-128": "v5e:8x16", "v5e-256": "v5e:16x16",
    "v5p-8": "v5p:2x2x1", "v5p-16": "v5p:2x2x2", "v5p-32": "v5p:2x2x4", "v5p-64": "v5p:2x4x4",
    "v5p-128": "v5p:4x4x4", "v5p-256": "v5p:4x4x8",
    "v6e-4": "v6e:2x2", "v6e-8": "v6e:2x4", "v6e-16": "v6e:4x4", "v6e-32": "v6e:4x8", "v6e-64": "v6e:8x8",
    "v6e-256": "v6e:16x16",
}


@dataclasses.dataclass(frozen=True)
class Slice:
    """One TPU slice: `generation` (v4 | v5e | v5p | v6e), `topology` ("v5e:4x4"), `chips`, `hbm_bytes` per chip."""

    generation: str
    topology: str
    chips: int

    @property
    def hbm_bytes(self) -> int:
        return HBM_GIB[self.generation] * GIB

    @property
    def accelerator_type(self) -> str:
        """The Cloud name (`gcloud ... --accelerator-type`): chips for v5e / v6e, TensorCores for v4 / v5p."""
        return f"{self.generation}-{self.chips * CORES_PER_CHIP[self.generation]}"


def parse_slice(name: str) -> Slice:
    """A Cloud name ("v5e-16", "v5p-64") or a topology ("v5e:4x4", "v5p:2x4x4") -> `Slice`."""
    topology = SLICES.get(name, name)
    generation, sep, dims = topology.partition(":")
    if not sep or generation not in HBM_GIB:
        raise ValueError(f"unknown TPU slice {name!r}: give a topology such as v5e:4x4 or v5p:2x4x4 (generations "
                         f"{sorted(HBM_GIB)}) or a Cloud name in {sorted(SLICES)}")
    try:
        shape = [int(d) for d in dims.split("x")]
    except ValueError:
        raise ValueError(f"TPU topology {topology!r}: expected chips per axis like 4x4 or 2x4x4") from None
    if not shape or min(shape) < 1:
        raise ValueError(f"TPU topology {topology!r}: every axis needs at least one chip")
    return Slice(generation, topology, math.prod(shape))


@dataclasses.dataclass(frozen=True)
class SlicePlan:
    """How one config runs on one slice, chosen with the pre-flight (docs/tpu.md has the measured memory).

    The mesh is `fsdp` x `tensor` with `data` taking the remaining chips; each micro-step takes `batch_size`
    examples and the optimizer updates every `grad_accum` micro-steps, so an update sees `batch_size * grad_accum`
    examples: the paper's global batch on any slice.
    """

    fsdp: int
    tensor: int
    batch_size: int
    grad_accum: int


def apply_slice_plan(config: ml_collections.ConfigDict, name: str, plans: Mapping[str, SlicePlan],
                     global_batch: int) -> None:
    """Sets the mesh, batch, accumulation and step counts of `config` for slice `name` (a key of `plans`).

    The trainer counts micro-steps, so `total_steps` and the checkpoint / eval cadence are scaled by `grad_accum`
    (the learning-rate schedule and its warmup stay in updates, see `mmjax.train.optim`).
    """
    if name not in plans:
        raise ConfigError(f"slice={name!r}: this config has plans (checked to fit by the pre-flight) for "
                          f"{sorted(plans)}")
    plan, chips = plans[name], parse_slice(name).chips
    if plan.batch_size * plan.grad_accum != global_batch:
        raise ConfigError(f"slice plan {name}: {plan.batch_size} x {plan.grad_accum} != global batch {global_batch}")
    if chips % (plan.fsdp * plan.tensor):
        raise ConfigError(f"slice plan {name}: fsdp {plan.fsdp} x tensor {plan.tensor} does not divide {chips} chips")
    config.mesh.update(data=chips // (plan.fsdp * plan.tensor), fsdp=plan.fsdp, tensor=plan.tensor)
    config.batch_size = plan.batch_size
    config.optim.grad_accum = plan.grad_accum
    for field in ("total_steps", "checkpoint_every", "eval_every"):
        config[field] = config[field] * plan.grad_accum
