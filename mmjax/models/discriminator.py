"""Image critics for the tokenizer's losses: a PatchGAN and a StyleGAN-style discriminator, and LPIPS.

Discriminators (trained jointly with the tokenizer, see `mmjax/train/tasks/vq.py`):
  * `PatchDiscriminator`: taming-VQGAN's "NLayerDiscriminator" (pix2pix PatchGAN): 4x4 convs, stride 2 then 1,
    one logit per overlapping patch. BatchNorm is replaced by GroupNorm: batch statistics would need a mutable
    collection and would mix real and fake batches (and device shards) in ways a pure loss cannot express.
  * `StyleGANDiscriminator`: the family Open-MAGVIT2 uses: residual blocks that blur (binomial [1,3,3,1]) and
    halve the resolution, a minibatch-stddev feature, then a small MLP to one logit per image.
Both take NHWC images in [-1, 1] and return float32 logits (B, ...); params carry logical axis names.

`LPIPS` is the perceptual distance of Zhang et al. 2018 on VGG-16: five ReLU stages (relu1_2 ... relu5_3),
channel-unit-normalised, squared differences weighted by non-negative 1x1 "lin" layers, averaged over space
and summed. Its weights are never downloaded: `load_lpips(path)` reads one local safetensors file holding
torchvision's `vgg16().features` keys (`features.{0,2,5,...,28}.weight|bias`) and LPIPS's
`lin{0..4}.model.1.weight`, e.g. made once with torch from the two public files:

    sd = {k: v for k, v in torchvision.models.vgg16(weights="IMAGENET1K_V1").state_dict().items()
          if k.startswith("features.")} | torch.load("lpips/weights/v0.1/vgg.pth")
    safetensors.torch.save_file(sd, "lpips_vgg.safetensors")
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mmjax.models.conv_blocks import conv, num_groups
from mmjax.nn.layers import Dense, ones, partitioned, zeros

Dtype = Any
KINDS = ("patch", "stylegan")


def leaky_relu(x: jax.Array) -> jax.Array:
    return jax.nn.leaky_relu(x, 0.2)


@dataclasses.dataclass(frozen=True)
class DiscriminatorConfig:
    """`kind` patch | stylegan; `ch` base width; `num_layers` strided stages (patch) or residual downsampling
    blocks (stylegan); `max_mult` caps the width at ch * max_mult; `mbstd_group` the minibatch-stddev group."""

    kind: str = "patch"
    ch: int = 64
    num_layers: int = 3
    max_mult: int = 8
    norm_groups: int = 32
    mbstd_group: int = 4

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"discriminator kind {self.kind!r}; known: {KINDS}")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> DiscriminatorConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown discriminator fields {unknown}; known: {sorted(known)}")
        return cls(**values)


def _norm(channels: int, groups: int, name: str) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=num_groups(channels, groups), epsilon=1e-5, name=name,
                        force_float32_reductions=True, scale_init=partitioned(ones, ("norm",)),
                        bias_init=partitioned(zeros, ("norm",)))


class PatchDiscriminator(nn.Module):
    """conv4 s2 -> lrelu -> [conv4 s2 -> GN -> lrelu] x (n-1) -> conv4 s1 -> GN -> lrelu -> conv4 s1 -> 1."""

    config: DiscriminatorConfig
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg, pad = self.config, ((1, 1), (1, 1))
        h = leaky_relu(conv(cfg.ch, 4, "conv_0", stride=2, padding=pad, dtype=self.dtype)(x))
        mult = 1
        for n in range(1, cfg.num_layers + 1):
            mult = min(2 ** n, cfg.max_mult)
            stride = 2 if n < cfg.num_layers else 1
            h = conv(cfg.ch * mult, 4, f"conv_{n}", stride=stride, padding=pad, dtype=self.dtype)(h)
            h = leaky_relu(_norm(cfg.ch * mult, cfg.norm_groups, f"norm_{n}")(h))
        return conv(1, 4, "conv_out", padding=pad, dtype=self.dtype)(h)[..., 0].astype(jnp.float32)


def blur_downsample(x: jax.Array) -> jax.Array:
    """Anti-aliased 2x downsampling: depthwise binomial [1,3,3,1]^2 / 64 filter, stride 2 (StyleGAN's blur)."""
    k1 = np.array([1.0, 3.0, 3.0, 1.0], np.float32)
    k = np.outer(k1, k1) / 64.0
    c = x.shape[-1]
    kernel = jnp.asarray(np.tile(k[:, :, None, None], (1, 1, 1, c)), x.dtype)
    return jax.lax.conv_general_dilated(x, kernel, (2, 2), ((1, 1), (1, 1)), feature_group_count=c,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


class _ResDown(nn.Module):
    features: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = leaky_relu(conv(x.shape[-1], 3, "conv1", dtype=self.dtype)(x))
        h = leaky_relu(conv(self.features, 3, "conv2", dtype=self.dtype)(blur_downsample(h)))
        skip = conv(self.features, 1, "skip", dtype=self.dtype)(blur_downsample(x))
        return (h + skip) * (1.0 / np.sqrt(2.0))


def minibatch_stddev(x: jax.Array, group: int) -> jax.Array:
    """Appends one channel: the stddev of features across groups of `group` images (the batch if smaller)."""
    b, h, w, c = x.shape
    g = min(group, b)
    while b % g:
        g -= 1
    y = x.astype(jnp.float32).reshape(g, b // g, h, w, c)
    std = jnp.sqrt(jnp.var(y, axis=0) + 1e-8).mean(axis=(1, 2, 3))  # (b // g,)
    std = jnp.tile(std, g)[:, None, None, None]
    return jnp.concatenate([x, jnp.broadcast_to(std, (b, h, w, 1)).astype(x.dtype)], axis=-1)


class StyleGANDiscriminator(nn.Module):
    """conv3 -> `num_layers` residual blur-downsampling blocks -> minibatch stddev -> conv3 -> MLP -> 1 logit."""

    config: DiscriminatorConfig
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config
        h = leaky_relu(conv(cfg.ch, 3, "conv_in", dtype=self.dtype)(x))
        for i in range(cfg.num_layers):
            h = _ResDown(cfg.ch * min(2 ** (i + 1), cfg.max_mult), dtype=self.dtype, name=f"block_{i}")(h)
        h = minibatch_stddev(h, cfg.mbstd_group)
        h = leaky_relu(conv(h.shape[-1] - 1, 3, "conv_out", dtype=self.dtype)(h))
        h = h.reshape(h.shape[0], -1)
        width = min(h.shape[-1], cfg.ch * cfg.max_mult)
        h = leaky_relu(Dense(width, ("embed", "mlp"), dtype=self.dtype, name="fc")(h))
        return Dense(1, ("mlp", None), dtype=self.dtype, name="head")(h)[:, 0].astype(jnp.float32)


def make_discriminator(config: DiscriminatorConfig | Mapping[str, Any]) -> nn.Module:
    cfg = config if isinstance(config, DiscriminatorConfig) else DiscriminatorConfig.from_dict(dict(config))
    return PatchDiscriminator(cfg) if cfg.kind == "patch" else StyleGANDiscriminator(cfg)


# ------------------------------------------------------------------------------------------------- LPIPS
VGG16_CONVS = ((0, 64), (2, 64), (5, 128), (7, 128), (10, 256), (12, 256), (14, 256), (17, 512), (19, 512),
               (21, 512), (24, 512), (26, 512), (28, 512))  # (torchvision features index, out channels)
LPIPS_TAPS = (2, 7, 14, 21, 28)  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3; a 2x2 max-pool precedes 5, 10, ...
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)


class LPIPS(nn.Module):
    """LPIPS(x, y) per image (B,), inputs NHWC in [-1, 1]. Params: `features_{i}` convs, `lin{k}` (C,) weights."""

    @nn.compact
    def __call__(self, x: jax.Array, y: jax.Array) -> jax.Array:
        shift, scale = jnp.asarray(LPIPS_SHIFT), jnp.asarray(LPIPS_SCALE)
        h = (jnp.concatenate([x, y]).astype(jnp.float32) - shift) / scale
        n, total, tap = x.shape[0], 0.0, 0
        for idx, ch in VGG16_CONVS:
            if idx in (5, 10, 17, 24):
                h = nn.max_pool(h, (2, 2), (2, 2))
            h = jax.nn.relu(nn.Conv(ch, (3, 3), padding="SAME", name=f"features_{idx}")(h))
            if idx in LPIPS_TAPS:
                f = h * jax.lax.rsqrt(jnp.sum(h * h, axis=-1, keepdims=True) + 1e-20)
                w = self.param(f"lin{tap}", nn.initializers.ones_init(), (ch,), jnp.float32)
                total = total + jnp.mean(jnp.square(f[:n] - f[n:]) @ w, axis=(1, 2))
                tap += 1
        return total


def lpips_params_from_state_dict(state: Mapping[str, np.ndarray], source: str = "LPIPS weights") -> dict:
    """torchvision/LPIPS key names (see the module docstring) -> `LPIPS` params; strict key accounting."""
    from mmjax.convert.safetensors_io import KeyConsumer

    consumer = KeyConsumer({k: np.asarray(v) for k, v in state.items()}, source,
                           ignore=lambda k: not (k.startswith("features.") or k.startswith("lin")))
    params: dict[str, Any] = {}
    in_ch = 3
    for idx, ch in VGG16_CONVS:
        w = consumer.take(f"features.{idx}.weight", (ch, in_ch, 3, 3))
        b = consumer.take(f"features.{idx}.bias", (ch,))
        if w is not None and b is not None:
            params[f"features_{idx}"] = {"kernel": w.transpose(2, 3, 1, 0).astype(np.float32),
                                         "bias": b.astype(np.float32)}
        in_ch = ch
    for k, (_, ch) in enumerate(c for c in VGG16_CONVS if c[0] in LPIPS_TAPS):
        w = consumer.take(f"lin{k}.model.1.weight", (1, ch, 1, 1))
        if w is not None:
            params[f"lin{k}"] = w.reshape(ch).astype(np.float32)
    consumer.finish()
    return params


def load_lpips(path: str) -> dict:
    """Reads a local safetensors file of VGG-16 features + LPIPS lin weights (never downloads)."""
    from mmjax.convert.safetensors_io import load_safetensors

    return lpips_params_from_state_dict(load_safetensors(path), source=str(path))
