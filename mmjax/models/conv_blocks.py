"""Convolutional building blocks of the image tokenizer: ResBlock, AttnBlock, Down/Upsample, Encoder, Decoder.

The structure follows the taming-VQGAN family as used by Show-o's MAGVIT-v2 tokenizer, so its released
weights map one-to-one onto these parameters (see `mmjax/convert/magvitv2.py`); submodule names spell the
reference key path with `_` instead of `.` (`down.1.block.0` -> `down_1_block_0`, `mid.attn_1` ->
`mid_attn_1`).

Layout is NHWC (JAX's natural one). Conv kernels are HWIO with logical axes (None, None, "conv_in",
"conv_out"); norm scales/biases use "norm". Norm statistics and attention softmax are computed in float32
whatever `dtype` is. Dropout is left out: the reference uses 0.0 and a tokenizer is trained without it.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.models.vq_config import VQConfig
from mmjax.nn.layers import constrain, default_kernel_init, ones, partitioned, zeros

Dtype = Any
ACT_AXES = ("act_batch", None, None, "act_embed")


def swish(x: jax.Array) -> jax.Array:
    """x * sigmoid(x) (the reference's "nonlinearity")."""
    return x * jax.nn.sigmoid(x)


def conv(features: int, kernel: int, name: str, *, stride: int = 1, padding: Any = "SAME",
         dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32) -> nn.Conv:
    """A 2-D conv whose kernel (HWIO) and bias carry logical axis names."""
    return nn.Conv(features, (kernel, kernel), strides=stride, padding=padding, dtype=dtype,
                   param_dtype=param_dtype, name=name,
                   kernel_init=partitioned(default_kernel_init, (None, None, "conv_in", "conv_out")),
                   bias_init=partitioned(zeros, ("conv_out",)))


def num_groups(channels: int, max_groups: int) -> int:
    """Groups for GroupNorm: `max_groups` (32) for the usual widths, fewer for tiny test widths.

    gcd(channels, max_groups) equals max_groups whenever channels is a multiple of it (every released
    config), and otherwise is the largest group count <= max_groups that divides both, so tiny models (ch 8,
    12, 16) still work.
    """
    return math.gcd(channels, max_groups)


def group_norm(channels: int, max_groups: int, eps: float, name: str, dtype: Dtype,
               param_dtype: Dtype) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=num_groups(channels, max_groups), epsilon=eps, dtype=dtype,
                        param_dtype=param_dtype, force_float32_reductions=True, name=name,
                        scale_init=partitioned(ones, ("norm",)), bias_init=partitioned(zeros, ("norm",)))


class ResBlock(nn.Module):
    """norm-swish-conv3x3 twice plus a skip; a 1x1 `nin_shortcut` only where the width changes (reference)."""

    features: int
    norm_groups: int = 32
    norm_eps: float = 1e-6
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        in_ch = x.shape[-1]
        h = swish(group_norm(in_ch, self.norm_groups, self.norm_eps, "norm1", **kw)(x))
        h = conv(self.features, 3, "conv1", **kw)(h)
        h = swish(group_norm(self.features, self.norm_groups, self.norm_eps, "norm2", **kw)(h))
        h = conv(self.features, 3, "conv2", **kw)(h)
        if in_ch != self.features:
            x = conv(self.features, 1, "nin_shortcut", **kw)(x)
        return constrain(x + h, ACT_AXES)


class AttnBlock(nn.Module):
    """Single-head self-attention over all h*w positions; q/k/v/proj_out are 1x1 convs (reference shapes)."""

    norm_groups: int = 32
    norm_eps: float = 1e-6
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        b, hh, ww, c = x.shape
        h = group_norm(c, self.norm_groups, self.norm_eps, "norm", **kw)(x)
        q, k, v = (conv(c, 1, n, **kw)(h).reshape(b, hh * ww, c) for n in ("q", "k", "v"))
        logits = jnp.einsum("bqc,bkc->bqk", q, k, preferred_element_type=jnp.float32) * c ** -0.5
        weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
        out = jnp.einsum("bqk,bkc->bqc", weights, v).reshape(b, hh, ww, c)
        return x + conv(c, 1, "proj_out", **kw)(out)


class Downsample(nn.Module):
    """Stride-2 3x3 conv after zero padding (0, 1) on H and W (bottom/right only), as Show-o/taming do."""

    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return conv(x.shape[-1], 3, "conv", stride=2, padding=((0, 1), (0, 1)), dtype=self.dtype,
                    param_dtype=self.param_dtype)(x)


class Upsample(nn.Module):
    """Nearest-neighbour 2x upsampling followed by a 3x3 conv."""

    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
        return conv(x.shape[-1], 3, "conv", dtype=self.dtype, param_dtype=self.param_dtype)(x)


def _res_block(cfg: VQConfig) -> type[ResBlock]:
    return nn.remat(ResBlock) if cfg.remat else ResBlock


class Encoder(nn.Module):
    """conv_in -> levels of ResBlocks (+attn) with Downsample between -> mid -> norm/conv_out -> quant_conv.

    Attention placement follows the reference: level i runs at nominal resolution `cfg.resolution / 2**i`,
    and gets an AttnBlock after every ResBlock when that number is in `attn_resolutions`. The nominal
    resolution only decides placement; any input size divisible by 2**(levels-1) works (Show-o uses the same
    weights at 256 and 512).
    """

    cfg: VQConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.cfg
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        nkw = dict(norm_groups=cfg.norm_groups, norm_eps=cfg.norm_eps, **kw)
        block = _res_block(cfg)
        h = conv(cfg.ch, 3, "conv_in", **kw)(constrain(x, ACT_AXES))
        res = cfg.resolution
        levels = len(cfg.enc_ch_mult)
        for i, (mult, n_blocks) in enumerate(zip(cfg.enc_ch_mult, cfg.enc_num_res_blocks)):
            for j in range(n_blocks):
                h = block(cfg.ch * mult, name=f"down_{i}_block_{j}", **nkw)(h)
                if res in cfg.attn_resolutions:
                    h = AttnBlock(name=f"down_{i}_attn_{j}", **nkw)(h)
            if i != levels - 1:
                h = Downsample(name=f"down_{i}_downsample", **kw)(h)
                res //= 2
        h = _mid(h, cfg, block, nkw)
        h = swish(group_norm(h.shape[-1], cfg.norm_groups, cfg.norm_eps, "norm_out", **kw)(h))
        h = conv(cfg.z_channels, 3, "conv_out", **kw)(h)
        return conv(cfg.z_channels, 1, "quant_conv", **kw)(h)


class Decoder(nn.Module):
    """post_quant_conv -> conv_in -> mid -> levels (deepest first) of ResBlocks with Upsample -> conv_out.

    Levels are named by their index in `dec_ch_mult` (`up_{i}_...`) like the reference, which builds them
    deepest first and stores them shallowest first. The output is float32 and unclipped (losses need the raw
    values).
    """

    cfg: VQConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        cfg = self.cfg
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        nkw = dict(norm_groups=cfg.norm_groups, norm_eps=cfg.norm_eps, **kw)
        block = _res_block(cfg)
        levels = len(cfg.dec_ch_mult)
        z = conv(cfg.z_channels, 1, "post_quant_conv", **kw)(constrain(z, ACT_AXES))
        h = conv(cfg.ch * cfg.dec_ch_mult[-1], 3, "conv_in", **kw)(z)
        h = _mid(h, cfg, block, nkw)
        res = cfg.resolution // 2 ** (levels - 1)
        for i in reversed(range(levels)):
            for j in range(cfg.dec_num_res_blocks[i]):
                h = block(cfg.ch * cfg.dec_ch_mult[i], name=f"up_{i}_block_{j}", **nkw)(h)
                if res in cfg.attn_resolutions:
                    h = AttnBlock(name=f"up_{i}_attn_{j}", **nkw)(h)
            if i != 0:
                h = Upsample(name=f"up_{i}_upsample", **kw)(h)
                res *= 2
        h = swish(group_norm(h.shape[-1], cfg.norm_groups, cfg.norm_eps, "norm_out", **kw)(h))
        return conv(cfg.out_channels, 3, "conv_out", **kw)(h).astype(jnp.float32)


def _mid(h: jax.Array, cfg: VQConfig, block: type[ResBlock], nkw: dict) -> jax.Array:
    """Mid block res-attn-res (res-res when `cfg.mid_attn` is off), built in the caller's compact scope."""
    h = block(h.shape[-1], name="mid_block_1", **nkw)(h)
    if cfg.mid_attn:
        h = AttnBlock(name="mid_attn_1", **nkw)(h)
    return block(h.shape[-1], name="mid_block_2", **nkw)(h)
