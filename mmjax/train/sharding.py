"""Device mesh from the config, the logical-axis rule table, and shardings for params and batches.

Parameters and activations are annotated with logical names (see `mmjax.nn.layers`); this module is the one place
that turns those names into mesh axes. The default rules give ZeRO-3 style FSDP over `fsdp`, tensor parallelism of
heads / MLP / vocab over `tensor`, and data parallelism of the batch over `data` x `fsdp`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import optax
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    # activations
    ("act_batch", ("data", "fsdp")),
    ("act_length", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_kv_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
    # parameters
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("vocab", "tensor"),
    ("conv_out", "fsdp"),
    ("conv_in", None),
    ("head_dim", None),
    ("norm", None),
    ("layers", None),
)


def mesh_shape(sizes: dict[str, int], num_devices: int) -> tuple[int, ...]:
    """Resolves one `-1` axis size so that the product equals the number of devices."""
    shape = [int(sizes.get(a, 1)) for a in MESH_AXES]
    if shape.count(-1) > 1:
        raise ValueError(f"config.mesh: at most one axis may be -1, got {sizes}")
    if -1 in shape:
        known = math.prod(s for s in shape if s != -1)
        if num_devices % known:
            raise ValueError(f"config.mesh {sizes}: {num_devices} devices not divisible by {known}")
        shape[shape.index(-1)] = num_devices // known
    if math.prod(shape) != num_devices:
        raise ValueError(f"config.mesh {sizes} needs {math.prod(shape)} devices, have {num_devices}")
    return tuple(shape)


def make_mesh(mesh_config: ml_collections.ConfigDict | dict, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh with Auto axis types (Linen's logical constraints need them; Explicit axes make them asserts), its
    devices laid out by their physical topology (`device_grid`)."""
    devices = list(devices if devices is not None else jax.devices())
    shape = mesh_shape(dict(mesh_config), len(devices))
    auto = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
    grid = device_grid(shape, devices)
    # Each host feeds the batch rows of its own devices (`global_batch`); a batch shard replicated over `tensor`
    # across two hosts would be fed different rows by each.
    hosts = {tuple(sorted({d.process_index for d in grid[i, j]})) for i in range(shape[0]) for j in range(shape[1])}
    if any(len(h) > 1 for h in hosts):
        raise ValueError(f"config.mesh {dict(zip(MESH_AXES, shape))}: a `tensor` group spans several hosts; use a "
                         "tensor size that fits within one host's chips")
    return Mesh(grid, MESH_AXES, axis_types=auto)


def device_grid(shape: tuple[int, ...], devices: Sequence[jax.Device]) -> np.ndarray:
    """The devices arranged as `shape` so that neighbouring mesh coordinates are neighbouring chips.

    On TPU, `mesh_utils.create_device_mesh` maps the mesh axes onto the torus (a plain reshape of the device list
    would put ring neighbours hops apart); elsewhere it keeps the list order. Devices of several slices (a
    multi-slice job: `slice_index` differs) are joined over the data-centre network along `data`, the axis that
    only all-reduces gradients once per step, so `mesh.data` must be a multiple of the slice count.
    """
    devices = list(devices)
    of_slice = device_slices(devices)
    slices = sorted(set(of_slice))
    if len(slices) > 1:
        if shape[0] % len(slices):
            raise ValueError(f"config.mesh: {len(slices)} slices are joined along `data`, so mesh.data must be a "
                             f"multiple of {len(slices)}; the mesh is {dict(zip(MESH_AXES, shape))}")
        if devices[0].platform == "cpu":   # emulated slices: no torus, the same layout (data outermost over slices)
            order = sorted(range(len(devices)), key=lambda i: (of_slice[i], devices[i].process_index, devices[i].id))
            return np.array([devices[i] for i in order], dtype=object).reshape(shape)
        per_slice = (shape[0] // len(slices), *shape[1:])
        dcn = (len(slices),) + (1,) * (len(shape) - 1)
        return mesh_utils.create_hybrid_device_mesh(per_slice, dcn, devices, allow_split_physical_axes=True)
    try:
        return mesh_utils.create_device_mesh(shape, devices)
    except (ValueError, NotImplementedError):  # e.g. 8 over a 4x4 torus: one mesh axis spans part of two rings
        return mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)


def device_slices(devices: Sequence[jax.Device]) -> list[int]:
    """Each device's slice: TPU's `slice_index`; on CPU, `MMJAX_CPU_SLICES=S` makes S slices of consecutive
    processes (`mmjax.launch --slices`), to run the multi-slice layout on one machine."""
    emulated = int(os.environ.get("MMJAX_CPU_SLICES", "0"))
    if emulated and devices and devices[0].platform == "cpu":
        return [d.process_index * emulated // jax.process_count() for d in devices]
    return [getattr(d, "slice_index", 0) for d in devices]


def rules_from_config(rules: Sequence[Sequence[Any]] | None) -> tuple[tuple[str, Any], ...]:
    """The rule table: the config's (name, mesh axes) pairs, or the defaults when the config gives none."""
    if not rules:
        return DEFAULT_RULES
    return tuple((str(name), tuple(axes) if isinstance(axes, list) else axes) for name, axes in rules)


def _divisible(spec: PartitionSpec, shape: tuple[int, ...], mesh: Mesh) -> PartitionSpec:
    """Drops mesh axes that do not divide their dimension (e.g. a 13-channel conv over fsdp=4): replicate it."""
    out = []
    for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        names = (axes,) if isinstance(axes, str) else tuple(axes or ())
        size = math.prod(mesh.shape[a] for a in names)
        out.append(axes if size and dim % size == 0 else None)
    return PartitionSpec(*out)


def logical_shardings(abstract_tree: Any, mesh: Mesh, rules: Sequence[tuple[str, Any]]) -> Any:
    """NamedShardings for a tree whose leaves may be `nn.LogicallyPartitioned` boxes (others are replicated).

    A dimension that its mesh axes do not divide is replicated instead of failing the whole run.
    """
    shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(abstract_tree), mesh, rules)
    shapes = strip_boxes(abstract_tree)
    # optax.MaskedNode stands for an optimizer-state slot of a frozen / other-group parameter: no array, keep it.
    return jax.tree.map(lambda s, x: x if isinstance(x, optax.MaskedNode)
                        else NamedSharding(mesh, _divisible(s.spec, x.shape, mesh)), shardings, shapes)


def strip_boxes(tree: Any) -> Any:
    """Removes logical-partitioning boxes without applying sharding constraints (safe outside jit)."""
    is_box = lambda x: isinstance(x, nn.meta.AxisMetadata)
    return jax.tree.map(lambda x: x.unbox(apply_constraint=False) if is_box(x) else x, tree, is_leaf=is_box)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Batches are split along their leading axis over data x fsdp."""
    return NamedSharding(mesh, PartitionSpec(("data", "fsdp")))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assembles the global batch from this host's slice (every host holds `global_batch / process_count` rows)."""
    sharding = batch_sharding(mesh)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch)


def maybe_initialize_distributed() -> None:
    """Starts multi-host JAX when the environment describes a multi-process job (TPU pod, SLURM, explicit vars);
    see `mmjax.train.multihost` for the variables read and the timeouts.

    A Cloud TPU VM reached over ssh need not have the TPU variables in its environment (libtpu and jax read the
    slice's workers from the metadata server), so `scripts/tpu/worker_loop.sh` sets MMJAX_DISTRIBUTED=1:
    `jax.distributed.initialize()` then finds the coordinator and this host's index by itself.
    """
    from mmjax.train import multihost

    multihost.initialize()


def to_host(x: jax.Array) -> np.ndarray:
    """A global array's whole value on this host; parts held by other hosts (a batch-sharded array on several
    hosts, which `jax.device_get` refuses) are all-gathered, so every host must call this together."""
    if getattr(x, "is_fully_addressable", True) or x.is_fully_replicated:
        return np.asarray(jax.device_get(x))
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
