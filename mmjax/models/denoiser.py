"""A small bidirectional transformer that predicts clean tokens x0 from a noised token grid (x_t, t).

This is the x0-parameterised network that `mmjax.diffusion.d3pm` and `mmjax.diffusion.maskgit` both sample from:
the same weights serve D3PM's ancestral sampler and MaskGIT's confidence-ordered decoder, which is the point of
the digits demo (`configs/d3pm/digits.py`).

Inputs are token ids in ``[0, num_classes]``: ``num_classes`` data levels plus one extra id, the absorbing
[MASK] state (``mask_id = num_classes``), so the embedding table has ``num_classes + 1`` rows whether or not a
run uses the absorbing process. The output is ``num_classes`` logits per position: the network never predicts
the mask, and MaskGIT decoding needs ``mask_id`` outside the logit range.

Conditioning: the timestep t goes through a sinusoidal embedding and an MLP and is either added to every token
(``time_mode="add"``) or prepended as one extra token (``"token"``); an optional class label (``num_labels >
0``) is embedded the same way, with id ``num_labels`` meaning "no label" (trained by label dropout, so one
network samples both conditionally and unconditionally, and MaskGIT's classifier-free guidance has its
unconditional branch).

Param names: token_embedding, conv_stem_<i>, pos_embedding, time_mlp/{fc1,fc2}, label_embedding,
block_<i>/{ln1,attn,ln2,mlp}, final_norm, head.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.models.vit import EncoderBlock
from mmjax.nn.layers import Dense, Mlp, constrain, norm, partitioned
from mmjax.nn.posemb import get_posemb, sincos2d

Dtype = Any
TIME_MODES = ("add", "token")


def timestep_embedding(t: jax.Array, features: int, max_period: float = 10_000.0) -> jax.Array:
    """Sinusoidal embedding (B,) -> (B, features) in float32: cos of half the dims, sin of the other half.

    Frequencies span 1 .. 1/max_period as in DDPM/Transformer position codes, so integer diffusion steps
    1..T (T ~ 10..1000) get distinct, smoothly varying codes.
    """
    if features % 2:
        raise ValueError(f"timestep embedding needs an even width, got {features}")
    half = features // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    angles = jnp.asarray(t, jnp.float32)[:, None] * freqs[None, :]
    return jnp.concatenate([jnp.cos(angles), jnp.sin(angles)], axis=-1)


class Denoiser(nn.Module):
    """Token grid (B, *grid) + timesteps (B,) [+ labels (B,)] -> x0 logits (B, *grid, num_classes), float32."""

    num_classes: int                  # data levels K; id K is the [MASK] token
    grid: tuple[int, ...] = (8, 8)
    width: int = 128
    depth: int = 4
    num_heads: int = 4
    mlp_dim: int = 512
    num_labels: int = 0               # > 0: class-conditional; label id `num_labels` = unconditional
    time_mode: str = "add"            # add | token
    conv_stem: int = 3                # kernel of the conv stem over the embedded grid (0: no stem)
    conv_stem_depth: int = 2          # conv layers in the stem
    posemb: str = "learned"           # learned (sin-cos initialised) | sincos2d (fixed)
    ln_eps: float = 1e-6
    dropout: float = 0.0
    backend: str = "auto"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @property
    def mask_id(self) -> int:
        return self.num_classes

    def _embed_table(self, name: str, rows: int) -> jax.Array:
        """Unit-variance rows (like nn.Embed), on the scale of the sin-cos position code they are added to."""
        init = partitioned(nn.initializers.normal(stddev=1.0), ("vocab", "embed"))
        return self.param(name, init, (rows, self.width), self.param_dtype)

    def _conv_stem(self, x: jax.Array) -> jax.Array:
        """`conv_stem_depth` k x k convs (GELU between) over the token grid: tokens start out knowing their
        neighbourhood (a (2k-1)^2 window for two layers).

        Why: attention has to *learn* which positions are neighbours; until it has, the denoiser can only
        predict per-pixel marginals. On 8x8 digits the attention-only model sat on that plateau for 1,500+
        steps; one 3x3 conv removed the plateau, and a second one lowered the test NELBO at 400 steps from
        0.69 to 0.65 nats/token (measured, docs/d3pm.md).
        """
        k = self.conv_stem
        for i in range(self.conv_stem_depth):
            if i:
                x = nn.gelu(x)
            x = nn.Conv(self.width, (k, k), padding="SAME", name=f"conv_stem_{i}", dtype=self.dtype,
                        param_dtype=self.param_dtype,
                        kernel_init=partitioned(nn.initializers.lecun_normal(), (None, None, "conv_in", "embed")),
                        bias_init=partitioned(nn.initializers.zeros_init(), ("embed",)))(x)
        return x

    def _position_embedding(self, grid: tuple[int, ...]) -> jax.Array:
        """(1, N, width). "learned" is a free table INITIALISED at the 2-D sin-cos layout, not at small noise.

        Why: with a small random table (ViT's normal(1/sqrt(width))) the attention has no usable notion of
        "neighbouring pixel" at the start, and on digits the model sat on the per-pixel-marginal plateau (masked
        CE ~0.86 nats) for 1,500+ steps; started from sin-cos it leaves that plateau within a few hundred.
        """
        if self.posemb != "learned" or len(grid) != 2:
            return get_posemb(self, self.posemb, grid if len(grid) == 2 else math.prod(grid), self.width,
                              "pos_embedding", dtype=self.dtype, param_dtype=self.param_dtype)
        init = lambda key, shape, dtype: sincos2d(*grid, self.width, dtype=dtype)
        return self.param("pos_embedding", partitioned(init, (None, None, "embed")),
                          (1, math.prod(grid), self.width), self.param_dtype)

    @nn.compact
    def __call__(self, tokens: jax.Array, t: jax.Array, labels: jax.Array | None = None, *,
                 train: bool = False) -> jax.Array:
        if self.time_mode not in TIME_MODES:
            raise ValueError(f"unknown time_mode {self.time_mode!r}; known: {TIME_MODES}")
        grid = tuple(self.grid)
        if tuple(tokens.shape[1:]) != grid:
            raise ValueError(f"tokens of shape {tokens.shape} do not match the denoiser grid {grid}")
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        batch, n = tokens.shape[0], math.prod(grid)
        table = self._embed_table("token_embedding", self.num_classes + 1)
        x = jnp.take(table, tokens.reshape(batch, n), axis=0).astype(self.dtype)
        if self.conv_stem and self.conv_stem_depth and len(grid) == 2:
            x = x + self._conv_stem(x.reshape(batch, *grid, self.width)).reshape(batch, n, self.width)
        x = x + self._position_embedding(grid).astype(self.dtype)

        # (B, 1, width): the MLP's activation constraints expect a length axis.
        cond = timestep_embedding(t, self.width).astype(self.dtype)[:, None, :]
        cond = Mlp(4 * self.width, act="silu", out_features=self.width, name="time_mlp", **kw)(cond)
        if self.num_labels:
            if labels is None:
                labels = jnp.full((batch,), self.num_labels, jnp.int32)
            label_table = self._embed_table("label_embedding", self.num_labels + 1)
            cond = cond + jnp.take(label_table, labels, axis=0)[:, None, :].astype(self.dtype)
        x = x + cond if self.time_mode == "add" else jnp.concatenate([cond, x], axis=1)
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        x = constrain(x, ("act_batch", "act_length", "act_embed"))

        for i in range(self.depth):
            # The ViT's pre-LN block: bidirectional attention, every token sees the whole grid.
            x, _ = EncoderBlock(self.num_heads, self.mlp_dim, "gelu", self.ln_eps, self.dropout, self.backend,
                                name=f"block_{i}", **kw)(x, train)
        x = norm("layernorm", self.ln_eps, name="final_norm", **kw)(x)
        if self.time_mode == "token":
            x = x[:, 1:]
        # Zero-initialised head: the untrained model predicts uniform x0, so the first loss is log K per token.
        logits = Dense(self.num_classes, ("embed", "vocab"), kernel_init=nn.initializers.zeros_init(),
                       name="head", **kw)(x)
        return logits.astype(jnp.float32).reshape(batch, *grid, self.num_classes)


def denoiser_from_config(model_cfg: dict[str, Any], **extra: Any) -> Denoiser:
    """Builds a Denoiser from `config.model` (+ task-derived fields), refusing fields the module lacks."""
    names = {f.name for f in dataclasses.fields(Denoiser)} - {"parent", "name"}
    cfg = dict(model_cfg) | extra
    unknown = sorted(set(cfg) - names)
    if unknown:
        raise ValueError(f"unknown config.model field(s) {unknown} for Denoiser; allowed: {sorted(names)}")
    cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()}
    for key in ("dtype", "param_dtype"):
        if isinstance(cfg.get(key), str):
            cfg[key] = jnp.dtype(cfg[key])
    return Denoiser(**cfg)
