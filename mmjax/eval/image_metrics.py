"""Reconstruction metrics for the image tokenizer: PSNR and SSIM in jnp, jit-compiled, batch-first NHWC.

They run inside the evaluation step on device, so a VQ evaluation never copies images to host to score them.
SSIM follows Wang et al. 2004 as standardised by
``skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False)`` and
``tf.image.ssim``: an 11-tap Gaussian window (sigma 1.5), K1=0.01, K2=0.03, statistics only where the window
fits inside the image ("valid"), averaged over pixels and channels. Both return one value per image, shape
``(N,)``, in float32.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


def _check_pair(a: jax.Array, b: jax.Array) -> None:
    if a.shape != b.shape or a.ndim != 4:
        raise ValueError(f"expected two NHWC batches of the same shape, got {a.shape} and {b.shape}")


@jax.jit
def psnr(a: jax.Array, b: jax.Array, max_val: float = 1.0) -> jax.Array:
    """Peak signal-to-noise ratio in dB per image, ``10 log10(max_val^2 / MSE)``; inf for identical images."""
    _check_pair(a, b)
    a, b = a.astype(jnp.float32), b.astype(jnp.float32)
    mse = jnp.mean(jnp.square(a - b), axis=(1, 2, 3))
    return 10.0 * jnp.log10(jnp.square(jnp.float32(max_val)) / mse)


def _gaussian_window(size: int, sigma: float) -> np.ndarray:
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    w = np.exp(-0.5 * (x / sigma) ** 2)
    return (w / w.sum()).astype(np.float32)


def _filter_valid(x: jax.Array, window: np.ndarray) -> jax.Array:
    """Separable 'valid' filtering of NHWC maps along H then W (a weighted sum of shifted slices)."""
    k = len(window)
    h, w = x.shape[1] - k + 1, x.shape[2] - k + 1
    x = sum(float(window[i]) * x[:, i : i + h] for i in range(k))
    return sum(float(window[i]) * x[:, :, i : i + w] for i in range(k))


@functools.partial(jax.jit, static_argnames=("filter_size", "sigma", "k1", "k2"))
def ssim(
    a: jax.Array,
    b: jax.Array,
    max_val: float = 1.0,
    *,
    filter_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> jax.Array:
    """Structural similarity per image (mean of the SSIM map over valid pixels and channels)."""
    _check_pair(a, b)
    if min(a.shape[1], a.shape[2]) < filter_size:
        raise ValueError(f"images {a.shape[1]}x{a.shape[2]} are smaller than the {filter_size}px SSIM window")
    # SSIM is invariant to scaling images and constants together; working in [0, 1] keeps the float32
    # variances E[x^2] - E[x]^2 well conditioned for uint8-range inputs too.
    scale = 1.0 / jnp.float32(max_val)
    a, b = a.astype(jnp.float32) * scale, b.astype(jnp.float32) * scale
    window = _gaussian_window(filter_size, sigma)
    c1, c2 = (k1 * k1), (k2 * k2)
    mu_a, mu_b = _filter_valid(a, window), _filter_valid(b, window)
    var_a = _filter_valid(a * a, window) - mu_a * mu_a
    var_b = _filter_valid(b * b, window) - mu_b * mu_b
    cov = _filter_valid(a * b, window) - mu_a * mu_b
    num = (2.0 * mu_a * mu_b + c1) * (2.0 * cov + c2)
    den = (mu_a * mu_a + mu_b * mu_b + c1) * (var_a + var_b + c2)
    return jnp.mean(num / den, axis=(1, 2, 3))
