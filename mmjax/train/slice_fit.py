"""Shape checks of a config against a TPU slice, before anything is lowered: a verdict line instead of a traceback.

A compile for a slice fails late and cryptically when the config's shapes cannot be laid out on it at all: a global
batch that does not split over the batch shards (`mesh.data` x `mesh.fsdp`), a mesh whose product is not the chip
count, a `tensor` axis that does not divide the heads, MLP width or vocabulary, or a `tensor` group that would span
two hosts. These are arithmetic on the config and the parameter shapes (traced abstractly, nothing allocated), so
they are checked first and each becomes a `Problem` naming the config field, with the nearest settings that work.

Sequence lengths are not a constraint on this codebase's kernels: splash attention pads every row to whole tiles
(512 tokens, or one lane-rounded tile for shorter rows, `mmjax.nn.splash`), so no length is refused.

`valid_meshes` enumerates every (data, fsdp, tensor) a config's shapes allow on a slice; the suggestions and the
planner (`mmjax.train.planner`) both draw from it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mmjax.train import sharding

Mesh3 = tuple[int, int, int]  # (data, fsdp, tensor)


@dataclasses.dataclass(frozen=True)
class Fix:
    """Settings that would work: `--config.` overrides, and what they change beyond the failing field."""

    overrides: tuple[str, ...]
    note: str = ""

    def __str__(self) -> str:
        return " ".join(f"--config.{o}" for o in self.overrides) + (f" ({self.note})" if self.note else "")


@dataclasses.dataclass(frozen=True)
class Problem:
    """One reason the config's shapes do not fit the slice: the config `field`, what is wrong, what would work."""

    field: str
    message: str
    fixes: tuple[Fix, ...] = ()

    def line(self) -> str:
        tried = "; nearest that work: " + " | ".join(map(str, self.fixes)) if self.fixes else ""
        return f"does not fit the slice: {self.field}: {self.message}{tried}"


@dataclasses.dataclass(frozen=True)
class ModelShapes:
    """What the checks (and the planner's cost model) need from a config, traced once: each parameter's path, shape
    and logical axis names, and the example batch's per-row shapes."""

    params: tuple[tuple[str, tuple[int, ...], tuple[str | None, ...]], ...]
    rows: dict[str, tuple[int, ...]]
    num_params: int


def model_shapes(config: ml_collections.ConfigDict) -> ModelShapes:
    """Parameter shapes with their logical names, from `jax.eval_shape` of the task's init (no memory, no files)."""
    from mmjax.train.tasks import make_task

    task = make_task(config)
    example = task.example_batch(1)
    mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices("cpu")[:1])
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.rules_from_config(config.sharding.rules)):
        boxed = jax.eval_shape(lambda r: task.init(r, jax.tree.map(jnp.asarray, example)),
                               jax.ShapeDtypeStruct((2,), jnp.uint32))["params"]
    params = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))[0]:
        names = tuple(leaf.names) if isinstance(leaf, nn.Partitioned) else ()
        value = leaf.value if isinstance(leaf, nn.Partitioned) else leaf
        params.append(("/".join(str(getattr(k, "key", k)) for k in path), tuple(value.shape), names))
    return ModelShapes(tuple(params), {k: tuple(np.shape(v)[1:]) for k, v in example.items()},
                       sum(math.prod(s) for _, s, _ in params))


def tensor_dims(shapes: ModelShapes, rules: Sequence[tuple[str, Any]]) -> dict[str, int]:
    """The sizes `tensor` splits, by logical name (heads, kv_heads, mlp, vocab): their gcd over the parameters."""
    to_tensor = {name for name, axes in rules if axes == "tensor" or (isinstance(axes, tuple) and "tensor" in axes)}
    dims: dict[str, int] = {}
    for _, shape, names in shapes.params:
        for size, name in zip(shape, names):
            if name in to_tensor:
                dims[name] = math.gcd(dims.get(name, 0), size)
    return dims


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def host_chips(devices: Sequence[jax.Device]) -> int:
    """Chips per host (a `tensor` group must stay on one host)."""
    return len(devices) // len({d.process_index for d in devices})


def lays_out(mesh: Mesh3, devices: Sequence[jax.Device]) -> bool:
    """Whether the trainer can lay `mesh` out on `devices`: the torus layout keeps every `tensor` group on one host
    (`sharding.make_mesh`; which groups do depends on the whole mesh shape, not only on `tensor`)."""
    try:
        sharding.make_mesh(dict(zip(sharding.MESH_AXES, mesh)), devices)
    except ValueError:
        return False
    return True


def valid_meshes(chips: int, *, batch_size: int | None, tensor_sizes: dict[str, int], per_host: int,
                 num_slices: int = 1, devices: Sequence[jax.Device] | None = None) -> list[Mesh3]:
    """Every (data, fsdp, tensor) with product `chips` whose tensor divides every tensor-split dimension and fits on
    a host, whose data axis is a multiple of the slice count, (unless `batch_size` is None) whose batch shards
    divide `batch_size`, and (given the slice's `devices`) that the trainer can lay out on them."""
    meshes = []
    for tensor in _divisors(chips):
        if per_host % tensor or any(size % tensor for size in tensor_sizes.values()):
            continue
        for fsdp in _divisors(chips // tensor):
            data = chips // (tensor * fsdp)
            if data % num_slices == 0 and (batch_size is None or batch_size % (data * fsdp) == 0):
                meshes.append((data, fsdp, tensor))
    if devices is not None:
        meshes = [m for m in meshes if m[2] == 1 or lays_out(m, devices)]
    return meshes


def _distance(a: Mesh3, b: Mesh3) -> float:
    return sum(abs(math.log2(x / y)) for x, y in zip(a, b))


def mesh_fix(mesh: Mesh3) -> Fix:
    return Fix(tuple(f"mesh.{k}={v}" for k, v in zip(sharding.MESH_AXES, mesh)))


def batch_fixes(batch_size: int, grad_accum: int, shards: int) -> list[Fix]:
    """Batch settings that split over `shards`: the same global batch per update (batch_size x grad_accum) when
    some split of it does, else the nearest multiples of `shards` (which change the global batch)."""
    total = batch_size * grad_accum
    keep = [(b, total // b) for b in _divisors(total) if b % shards == 0]
    if keep:
        b, a = min(keep, key=lambda ba: abs(math.log2(ba[0] / batch_size)))
        return [Fix((f"batch_size={b}", f"optim.grad_accum={a}") if a != grad_accum else (f"batch_size={b}",))]
    up = shards * math.ceil(batch_size / shards)
    down = shards * (batch_size // shards)
    return [Fix((f"batch_size={b}",), f"global batch {b * grad_accum} per update, was {total}")
            for b in dict.fromkeys((up, down)) if b > 0]


def check(config: ml_collections.ConfigDict, shapes: ModelShapes, devices: Sequence[jax.Device],
          num_slices: int = 1) -> list[Problem]:
    """Every way `config` cannot be laid out on `devices` (a slice's abstract chips), each with what would work."""
    chips, per_host = len(devices), host_chips(devices)
    rules = sharding.rules_from_config(config.sharding.rules)
    sizes = tensor_dims(shapes, rules)
    batch, accum = int(config.batch_size), int(config.optim.get("grad_accum", 1))
    meshes = valid_meshes(chips, batch_size=None, tensor_sizes=sizes, per_host=per_host, num_slices=num_slices,
                          devices=devices)

    def nearest(current: Mesh3, keep_batch: bool = False) -> list[Fix]:
        """The two meshes nearest `current` (the batch re-split too where a mesh needs it, ones that keep the batch
        first; only those with `keep_batch`)."""
        fixes = []
        pool = [m for m in meshes if not keep_batch or batch % (m[0] * m[1]) == 0]
        for m in sorted(pool, key=lambda m: (batch % (m[0] * m[1]) != 0, _distance(m, current)))[:2]:
            fix = mesh_fix(m)
            if batch % (m[0] * m[1]):
                extra = batch_fixes(batch, accum, m[0] * m[1])[0]
                fix = Fix(fix.overrides + extra.overrides, extra.note)
            fixes.append(fix)
        return fixes
    try:
        mesh = sharding.mesh_shape(dict(config.mesh), chips)
    except ValueError:
        wanted = dict(config.mesh)
        guess = tuple(max(1, int(wanted.get(a, 1))) for a in sharding.MESH_AXES)
        return [Problem("mesh", f"{wanted} does not multiply to the slice's {chips} chips", tuple(nearest(guess)))]
    data, fsdp, tensor = mesh
    problems = []
    bad = {name: size for name, size in sizes.items() if size % tensor}
    if bad:
        what = ", ".join(f"{name} {size}" for name, size in sorted(bad.items()))
        problems.append(Problem("mesh.tensor", f"tensor={tensor} does not divide {what}", tuple(nearest(mesh))))
    elif per_host % tensor or (tensor > 1 and data % num_slices == 0 and not lays_out(mesh, devices)):
        problems.append(Problem("mesh.tensor", f"tensor={tensor} spans several hosts of {per_host} chips in this "
                                "mesh; a tensor group must stay on one host", tuple(nearest(mesh))))
    if data % num_slices:
        problems.append(Problem("mesh.data", f"data={data} is not a multiple of the {num_slices} slices joined "
                                "along it", tuple(nearest(mesh))))
    shards = data * fsdp
    if batch % shards:
        options = batch_fixes(batch, accum, shards) + nearest(mesh, keep_batch=True)
        problems.append(Problem("batch_size", f"{batch} examples per step do not split over the {shards} batch "
                                f"shards (mesh.data {data} x mesh.fsdp {fsdp})", tuple(options)))
    return problems

