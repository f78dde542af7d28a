"""Multi-head / grouped-query self-attention shared by every mmjax model (ViT/CLIP, LLaMA, Phi, Qwen2,
Show-o).

One module covers the variants through fields: grouped-query heads, biases, QK-norm (Show-o), full or partial
rotary embeddings (Phi rotates 32 of 64 dims), the name of the output projection (so converted checkpoints
keep their own names), and a fixed-shape KV cache for generation.

The attention itself always goes through `jax.nn.dot_product_attention`, which takes an arbitrary boolean
mask (True = may attend) broadcastable to (B, heads, T, S). That is what lets Show-o's omni-attention and
prefix-LM masks run in the fused cuDNN kernel on NVIDIA GPUs. Its XLA path computes the logits with float32
accumulation and the softmax in float32 regardless of the input dtype, which is the project's precision rule,
so no casts are added here.

Mask semantics (kept explicit because `dot_product_attention` ANDs `mask` with `is_causal`):
- no cache: `mask` and `is_causal` are both handed to the kernel and therefore ANDed. Pass a full mask with
  `is_causal=False` for omni-attention; for a right-padded LM pass `kv_lengths` with `is_causal=True` (the
  fused causal kernel, no dense bias), or a padding mask (B, 1, 1, S) when the padding is not on the right.
- with a cache: the new keys are written at slots [index, index + T) and queries attend over all S_max
  slots. Slots not yet written are always masked; `is_causal` means slot s <= index + t; a given `mask`
  must have S_max columns and is ANDed with both.
A query row with every key masked has backend-dependent output (XLA: uniform weights, cuDNN: differs); keep
such rows out of losses, or let pads attend to themselves as mmjax.models.generate does.
cuDNN and XLA were checked to agree within bf16 tolerance on an H100 (jax 0.11.2) for omni masks, is_causal,
padding + is_causal, batch-broadcast masks and no mask, forward and backward.

On TPU the `splash` backend (`mmjax.nn.splash`, a Pallas block-sparse flash kernel) needs the mask's structure at
compile time, so it takes a `BlockMask` (static pattern per row type + segment ids: packed LMs, Show-o's row
types) or `is_causal` / no mask with optional `kv_lengths`, never a dense mask computed from ids. `mask` may be a
BlockMask on every backend: the others get its dense equivalent.
"""

from __future__ import annotations

import functools
import logging
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from mmjax.nn.block_mask import BIDIRECTIONAL, CAUSAL, BlockMask
from mmjax.nn.layers import Dense, constrain, norm
from mmjax.nn.posemb import apply_rotary

log = logging.getLogger(__name__)
Dtype = Any
BACKENDS = ("auto", "xla", "cudnn", "splash")


class KVCache(NamedTuple):
    """Fixed-shape key/value cache of one attention layer.

    k, v: (B, S_max, kv_heads, head_dim); index: int32 scalar, the number of slots already written (shared
    by the batch: rows are left-padded to a common length, so every row writes to the same slot).
    A stack over layers has k, v of shape (L, B, S_max, kv_heads, head_dim) and the same scalar index.
    """

    k: jax.Array
    v: jax.Array
    index: jax.Array

    @classmethod
    def zeros(cls, batch: int, max_len: int, num_kv_heads: int, head_dim: int, dtype: Dtype = jnp.float32,
              num_layers: int | None = None) -> KVCache:
        lead = () if num_layers is None else (num_layers,)
        shape = (*lead, batch, max_len, num_kv_heads, head_dim)
        return cls(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype), jnp.zeros((), jnp.int32))


@functools.cache
def _on_nvidia_gpu() -> bool:
    if jax.default_backend() != "gpu":
        return False
    dev = jax.devices()[0]
    version = getattr(dev.client, "platform_version", "") or ""
    return "cuda" in version.lower() or "nvidia" in dev.device_kind.lower()


@functools.cache
def _cudnn_max_head_dim() -> int:
    """cuDNN flash attention takes head_dim <= 256 on Hopper and later, <= 128 before."""
    cc = getattr(jax.devices()[0], "compute_capability", "0")
    try:
        return 256 if float(cc) >= 9.0 else 128
    except ValueError:
        return 128


@functools.cache
def _warn_splash_fallback(reason: str) -> None:
    log.warning("attention backend 'splash' cannot take %s: using XLA attention there", reason)


def select_backend(backend: str, dtype: Dtype, head_dim: int, q_len: int, kv_len: int, *,
                   dense_mask: bool = False) -> str:
    """Resolves 'auto' to 'splash' when compiling for TPU and the mask has a static structure (`dense_mask`
    False: a BlockMask, is_causal, kv_lengths or none), to 'cudnn' where the fused GPU kernel applies, else 'xla'.

    cuDNN needs an NVIDIA GPU, bf16/fp16 inputs and head_dim a multiple of 8 within its limit. Odd sequence
    lengths are padded by `attention_op`, so they do not rule it out. Single-token queries (decode steps) take
    XLA: they are memory bound, and the fused kernel's launch and layout costs outweigh its savings there.
    An explicit 'splash' given a dense mask or a decode step takes XLA too, with a warning (once per reason).
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; known: {BACKENDS}")
    from mmjax.nn import splash

    splash_ok = not dense_mask and splash.splash_supports(q_len, kv_len)
    if backend == "splash" and not splash_ok:
        _warn_splash_fallback("a dense mask" if dense_mask else f"{q_len} queries over {kv_len} keys")
        return "xla"
    if backend != "auto":
        return backend
    if splash.target_platform() == "tpu":
        return "splash" if splash_ok else "xla"
    if not _on_nvidia_gpu() or jnp.dtype(dtype) not in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
        return "xla"
    if head_dim % 8 or head_dim > _cudnn_max_head_dim() or q_len == 1:
        return "xla"
    return "cudnn"


def _pad_to_even(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None,
                 kv_lengths: jax.Array | None) -> tuple[jax.Array, ...]:
    """Pads odd query / key lengths by one position, as cuDNN's training kernels require even lengths.

    The padded key is hidden from every query (by the mask, or by key lengths when there is no mask); the padded
    query row sees the real keys, so it stays finite (its output is dropped by the caller).
    """
    t, s = q.shape[1], k.shape[1]
    dt, ds = t % 2, s % 2
    pad_seq = lambda x, n: jnp.pad(x, ((0, 0), (0, n), (0, 0), (0, 0)))
    q, k, v = pad_seq(q, dt), pad_seq(k, ds), pad_seq(v, ds)
    if mask is not None:
        mask = jnp.broadcast_to(mask, (*mask.shape[:2], t, s))
        mask = jnp.pad(mask, ((0, 0), (0, 0), (0, dt), (0, 0)), constant_values=True)
        mask = jnp.pad(mask, ((0, 0), (0, 0), (0, 0), (0, ds)), constant_values=False)
    elif kv_lengths is None and ds:
        kv_lengths = jnp.full((q.shape[0],), s, jnp.int32)
    return q, k, v, mask, kv_lengths


def attention_op(q: jax.Array, k: jax.Array, v: jax.Array, *, mask: jax.Array | BlockMask | None = None,
                 is_causal: bool = False, kv_lengths: jax.Array | None = None, scale: float | None = None,
                 backend: str = "auto") -> jax.Array:
    """softmax(q k^T * scale + mask) v for q (B, T, H, D), k/v (B, S, K, D) with H % K == 0 (GQA).

    `mask`: boolean, True = attend, broadcastable to (B, 1|H, T, S), or a `BlockMask`. See the module docstring
    for is_causal. `kv_lengths` (B,) int: keys at positions >= length are hidden (right padding). Without a mask
    this keeps cuDNN on its fused causal / padding kernels instead of a dense (B, 1, T, S) bias, which is why
    padded LMs (LLaVA) pass lengths rather than a padding mask; splash turns them into segment ids.
    """
    t = q.shape[1]
    block = mask if isinstance(mask, BlockMask) else None
    if block is not None:
        if kv_lengths is not None:
            raise ValueError("attention_op: give padding as the BlockMask's segment ids, not also kv_lengths")
        if is_causal and not block.all_causal:
            raise ValueError("attention_op: is_causal would cut the non-causal rows of this BlockMask; pass "
                             "is_causal=False (its patterns say what is causal)")
        mask = None
    impl = select_backend(backend, q.dtype, q.shape[-1], t, k.shape[1], dense_mask=mask is not None)
    if impl == "splash":
        from mmjax.nn.splash import splash_attention

        if block is None:
            pattern = CAUSAL if is_causal else BIDIRECTIONAL
            block = (BlockMask.uniform(pattern) if kv_lengths is None
                     else BlockMask.from_lengths(jnp.asarray(kv_lengths, jnp.int32), t, pattern))
        return splash_attention(q, k, v, block, scale=scale)
    if block is not None:
        mask = block.dense(q.shape[0], t, k.shape[1])
    if mask is not None:
        mask = jnp.asarray(mask, bool)
        mask = mask.reshape((1,) * (4 - mask.ndim) + mask.shape)
        if kv_lengths is not None:  # one mechanism at a time: fold the lengths into the mask
            mask = mask & (jnp.arange(k.shape[1])[None, None, None, :] < kv_lengths[:, None, None, None])
            kv_lengths = None
    if kv_lengths is not None:
        kv_lengths = jnp.asarray(kv_lengths, jnp.int32)
    if impl == "cudnn":
        if t % 2 or k.shape[1] % 2:
            q, k, v, mask, kv_lengths = _pad_to_even(q, k, v, mask, kv_lengths)
        if mask is not None:
            # cuDNN turns the mask into a bias that must span the full (T, S); only B and heads may broadcast.
            mask = jnp.broadcast_to(mask, (*mask.shape[:2], q.shape[1], k.shape[1]))
    out = jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=is_causal, scale=scale,
                                       key_value_seq_lengths=kv_lengths, implementation=impl)
    return out[:, :t]


class Attention(nn.Module):
    """Self-attention with GQA, optional QK-norm, full/partial RoPE, KV cache and a selectable kernel.

    Parameters: q_proj (embed, heads, head_dim), k_proj/v_proj (embed, kv_heads, head_dim), `out_name`
    (heads, head_dim, embed), and q_norm/k_norm (head_dim,) when `qk_norm` is set: one norm shared across
    heads, applied after the head split and before RoPE, as in Show-o's Phi (HF `qk_layernorm`).
    `rotary_dim=0` disables RoPE (ViT/CLIP); `rotary_dim=head_dim` is full RoPE (LLaMA, Qwen2).
    """

    num_heads: int
    head_dim: int
    num_kv_heads: int | None = None
    qkv_bias: bool = True
    out_bias: bool = True
    qk_norm: str | None = None
    qk_norm_eps: float = 1e-5
    rotary_dim: int = 0
    rope_theta: float = 10000.0
    scale: float | None = None
    backend: str = "auto"
    out_name: str = "o_proj"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, mask: jax.Array | None = None, is_causal: bool = False,
                 positions: jax.Array | None = None, kv_lengths: jax.Array | None = None,
                 cache: KVCache | None = None) -> jax.Array | tuple[jax.Array, KVCache]:
        """x (B, T, E) -> (B, T, E); with `cache`, returns (y, updated cache).

        `positions` (B, T) int feed RoPE; by default arange(T) (+ cache.index when decoding). `kv_lengths` (B,)
        hides right padding (see `attention_op`).
        """
        kv_heads = self.num_kv_heads or self.num_heads
        if self.num_heads % kv_heads:
            raise ValueError(f"num_heads {self.num_heads} is not a multiple of num_kv_heads {kv_heads}")
        batch, length = x.shape[0], x.shape[1]
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        q = Dense((self.num_heads, self.head_dim), ("embed", "heads", "head_dim"), self.qkv_bias,
                  name="q_proj", **kw)(x)
        k = Dense((kv_heads, self.head_dim), ("embed", "kv_heads", "head_dim"), self.qkv_bias,
                  name="k_proj", **kw)(x)
        v = Dense((kv_heads, self.head_dim), ("embed", "kv_heads", "head_dim"), self.qkv_bias,
                  name="v_proj", **kw)(x)
        if self.qk_norm is not None:
            q = norm(self.qk_norm, self.qk_norm_eps, name="q_norm", **kw)(q).astype(self.dtype)
            k = norm(self.qk_norm, self.qk_norm_eps, name="k_norm", **kw)(k).astype(self.dtype)
        if self.rotary_dim:
            if positions is None:
                start = 0 if cache is None else cache.index
                positions = jnp.broadcast_to(start + jnp.arange(length, dtype=jnp.int32), (batch, length))
            q = apply_rotary(q, positions, self.rotary_dim, self.rope_theta)
            k = apply_rotary(k, positions, self.rotary_dim, self.rope_theta)
        heads_axes = ("act_batch", "act_length", "act_heads", None)
        q = checkpoint_name(constrain(q, heads_axes), "query_proj")
        k = checkpoint_name(constrain(k, heads_axes), "key_proj")
        v = checkpoint_name(constrain(v, heads_axes), "value_proj")

        new_cache = None
        if cache is not None:
            if isinstance(mask, BlockMask):
                raise ValueError("a BlockMask describes whole training rows; with a cache pass a dense key mask")
            if kv_lengths is not None:
                raise ValueError("kv_lengths is for training/scoring; with a cache pass a key mask")
            k, v, mask, new_cache = _update_cache(cache, k, v, mask, is_causal)
            is_causal = False  # folded into the slot mask
        out = attention_op(q, k, v, mask=mask, is_causal=is_causal, kv_lengths=kv_lengths, scale=self.scale,
                           backend=self.backend)
        out = checkpoint_name(constrain(out, heads_axes), "attention_out")
        y = Dense(x.shape[-1], ("heads", "head_dim", "embed"), self.out_bias, axis=(-2, -1),
                  name=self.out_name, **kw)(out)
        y = constrain(y, ("act_batch", "act_length", "act_embed"))
        return y if new_cache is None else (y, new_cache)


def _update_cache(cache: KVCache, k: jax.Array, v: jax.Array, mask: jax.Array | None,
                  is_causal: bool) -> tuple[jax.Array, jax.Array, jax.Array, KVCache]:
    """Writes k, v at slots [index, index+T) and builds the (B|1, 1, T, S_max) slot mask for the queries."""
    length, max_len = k.shape[1], cache.k.shape[1]
    index = jnp.asarray(cache.index, jnp.int32)
    start = (0, index, 0, 0)
    k_all = jax.lax.dynamic_update_slice(cache.k, k.astype(cache.k.dtype), start)
    v_all = jax.lax.dynamic_update_slice(cache.v, v.astype(cache.v.dtype), start)
    slots = jnp.arange(max_len, dtype=jnp.int32)
    query_slots = index + jnp.arange(length, dtype=jnp.int32)
    if is_causal:
        slot_mask = slots[None, :] <= query_slots[:, None]
    else:
        slot_mask = jnp.broadcast_to(slots[None, :] < index + length, (length, max_len))
    slot_mask = slot_mask[None, None]
    if mask is not None:
        mask = jnp.asarray(mask, bool)
        mask = jnp.logical_and(mask.reshape((1,) * (4 - mask.ndim) + mask.shape), slot_mask)
    else:
        mask = slot_mask
    new_cache = KVCache(k_all, v_all, index + length)
    return k_all.astype(k.dtype), v_all.astype(v.dtype), mask, new_cache
