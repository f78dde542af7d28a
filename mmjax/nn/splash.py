"""The `splash` attention backend: JAX's Pallas TPU splash-attention kernel, fed by a `BlockMask`.

Splash is a flash-attention kernel over a static block-sparse mask: tiles that the mask empties are skipped, the
(T, S) logits never exist in HBM, and segment ids add per-token structure (packing, padding) on top. What this
module adds around `jax.experimental.pallas.ops.tpu.splash_attention`:
- layout: q (B, T, H, D), k/v (B, S, K, D) in, the same out; the kernel works per example on (H, T, D), so it is
  vmapped over the batch. GQA maps query head h to key head h // (H / K), as `jax.nn.dot_product_attention` does.
- scaling: the kernel does not scale the logits, so q is multiplied by `scale` (default 1/sqrt(D)) first.
- lengths: the kernel's tiles must divide the sequence; rows are padded to a multiple of the block with a segment
  id (-1) that no real token has, so the padding is invisible and its own rows are never empty.
- row groups: each group of a BlockMask (Show-o's T2I / LM / MMU rows) is one kernel with its own static mask.
- sharding: a Pallas kernel is opaque to XLA's partitioner, so each call runs under `shard_map` over the active
  mesh, batch and heads split as the logical rules split activations (`act_batch`, `act_heads`); an axis that does
  not divide its dimension is replicated instead.
Off TPU (CPU tests) the same kernels run in Pallas interpret mode: slow, but the numerics of the real kernel.
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu import splash_attention as splash
from jax.sharding import PartitionSpec

from mmjax.nn.block_mask import BlockMask, MaskPattern

LANES = 128          # TPU tiles are multiples of the 128-wide vector lanes
DEFAULT_BLOCK = 512  # query / key tile; shorter sequences use one tile of their (lane-rounded) length
PAD_SEGMENT = -1     # segment id of the positions added to reach a whole number of tiles


def target_platform() -> str:
    """The platform being compiled for: the active mesh's devices (compile-only TPU chips included), else the
    default backend."""
    mesh = jax.sharding.get_abstract_mesh()
    device = None if mesh.empty else getattr(mesh, "abstract_device", None)
    return device.platform if device is not None else jax.default_backend()


def block_size_for(length: int, block_size: int | None = None) -> int:
    return block_size or min(DEFAULT_BLOCK, LANES * math.ceil(length / LANES))


@functools.cache  # one kernel (its block-sparsity tables built from a dense (T, T) mask) per layer shape, not per layer
def _kernel(pattern: MaskPattern, length: int, heads: int, block: int, interpret: bool):
    mask = splash.NumpyMask(pattern.dense(length, length))
    sizes = splash.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block, block_q_dkv=block,
                              block_kv_dkv=block, block_kv_dkv_compute=block, block_q_dq=block, block_kv_dq=block)
    return splash.make_splash_mha(splash.MultiHeadMask([mask] * heads), block_sizes=sizes, head_shards=1,
                                  q_seq_shards=1, interpret=interpret)


def _divides(axes, size: int, mesh) -> bool:
    names = (axes,) if isinstance(axes, str) else tuple(axes or ())
    return size % math.prod(mesh.shape[a] for a in names) == 0


def _sharded(fn, q: jax.Array, k: jax.Array, v: jax.Array, seg: jax.Array, unit: int = 1) -> jax.Array:
    """fn over the local shards of (B, H, T, D) q and (B, K, S, D) k/v, split like the attention activations;
    the batch is split only into whole `unit`s of rows (e.g. periods of a BlockMask)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return fn(q, k, v, seg)
    batch_axes, head_axes, kv_axes = nn.logical_to_mesh_axes(("act_batch", "act_heads", "act_kv_heads"))
    batch_axes = batch_axes if _divides(batch_axes, q.shape[0] // unit, mesh) else None
    # Heads are split only when query and key heads split the same way (a shard must hold whole GQA groups).
    if head_axes != kv_axes or not (_divides(head_axes, q.shape[1], mesh) and _divides(kv_axes, k.shape[1], mesh)):
        head_axes = None
    spec = PartitionSpec(batch_axes, head_axes, None, None)
    return jax.shard_map(fn, mesh=mesh, in_specs=(spec, spec, spec, PartitionSpec(batch_axes, None)),
                         out_specs=spec, check_vma=False)(q, k, v, seg)


def _group_rows(x: jax.Array, *, periods: int, period: int, first: int, stop: int) -> jax.Array:
    """Rows first..stop-1 of every period of `x` (rows period-major), as one batch."""
    return x.reshape(periods, period, *x.shape[1:])[:, first:stop].reshape(-1, *x.shape[1:])


def _batch_shards() -> int:
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return 1
    axes = nn.logical_to_mesh_axes(("act_batch",))[0]
    names = (axes,) if isinstance(axes, str) else tuple(axes or ())
    return math.prod(mesh.shape[a] for a in names)


def splash_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: BlockMask, *, scale: float | None = None,
                     block_size: int | None = None, interpret: bool | None = None) -> jax.Array:
    """softmax(q k^T * scale, masked by `mask`) v for q (B, T, H, D), k/v (B, T, K, D) -> (B, T, H, D).

    Self-attention only (queries and keys of one length). `interpret` defaults to "not compiling for TPU".
    When every batch shard holds whole periods of the mask's row groups, each shard groups its own rows (no data
    moves between chips); otherwise each group is cut from the global batch and sharded on its own.
    """
    b, t, _, d = q.shape
    if k.shape[1] != t:
        raise ValueError(f"splash attention is self-attention: {t} queries but {k.shape[1]} keys")
    interpret = target_platform() != "tpu" if interpret is None else interpret
    block = block_size_for(t, block_size)
    padded = block * math.ceil(t / block)
    scale = d ** -0.5 if scale is None else scale
    q = (q.astype(jnp.float32) * scale).astype(q.dtype)
    seg = jnp.zeros((b, t), jnp.int32) if mask.segment_ids is None else jnp.asarray(mask.segment_ids, jnp.int32)
    to_heads_major = lambda x: jnp.pad(jnp.swapaxes(x, 1, 2), ((0, 0), (0, 0), (0, padded - t), (0, 0)))
    q, k, v = to_heads_major(q), to_heads_major(k), to_heads_major(v)
    seg = jnp.pad(seg, ((0, 0), (0, padded - t)), constant_values=PAD_SEGMENT)
    groups, periods = mask.period_groups(b)
    period = b // periods

    def attend(pattern: MaskPattern, q, k, v, seg):
        kernel = _kernel(pattern, padded, q.shape[1], block, interpret)
        return jax.vmap(kernel)(q, k, v, splash.SegmentIds(seg, seg))

    def grouped(run, q, k, v, seg):  # rows: whole periods, each `period` rows of the groups in turn
        n = q.shape[0] // period
        outs = []
        for pattern, first, stop in groups:
            if stop > first:
                take = functools.partial(_group_rows, periods=n, period=period, first=first, stop=stop)
                out = run(functools.partial(attend, pattern), take(q), take(k), take(v), take(seg))
                outs.append(out.reshape(n, stop - first, *out.shape[1:]))
        return jnp.concatenate(outs, axis=1).reshape(q.shape[0], *outs[0].shape[2:])

    if periods % _batch_shards() == 0:
        out = _sharded(functools.partial(grouped, lambda f, *xs: f(*xs)), q, k, v, seg, unit=period)
    else:
        out = grouped(_sharded, q, k, v, seg)
    return jnp.swapaxes(out[:, :, :t], 1, 2)


def splash_supports(q_len: int, kv_len: int) -> bool:
    """Whether a call shape can take the kernel: self-attention over more than one query (decode steps, with their
    KV cache and dense slot masks, stay on XLA)."""
    return q_len == kv_len and q_len > 1

