"""Vision Transformer (ViT) and the CLIP vision tower, one Linen module configured by a variant string.

`ViT(variant="B/16")`, `"L/14"`, `"Mu/2"` (a micro width for CPU), ... set width/depth/mlp/heads and the patch size;
fields choose the pooling (`tok` class token, `gap` mean, `map` attention pooling, `none`), learned or sincos2d
position embeddings, GELU or QuickGELU, and CLIP's quirks (bias-free patch conv, class token inside the position
embedding, `ln_pre` before the encoder, `ln_post` on the pooled token only). With `clip_vit_l14()` the module is
exactly HF's CLIPVisionModel, so released CLIP weights load into it (mmjax/convert/hf_clip.py).

Param names are stable for checkpoints: embedding, cls, pos_embedding, ln_pre, encoder/{block_<i> | layers},
encoder_norm, ln_post, MAPHead_0, head.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.nn.attention import Attention
from mmjax.nn.layers import Dense, Mlp, constrain, norm, partitioned
from mmjax.nn.posemb import get_posemb
from mmjax.nn.scan import maybe_remat, scanned

Dtype = Any

# name -> (width, depth, mlp_dim, heads), as in "How to train your ViT" / big_vision, plus a micro size for CPUs.
VARIANTS: dict[str, tuple[int, int, int, int]] = {
    "Mu": (64, 4, 256, 4),
    "Ti": (192, 12, 768, 3),
    "S": (384, 12, 1536, 6),
    "M": (512, 12, 2048, 8),
    "B": (768, 12, 3072, 12),
    "L": (1024, 24, 4096, 16),
    "So400m": (1152, 27, 4304, 16),
    "H": (1280, 32, 5120, 16),
    "g": (1408, 40, 6144, 16),
}


def decode_variant(variant: str) -> dict[str, Any]:
    """'B/16' -> dict(width=768, depth=12, mlp_dim=3072, num_heads=12, patch_size=(16, 16))."""
    name, _, patch = variant.partition("/")
    if name not in VARIANTS or not patch.isdigit():
        raise ValueError(f"unknown ViT variant {variant!r}; use <size>/<patch> with size in {sorted(VARIANTS)}")
    width, depth, mlp_dim, heads = VARIANTS[name]
    return dict(width=width, depth=depth, mlp_dim=mlp_dim, num_heads=heads, patch_size=(int(patch), int(patch)))


class EncoderBlock(nn.Module):
    """Pre-LN block: x + attn(ln1(x)); x + mlp(ln2(x))."""

    num_heads: int
    mlp_dim: int
    act: str = "gelu"
    ln_eps: float = 1e-6
    dropout: float = 0.0
    backend: str = "auto"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False,
                 kv_lengths: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        """`kv_lengths` (B,) hides the padding tokens the encoder appended (see `ViT.token_multiple`)."""
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        width = x.shape[-1]
        y = norm("layernorm", self.ln_eps, name="ln1", **kw)(x)
        y = Attention(num_heads=self.num_heads, head_dim=width // self.num_heads, out_name="out_proj",
                      backend=self.backend, name="attn", **kw)(y, kv_lengths=kv_lengths)
        x = x + nn.Dropout(self.dropout, deterministic=not train)(y)
        y = norm("layernorm", self.ln_eps, name="ln2", **kw)(x)
        y = Mlp(self.mlp_dim, act=self.act, name="mlp", **kw)(y)
        x = x + nn.Dropout(self.dropout, deterministic=not train)(y)
        x = constrain(x, ("act_batch", "act_length", "act_embed"))
        return x, x


class Encoder(nn.Module):
    depth: int
    block: dict
    scan: bool = False
    remat_policy: str = "none"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False,
                 kv_lengths: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        """Returns the output and every layer's output stacked (depth, B, N, D) for feature selection."""
        block_cls = maybe_remat(EncoderBlock, self.remat_policy, static_argnums=(2,), prevent_cse=not self.scan)
        if self.scan:
            x, hidden = scanned(block_cls, self.depth, in_axes=(nn.broadcast, nn.broadcast))(
                **self.block, name="layers")(x, train, kv_lengths)
            return x, hidden
        hidden = []
        for i in range(self.depth):
            x, _ = block_cls(**self.block, name=f"block_{i}")(x, train, kv_lengths)
            hidden.append(x)
        return x, jnp.stack(hidden)


class MAPHead(nn.Module):
    """Multihead attention pooling: a learned probe attends over the tokens (big_vision's `map`)."""

    num_heads: int
    mlp_dim: int
    ln_eps: float = 1e-6
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, _, d = x.shape
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        probe = self.param("probe", partitioned(nn.initializers.xavier_uniform(), (None, None, "embed")),
                           (1, 1, d), self.param_dtype)
        q = jnp.broadcast_to(probe, (b, 1, d)).astype(self.dtype)
        y = nn.MultiHeadDotProductAttention(num_heads=self.num_heads, name="attn", **kw)(q, x)
        y = y + Mlp(self.mlp_dim, name="mlp", **kw)(norm("layernorm", self.ln_eps, name="ln", **kw)(y))
        return y[:, 0]


class ViT(nn.Module):
    """Images (B, H, W, C) -> (logits or pooled features, extras with tokens and per-layer hidden states)."""

    variant: str | None = None
    num_classes: int = 0              # 0: no head, return the pooled representation
    width: int = 768
    depth: int = 12
    mlp_dim: int = 3072
    num_heads: int = 12
    patch_size: tuple[int, int] = (16, 16)
    posemb: str = "learned"           # learned | sincos2d
    pool_type: str = "tok"            # tok | gap | map | none
    act: str = "gelu"                 # gelu | quick_gelu (CLIP)
    patch_bias: bool = True           # CLIP's patch conv has no bias
    cls_in_posemb: bool = False       # CLIP: the class token has its own position embedding
    ln_pre: bool = False              # CLIP's pre_layrnorm
    final_norm: str = "all"           # all: LayerNorm every token (big_vision) | pooled: only the pooled one (CLIP)
    ln_eps: float = 1e-6
    dropout: float = 0.0
    head_zero_init: bool = True
    scan: bool = False
    remat_policy: str = "none"
    backend: str = "auto"
    token_multiple: int = 1           # pad the encoder's tokens to a multiple of this (keys hidden); 1: no padding
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def dims(self) -> dict[str, Any]:
        base = dict(width=self.width, depth=self.depth, mlp_dim=self.mlp_dim, num_heads=self.num_heads,
                    patch_size=tuple(self.patch_size))
        return base | decode_variant(self.variant) if self.variant else base

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool = False) -> tuple[jax.Array, dict[str, jax.Array]]:
        d = self.dims()
        width, kw = d["width"], dict(dtype=self.dtype, param_dtype=self.param_dtype)
        images = images.astype(self.dtype)
        x = nn.Conv(width, d["patch_size"], strides=d["patch_size"], padding="VALID", use_bias=self.patch_bias,
                    kernel_init=partitioned(nn.initializers.lecun_normal(), (None, None, "conv_in", "embed")),
                    bias_init=partitioned(nn.initializers.zeros_init(), ("embed",)), name="embedding", **kw)(images)
        b, h, w, _ = x.shape
        x = jnp.reshape(x, (b, h * w, width))
        use_cls = self.pool_type == "tok"
        if use_cls:
            cls = self.param("cls", partitioned(nn.initializers.normal(0.02), (None, None, "embed")),
                             (1, 1, width), self.param_dtype)
            cls = jnp.broadcast_to(cls, (b, 1, width)).astype(x.dtype)
        if use_cls and self.cls_in_posemb:
            x = jnp.concatenate([cls, x], axis=1)
            x = x + get_posemb(self, self.posemb, h * w + 1, width, "pos_embedding").astype(x.dtype)
        else:
            x = x + get_posemb(self, self.posemb, (h, w), width, "pos_embedding").astype(x.dtype)
            if use_cls:
                x = jnp.concatenate([cls, x], axis=1)
        if self.ln_pre:
            x = norm("layernorm", self.ln_eps, name="ln_pre", **kw)(x)
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        x = constrain(x, ("act_batch", "act_length", "act_embed"))
        block = dict(num_heads=d["num_heads"], mlp_dim=d["mlp_dim"], act=self.act, ln_eps=self.ln_eps,
                     dropout=self.dropout, backend=self.backend, **kw)
        embedded = x
        tokens = x.shape[1]
        padded = -(-tokens // self.token_multiple) * self.token_multiple
        kv_lengths = None
        if padded != tokens:
            # One pad for the whole stack instead of one per layer: CLIP-L/336's 577 tokens (odd, which cuDNN's
            # training kernels refuse) become 584, every block runs the fused kernel with the real length as its
            # key length, and the padded rows are cut off below. Real tokens never see the padding.
            x = jnp.pad(x, ((0, 0), (0, padded - tokens), (0, 0)))
            kv_lengths = jnp.full((b,), tokens, jnp.int32)
        x, hidden = Encoder(d["depth"], block, self.scan, self.remat_policy, name="encoder")(x, train, kv_lengths)
        x, hidden = x[:, :tokens], hidden[:, :, :tokens]
        # hidden_states[0] is the encoder input, [i] the output of block i (HF's numbering).
        extras = {"hidden_states": jnp.concatenate([embedded[None], hidden]), "encoded": x}
        if self.final_norm == "all":
            x = norm("layernorm", self.ln_eps, name="encoder_norm", **kw)(x)
        if self.pool_type == "tok":
            pooled = x[:, 0]
        elif self.pool_type == "gap":
            pooled = jnp.mean(x, axis=1)
        elif self.pool_type == "map":
            pooled = MAPHead(d["num_heads"], d["mlp_dim"], self.ln_eps, name="MAPHead_0", **kw)(x)
        elif self.pool_type == "none":
            pooled = x
        else:
            raise ValueError(f"unknown pool_type {self.pool_type!r} (tok | gap | map | none)")
        if self.final_norm == "pooled":
            pooled = norm("layernorm", self.ln_eps, name="ln_post", **kw)(pooled)
        extras["pre_logits"] = pooled
        if not self.num_classes:
            return pooled, extras
        head_init = nn.initializers.zeros_init() if self.head_zero_init else nn.initializers.lecun_normal()
        logits = Dense(self.num_classes, ("embed", "vocab"), kernel_init=head_init, name="head", **kw)(pooled)
        return logits.astype(jnp.float32), extras


def clip_vit_l14(image_size: int = 224, **overrides: Any) -> ViT:
    """The CLIP ViT-L/14 vision tower (224px: 256 patches; 336px: 576), as in LLaVA and Show-o-with-CLIP."""
    del image_size  # the position table size follows the input; kept for readability at call sites
    fields = dict(variant="L/14", act="quick_gelu", patch_bias=False, cls_in_posemb=True, ln_pre=True,
                  final_norm="pooled", ln_eps=1e-5, pool_type="tok")
    return ViT(**(fields | overrides))


def vit_from_config(model_cfg: dict[str, Any], **extra: Any) -> ViT:
    """Builds a ViT from `config.model`, refusing fields the module does not have."""
    names = {f.name for f in dataclasses.fields(ViT)} - {"parent", "name"}
    unknown = sorted(set(model_cfg) - names)
    if unknown:
        raise ValueError(f"unknown config.model field(s) {unknown} for ViT; allowed: {sorted(names)}")
    cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in model_cfg.items()}
    for key in ("dtype", "param_dtype"):
        if isinstance(cfg.get(key), str):
            cfg[key] = jnp.dtype(cfg[key])
    return ViT(**(cfg | extra))
