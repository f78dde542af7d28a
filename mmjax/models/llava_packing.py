"""Splicing image features into a LLaVA sequence: one fixed-shape gather under jit.

The host builds, per sample, where each image token reads its features from (`mmjax.layout.token_maps`:
identity order for LLaVA-1/1.5, unpad + newline (+ bilinear reduction) for NeXT / OneVision, pooled frames for
video) and places those maps at the image positions (`place_maps`). Here the model applies them: every image
position takes a weighted sum of up to K rows of the projected features (or the `image_newline` vector), with
no Python loop over the batch and no dynamic shape.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def splice(text_embeds: jax.Array, features: jax.Array, newline: jax.Array, is_image: jax.Array,
           index: jax.Array | None = None, weight: jax.Array | None = None) -> jax.Array:
    """Puts image tokens into the embedded sequence, fixed shapes, no loop over the batch.

    text_embeds (B, T, D); features (B, F, D) projected tile features of each sample's image slots; newline (D,);
    is_image (B, T) bool. With `index`/`weight` (B, T, K) from `place_maps`, image token t of row b is
    sum_k weight[b, t, k] * [features; newline][b, index[b, t, k]]. Without them, the k-th image position of a
    row takes the k-th feature row (cumsum of is_image): plain LLaVA-1/1.5 packing.
    """
    b, f, d = features.shape
    buffer = jnp.concatenate([features, jnp.broadcast_to(newline.astype(features.dtype), (b, 1, d))], axis=1)
    if index is None:
        index = jnp.clip(jnp.cumsum(is_image, axis=1) - 1, 0, f - 1)[..., None]
        weight = jnp.ones(index.shape, features.dtype)
    take = jax.vmap(lambda rows, idx: rows[idx])  # per sample: (F+1, D)[(T,)] -> (T, D)
    if index.shape[-1] == 1:  # weights are exactly 0 or 1: no mixing, stay in the compute dtype
        gathered = take(buffer, index[..., 0]) * weight[..., 0, None].astype(features.dtype)
    else:  # bilinear mixing in float32 (bf16 weights would be off by up to 0.4%)
        gathered = sum(take(buffer, index[..., k]).astype(jnp.float32) * weight[..., k, None].astype(jnp.float32)
                       for k in range(index.shape[-1]))
    return jnp.where(is_image[..., None], gathered.astype(text_embeds.dtype), text_embeds)
