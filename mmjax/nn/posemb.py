"""Position embeddings: learned, fixed 2-D sin-cos (ViT) and rotary (RoPE, full or partial).

Rotary uses the "rotate-half" (GPT-NeoX / Hugging Face) convention: the rotated dims are split into two halves
(x1, x2) and rotated as (x1 cos - x2 sin, x2 cos + x1 sin). Hugging Face LLaMA/Phi/Qwen2 checkpoints store
their q/k projections for exactly this layout, so released weights load without any permutation of q/k rows.
Frequencies and angles are computed in float32 whatever the compute dtype, so long positions stay exact.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mmjax.nn.layers import partitioned

Dtype = Any


def rotary_inv_freq(rotary_dim: int, theta: float = 10000.0) -> jax.Array:
    """Inverse frequencies theta^(-2i/rotary_dim), i < rotary_dim/2, in float32 (the HF formula)."""
    if rotary_dim % 2:
        raise ValueError(f"rotary_dim must be even, got {rotary_dim}")
    exponents = jnp.arange(0, rotary_dim, 2, dtype=jnp.float32) / rotary_dim
    return 1.0 / (theta ** exponents)


def rotary_sin_cos(positions: jax.Array, rotary_dim: int,
                   theta: float = 10000.0) -> tuple[jax.Array, jax.Array]:
    """(sin, cos) of shape positions.shape + (rotary_dim,), duplicated over the two halves, in float32."""
    angles = positions.astype(jnp.float32)[..., None] * rotary_inv_freq(rotary_dim, theta)
    angles = jnp.concatenate([angles, angles], axis=-1)
    return jnp.sin(angles), jnp.cos(angles)


def apply_rotary(x: jax.Array, positions: jax.Array, rotary_dim: int | None = None,
                 theta: float = 10000.0) -> jax.Array:
    """Rotates the first `rotary_dim` features of x (B, T, H, D) by positions (B, T); the rest pass unchanged.

    `rotary_dim=None` rotates all D dims. Phi-1.5 rotates 32 of 64 (partial_rotary_factor 0.5). The rotation
    is evaluated in float32 and cast back to x.dtype.
    """
    head_dim = x.shape[-1]
    rotary_dim = head_dim if rotary_dim is None else rotary_dim
    if not 0 < rotary_dim <= head_dim:
        raise ValueError(f"rotary_dim {rotary_dim} must be in (0, {head_dim}]")
    sin, cos = rotary_sin_cos(positions, rotary_dim, theta)
    sin, cos = sin[..., None, :], cos[..., None, :]  # broadcast over heads
    x_rot = x[..., :rotary_dim].astype(jnp.float32)
    x1, x2 = jnp.split(x_rot, 2, axis=-1)
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    out = (x_rot * cos + rotated * sin).astype(x.dtype)
    if rotary_dim == head_dim:
        return out
    return jnp.concatenate([out, x[..., rotary_dim:]], axis=-1)


def sincos2d(height: int, width: int, features: int, temperature: float = 10000.0,
             dtype: Dtype = jnp.float32) -> jax.Array:
    """Fixed 2-D sin-cos position embedding (1, height*width, features) for a row-major patch grid.

    A quarter of the features each hold sin(x), cos(x), sin(y), cos(y) with frequencies
    temperature^(-i/(features/4 - 1)) (the layout big_vision's ViT uses, "MoCo v3" style).
    """
    if features % 4:
        raise ValueError(f"sincos2d needs features divisible by 4, got {features}")
    quarter = features // 4
    y, x = np.mgrid[:height, :width]
    omega = np.arange(quarter, dtype=np.float64) / max(quarter - 1, 1)
    omega = 1.0 / (temperature ** omega)
    y = y.reshape(-1)[:, None] * omega[None, :]
    x = x.reshape(-1)[:, None] * omega[None, :]
    pe = np.concatenate([np.sin(x), np.cos(x), np.sin(y), np.cos(y)], axis=1)
    return jnp.asarray(pe[None], dtype)


def get_posemb(module: nn.Module, kind: str, seqshape: int | Sequence[int], features: int,
               name: str = "pos_embedding", dtype: Dtype = jnp.float32,
               param_dtype: Dtype = jnp.float32) -> jax.Array:
    """Position embedding (1, prod(seqshape), features) of `kind` 'learned' | 'sincos2d' | 'none'.

    Called from inside a compact module so that a learned table is a parameter of that module (named `name`,
    axes (None, None, 'embed')), the way a ViT keeps `pos_embedding` next to its patch embedding.
    'learned' uses normal(1/sqrt(features)) init; 'sincos2d' needs a (height, width) seqshape.
    """
    seqshape = (seqshape,) if isinstance(seqshape, int) else tuple(seqshape)
    n = int(np.prod(seqshape))
    if kind == "learned":
        init = partitioned(nn.initializers.normal(stddev=features ** -0.5), (None, None, "embed"))
        return jnp.asarray(module.param(name, init, (1, n, features), param_dtype), dtype)
    if kind == "sincos2d":
        if len(seqshape) != 2:
            raise ValueError(f"sincos2d needs a (height, width) seqshape, got {seqshape}")
        return sincos2d(*seqshape, features, dtype=dtype)
    if kind == "none":
        return jnp.zeros((1, n, features), dtype)
    raise ValueError(f"unknown position embedding {kind!r}; known: learned, sincos2d, none")
