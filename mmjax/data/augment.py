"""Training-time image augmentation on the host (numpy + PIL), seeded by the pipeline's per-record generator.

`inception_crop` is the random-resized crop of "How to train your ViT" / big_vision (area 5%-100%, aspect 3/4-4/3);
`random_shift` suits tiny images such as the 8x8 digits; `mixup` mixes a batch with its reversal (on device).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from mmjax.data.images import center_crop, resize, resize_shortest_edge


def random_shift(image: np.ndarray, max_shift: int, rng: np.random.Generator) -> np.ndarray:
    """Translates by up to `max_shift` pixels in each direction, filling with zeros."""
    if max_shift <= 0:
        return image
    dy, dx = rng.integers(-max_shift, max_shift + 1, size=2)
    padded = np.pad(image, ((max_shift, max_shift), (max_shift, max_shift), (0, 0)))
    h, w = image.shape[:2]
    return padded[max_shift + dy: max_shift + dy + h, max_shift + dx: max_shift + dx + w]


def inception_crop(image: np.ndarray, size: int, rng: np.random.Generator,
                   area_range: tuple[float, float] = (0.05, 1.0),
                   aspect_range: tuple[float, float] = (3 / 4, 4 / 3)) -> np.ndarray:
    """Random crop of random area and aspect ratio, resized to size x size (falls back to a centre crop)."""
    h, w = image.shape[:2]
    for _ in range(10):
        area = h * w * rng.uniform(*area_range)
        aspect = math.exp(rng.uniform(math.log(aspect_range[0]), math.log(aspect_range[1])))
        cw, ch = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
            return resize(image[y: y + ch, x: x + cw], size, size, method="bilinear")
    side = min(h, w)
    return resize(center_crop(image, side, side), size, size, method="bilinear")


def random_flip(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return image[:, ::-1] if rng.uniform() < 0.5 else image


def resize_center_crop(image: np.ndarray, resize_to: int, crop: int) -> np.ndarray:
    """The standard evaluation view: shortest edge to `resize_to`, then a central `crop` square."""
    return center_crop(resize_shortest_edge(image, resize_to, method="bilinear"), crop, crop)


def mixup(rng: jax.Array, images: jax.Array, labels: jax.Array, alpha: float) -> tuple[jax.Array, jax.Array]:
    """Mixes each example with the batch reversed, one Beta(alpha, alpha) ratio per batch (big_vision's form)."""
    ratio = jax.random.beta(rng, alpha, alpha)
    ratio = jnp.maximum(ratio, 1 - ratio)
    mix = lambda x: ratio * x + (1 - ratio) * jnp.flip(x, axis=0)
    return mix(images), mix(labels)
