"""Image tokenizer: a conv autoencoder with a lookup-free (LFQ, MAGVIT-v2) or EMA-VQ quantizer.

`VQModel` turns NHWC images in [-1, 1] into a grid of code ids (factor 2**(levels-1) smaller) and back:

    model = VQModel(showo_magvitv2())
    variables = model.init(rng, images)                        # {"params": ...} (+ {"vq_stats": ...} for VQ)
    ids = encode_to_ids(model, variables, images)             # (B, H/16, W/16) int32, jit-compiled
    pixels = decode_ids(model, variables, ids)                 # (B, H, W, 3) in [-1, 1]
    recon, aux = model.apply(variables, images)                # training: aux["loss"] is the quantizer term
    (recon, aux), stats = model.apply(variables, images, mutable=["vq_stats"])   # EMA-VQ training step

A tokenizer loss_fn adds reconstruction (L1/L2), perceptual and adversarial terms to `aux["loss"]`; the
adversarial term's adaptive weight uses the last decoder layer, `params["decoder"]["conv_out"]["kernel"]`.
Released Show-o weights load through `mmjax.convert.magvitv2`.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.models.conv_blocks import Decoder, Encoder
from mmjax.models.quantizers import LFQ, VectorQuantizerEMA

# The config and its presets live in vq_config.py (the conv blocks read them too); re-exported for the model's users.
from mmjax.models.vq_config import QUANTIZERS, VQConfig, showo_magvitv2, tiny  # noqa: F401  (re-exported)

Dtype = Any


class VQModel(nn.Module):
    """Encoder -> quantizer -> decoder. Methods are usable with `model.apply(variables, x, method=...)`."""

    config: VQConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def setup(self):
        cfg = self.config
        self.encoder = Encoder(cfg, dtype=self.dtype, param_dtype=self.param_dtype)
        self.decoder = Decoder(cfg, dtype=self.dtype, param_dtype=self.param_dtype)
        if cfg.quantizer == "lfq":
            self.quantize = LFQ(cfg.z_channels, msb_first=cfg.msb_first, temperature=cfg.entropy_temperature,
                                commit_beta=cfg.commit_beta, entropy_weight=cfg.entropy_weight,
                                entropy_group_bits=cfg.entropy_group_bits,
                                entropy_chunk_codes=cfg.entropy_chunk_codes)
        else:
            self.quantize = VectorQuantizerEMA(cfg.codebook_size, cfg.z_channels, decay=cfg.ema_decay,
                                               eps=cfg.ema_eps, commit_beta=cfg.commit_beta,
                                               dead_code_threshold=cfg.dead_code_threshold)

    def _check_images(self, images: jax.Array) -> None:
        cfg, f = self.config, self.config.downsample_factor
        bad_size = images.ndim != 4 or images.shape[1] % f or images.shape[2] % f
        if bad_size or images.shape[-1] != cfg.in_channels:
            raise ValueError(f"VQModel expects NHWC images (B, H, W, {cfg.in_channels}) with H and W "
                             f"multiples of {f}; got shape {images.shape}")

    def encode(self, images: jax.Array) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
        """images (B,H,W,C) in [-1,1] -> (z_q (B,h,w,z) float32, straight-through; ids (B,h,w); aux)."""
        self._check_images(images)
        return self.quantize(self.encoder(images))

    def decode(self, z_q: jax.Array) -> jax.Array:
        """Quantized latents (B,h,w,z) -> raw float32 reconstruction (unclipped, for losses)."""
        return self.decoder(z_q)

    def decode_indices(self, ids: jax.Array) -> jax.Array:
        """Code ids (B,h,w) -> images (B,H,W,C) clipped to [-1,1]; map to [0,1] with (x+1)/2 for display."""
        return jnp.clip(self.decoder(self.quantize.codes(ids)), -1.0, 1.0)

    def __call__(self, images: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Training forward: (raw reconstruction, aux with the quantizer's losses and usage metrics)."""
        z_q, _, aux = self.encode(images)
        return self.decode(z_q), aux


def _variables(variables: Mapping[str, Any]) -> Mapping[str, Any]:
    """Accepts a full variables dict ({"params": ..., "vq_stats": ...}) or a bare params tree."""
    return variables if "params" in variables else {"params": variables}


@functools.partial(jax.jit, static_argnums=0)
def encode_to_ids(model: VQModel, variables: Mapping[str, Any], images: jax.Array) -> jax.Array:
    """Jit-compiled images -> ids (B,h,w); the quantizer's unused losses are dead code that XLA drops."""
    return model.apply(_variables(variables), images, method=VQModel.encode)[1]


@functools.partial(jax.jit, static_argnums=0)
def decode_ids(model: VQModel, variables: Mapping[str, Any], ids: jax.Array) -> jax.Array:
    """Jit-compiled ids (B,h,w) -> images (B,H,W,C) in [-1,1]."""
    return model.apply(_variables(variables), ids, method=VQModel.decode_indices)
