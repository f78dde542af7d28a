"""An analytic model of one train step of a config on a slice of chips: bytes per chip and seconds per step.

The model needs no compile. The workload is traced once per example on the CPU (`profile`): the parameters with
their logical axis names, the train step's FLOPs (XLA's cost analysis of the lowered gradient, so rematerialised
forward passes and every matmul and attention product count as they will run), and the activations the backward
keeps under the config's remat policy (the residuals of `jax.vjp` of the loss: exactly what the policy saves).

Per chip, for a mesh (data, fsdp, tensor), `examples` per micro-step and `grad_accum` micro-steps per update:
- parameters: each one's bytes divided by the mesh axes its logical names shard it over (the rule table; an axis
  that does not divide its dimension replicates it, as `sharding.logical_shardings` does); gradients the same for
  the trained ones (f32), AdamW's two moments (or one for the others), the accumulator when `grad_accum > 1` and
  the EMA copy when `ema_decay > 0`; FSDP's gathered copy of the largest parameter (bf16) on top.
- activations: the saved residuals per example x examples per batch shard, divided by `tensor`; without remat
  times `RESIDUAL_FUSION`: XLA fuses elementwise producers into the backward and recomputes them there, so it
  keeps fewer bytes than JAX's residuals (fitted on one measured step). Not modelled: the backward's transient
  working set (one block recomputed, the f32 logits of the loss), which the compiled TPU steps show to be as large
  as the saved activations under remat (docs/tpu.md, calibration).
- time of a micro-step: two op classes, each at max(FLOPs / peak, bytes / bandwidth), added: the matmuls,
  compute-bound at `MATMUL_EFFICIENCY` of the published peak, and the elementwise rest, bandwidth-bound (the
  residuals written and read twice, forward and backward, and three passes over the chip's parameters); then the
  collectives over ICI: FSDP's all-gather (forward, backward) and reduce-scatter of the bf16 parameters per
  micro-step, tensor parallelism's activation all-reduces (a quarter of the residual bytes), and the data axis'
  gradient all-reduce once per update (over DCN between slices).

Chip figures (`CHIPS`): dense bf16 peak, HBM capacity and bandwidth, bidirectional ICI (NVLink) bandwidth per chip
and data-centre network per chip, from the vendors' spec pages (`source`).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mmjax import configlib
from mmjax.train import optim, sharding
from mmjax.train.slice_fit import Mesh3

GB = 1e9
GIB = 1024 ** 3


@dataclasses.dataclass(frozen=True)
class Chip:
    """One accelerator: dense bf16 FLOP/s, HBM bytes and bytes/s, ICI and DCN bytes/s per chip, where from."""

    name: str
    bf16_flops: float
    hbm_bytes: float
    hbm_bandwidth: float
    ici_bandwidth: float
    dcn_bandwidth: float
    source: str


CHIPS = {
    "v4": Chip("TPU v4", 275e12, 32 * GIB, 1200 * GB, 2400e9 / 8, 25e9 / 8,
               "cloud.google.com/tpu/docs/v4 (ICI 2400 Gbps per chip; DCN assumed as v5e)"),
    "v5e": Chip("TPU v5e", 197e12, 16 * GIB, 819 * GB, 400 * GB, 200e9 / 8 / 8,
                "cloud.google.com/tpu/docs/v5e (ICI 400 GBps bidirectional; 2 x 100 Gbps NIC per 8-chip host)"),
    "v5p": Chip("TPU v5p", 459e12, 95 * GIB, 2765 * GB, 1200 * GB, 50e9 / 8,
                "cloud.google.com/tpu/docs/v5p (ICI 1200 GBps bidirectional, DCN 50 Gbps per chip)"),
    "v6e": Chip("TPU v6e", 918e12, 32 * GIB, 1638 * GB, 800 * GB, 200e9 / 8 / 8,
                "cloud.google.com/tpu/docs/v6e (ICI 800 GBps bidirectional; DCN assumed as v5e)"),
    "h100": Chip("NVIDIA H100 SXM", 989e12, 80 * GB, 3350 * GB, 900 * GB, 400e9 / 8,
                 "nvidia.com/en-us/data-center/h100 (dense bf16; NVLink 900 GB/s; 400 Gb/s NIC per GPU)"),
    "h200": Chip("NVIDIA H200 SXM", 989e12, 141 * GB, 4800 * GB, 900 * GB, 400e9 / 8,
                 "nvidia.com/en-us/data-center/h200 (dense bf16; NVLink 900 GB/s; 400 Gb/s NIC per GPU)"),
}
OPTIMIZER_MOMENTS = {"adamw": 2, "sgd": 1, "adafactor": 1}
# The bf16 matmul rate reached in practice: 695 of 989 TFLOP/s measured on one H200 (docs/benchmarks.md); taken
# for every chip.
MATMUL_EFFICIENCY = 0.70
# Activation bytes XLA keeps per byte of JAX's backward residuals: Show-o 1.3B stage 1 on one H200 peaked at
# 43.8 GiB, 21.6 of them parameters, gradients and AdamW moments, against 86.8 GiB of residuals (docs/tpu.md).
RESIDUAL_FUSION = 0.256


@dataclasses.dataclass(frozen=True)
class Param:
    shape: tuple[int, ...]
    names: tuple[str | None, ...]
    itemsize: int
    trained: bool


@dataclasses.dataclass(frozen=True)
class Profile:
    """One example of a config's train step, traced on the CPU: what `estimate` scales to a plan."""

    params: tuple[Param, ...]
    flops_per_example: float
    saved_bytes_per_example: float
    remat_policy: str


def _fields_named(config: ml_collections.ConfigDict, name: str, prefix: str = "") -> list[str]:
    found = []
    for key, value in config.items():
        if isinstance(value, ml_collections.ConfigDict):
            found += _fields_named(value, name, f"{prefix}{key}.")
        elif key == name:
            found.append(prefix + key)
    return found


def remat_fields(config: ml_collections.ConfigDict) -> list[str]:
    """Dotted names of the config's `remat_policy` fields (e.g. `model.remat_policy`, `model.lm.remat_policy`)."""
    return _fields_named(config, "remat_policy")


def profile(config: ml_collections.ConfigDict) -> Profile:
    """Traces `config`'s train step on the CPU (abstractly: nothing is allocated or compiled).

    Layers are traced unrolled (`scan_layers=False`): XLA's cost analysis counts a loop body once, and the two
    layouts do the same arithmetic. The activations per example are the residuals of two examples less those of
    one: what the backward keeps of the parameters (cast copies included) cancels out.
    """
    from mmjax.train.tasks import make_task

    config, task = _unrolled(config, make_task)
    mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices("cpu")[:1])
    key = jax.ShapeDtypeStruct((2,), jnp.uint32)
    specs = lambda n: {k: jax.ShapeDtypeStruct(np.shape(v), np.asarray(v).dtype)
                       for k, v in task.example_batch(n).items()}
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.rules_from_config(config.sharding.rules)):
        variables = jax.eval_shape(lambda r: task.init(r, jax.tree.map(jnp.zeros_like, specs(1))), key)
        boxed = variables["params"]
        plain = sharding.strip_boxes(variables)
        params, state = plain.pop("params"), plain
        frozen = optim.frozen_mask(config.optim)(params)

        def loss(p, st, b, rng):
            p = jax.tree.map(lambda x, f: jax.lax.stop_gradient(x) if f else x, p, frozen)
            return task.loss_fn(p, st, b, rng)[0]

        def saved(n: int) -> int:
            res = jax.eval_shape(lambda p, *a: jax.vjp(lambda q: loss(q, *a), p)[1], params, state, specs(n), key)
            return sum(math.prod(r.shape) * np.dtype(r.dtype).itemsize for r in jax.tree.leaves(res))

        activations = saved(2) - saved(1)
        cost = jax.jit(jax.grad(loss)).lower(params, state, specs(1), key).cost_analysis() or {}
    is_box = lambda x: isinstance(x, nn.Partitioned)
    leaves = jax.tree.leaves(boxed, is_leaf=is_box)
    out = tuple(Param(tuple(leaf.value.shape if is_box(leaf) else leaf.shape),
                      tuple(leaf.names) if is_box(leaf) else (),
                      np.dtype((leaf.value if is_box(leaf) else leaf).dtype).itemsize, not f)
                for leaf, f in zip(leaves, jax.tree.leaves(frozen)))
    fields = remat_fields(config)
    policy = str(_get(config, fields[0])) if fields else "none"
    return Profile(out, float(cost.get("flops", 0.0)), float(activations), policy)


def _unrolled(config: ml_collections.ConfigDict, make_task: Any) -> tuple[ml_collections.ConfigDict, Any]:
    """A copy of `config` with every layer stack unrolled, and its task: `scan_layers=False` where the config has
    the field, and added beside each `remat_policy` of a preset model that scans by default (LLaVA's `model.lm`);
    the config itself when a model does not take the field."""
    unrolled = copy.deepcopy(config)
    with unrolled.unlocked():
        configlib.apply_overrides(unrolled, [f"{f}=False" for f in _fields_named(unrolled, "scan_layers")])
        for field in remat_fields(unrolled):
            node = _get(unrolled, field.rpartition(".")[0]) if "." in field else unrolled
            if "scan_layers" not in node and "preset" in node:
                node.scan_layers = False
    try:
        return unrolled, make_task(unrolled)
    except (TypeError, ValueError):
        return config, make_task(config)


def _get(config: ml_collections.ConfigDict, dotted: str) -> Any:
    node = config
    for part in dotted.split("."):
        node = node[part]
    return node


def shard_factor(param: Param, mesh: Mesh3, rules: tuple[tuple[str, Any], ...]) -> int:
    """How many ways the mesh splits one parameter under the rule table (dimensions an axis does not divide stay
    whole)."""
    sizes = dict(zip(sharding.MESH_AXES, mesh))
    table = dict(rules)
    factor = 1
    for dim, name in zip(param.shape, param.names):
        axes = table.get(name)
        axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
        split = math.prod(sizes[a] for a in axes)
        if split > 1 and dim % split == 0:
            factor *= split
    return factor


@dataclasses.dataclass(frozen=True)
class Estimate:
    """Per chip: bytes by kind and the predicted peak; seconds of a micro-step by term and of an update."""

    param_bytes: float
    optimizer_bytes: float
    gradient_bytes: float
    activation_bytes: float
    peak_bytes: float
    compute_seconds: float
    memory_seconds: float
    collective_seconds: float
    step_seconds: float       # one micro-step
    update_seconds: float     # grad_accum micro-steps and the update


def estimate(prof: Profile, chip: Chip, mesh: Mesh3, *, examples: int, grad_accum: int,
             config: ml_collections.ConfigDict, num_slices: int = 1) -> Estimate:
    """The model of one micro-step of `examples` (global) on `mesh` chips of `chip`, and of one update."""
    data, fsdp, tensor = mesh
    chips = data * fsdp * tensor
    rules = sharding.rules_from_config(config.sharding.rules)
    params = sum(math.prod(p.shape) * p.itemsize / shard_factor(p, mesh, rules) for p in prof.params)
    trained = sum(math.prod(p.shape) * 4 / shard_factor(p, mesh, rules) for p in prof.params if p.trained)
    moments = OPTIMIZER_MOMENTS.get(str(config.optim.name), 2)
    grads = trained * (2 if grad_accum > 1 else 1)  # optax.MultiSteps keeps an accumulator beside the gradient
    ema = params if float(config.get("ema_decay", 0.0)) > 0 else 0.0
    largest = max((math.prod(p.shape) * 2 for p in prof.params), default=0) if fsdp > 1 else 0
    per_shard = examples / (data * fsdp)
    fused = RESIDUAL_FUSION if prof.remat_policy == "none" else 1.0  # a remat policy's residuals are kept as saved
    activations = fused * prof.saved_bytes_per_example * per_shard / tensor
    peak = params + moments * trained + grads + ema + activations + 2 * largest

    compute = prof.flops_per_example * examples / chips / (MATMUL_EFFICIENCY * chip.bf16_flops)
    hbm = 4 * prof.saved_bytes_per_example * per_shard / tensor + 3 * params
    memory = hbm / chip.hbm_bandwidth
    link = chip.ici_bandwidth / 2  # one direction of a ring
    total_param_bytes = sum(math.prod(p.shape) * 2 for p in prof.params) / tensor  # bf16 copies moved by FSDP
    fsdp_bytes = 3 * total_param_bytes * (fsdp - 1) / fsdp if fsdp > 1 else 0.0
    tensor_bytes = 0.25 * prof.saved_bytes_per_example * per_shard * (tensor - 1) / tensor if tensor > 1 else 0.0
    collective = (fsdp_bytes + tensor_bytes) / link
    grad_bytes = sum(math.prod(p.shape) * 4 for p in prof.params if p.trained) / (fsdp * tensor)
    replicas = data // num_slices
    allreduce = 2 * grad_bytes * (replicas - 1) / replicas / link if replicas > 1 else 0.0
    if num_slices > 1:
        allreduce += 2 * grad_bytes * (num_slices - 1) / num_slices / chip.dcn_bandwidth
    step = compute + memory + collective
    return Estimate(params, moments * trained, grads, activations, peak, compute, memory, collective, step,
                    step * grad_accum + allreduce)
