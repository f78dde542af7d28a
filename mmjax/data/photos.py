"""Random crops of the real photographs that scikit-image ships (`skimage.data`): real-image data with no download.

A tokenizer that only ever saw synthetic shapes says little about photos. scikit-image installs a couple of
dozen real images with the package (no network), enough for a CPU-sized tokenizer to learn natural-image
statistics and, crucially, to be scored on photos it never saw.

The split is by PHOTO, fixed here and never by crop, so held-out numbers measure generalisation to new
images, not to new crops of training images:
  train (15): astronaut, coffee, hubble_deep_field, immunohistochemistry, retina, motorcycle_left,
              motorcycle_right (a stereo pair: both on the same side), coins, moon, grass, gravel, clock,
              page, text, cell
  eval (4):   chelsea (a cat, colour), rocket (outdoor, colour), camera (grey portrait), brick (grey texture)
Left out: `cat` (the same image as `chelsea`), synthetic drawings (checkerboard, colorwheel, logo, shepp_logan,
binary_blobs, horse) and images that need the optional `pooch` download.

Record i of a source is a pure function of (seed, i): pick a photo uniformly, a scale from `scales` (1/2 means
the photo was first downsampled 2x with a box filter, so a crop covers more of the scene), a uniform position
and a horizontal flip, then cut a `crop_size` square. Grey photos become RGB by repeating the channel. Records:
{"image": uint8 (crop_size, crop_size, 3), "photo": name, "index": i}. Train and eval sources use different
default seeds as well as different photos.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
from PIL import Image

TRAIN_PHOTOS = ("astronaut", "coffee", "hubble_deep_field", "immunohistochemistry", "retina", "motorcycle_left",
                "motorcycle_right", "coins", "moon", "grass", "gravel", "clock", "page", "text", "cell")
EVAL_PHOTOS = ("chelsea", "rocket", "camera", "brick")
SPLITS = {"train": TRAIN_PHOTOS, "eval": EVAL_PHOTOS, "test": EVAL_PHOTOS}


@functools.cache
def load_photo(name: str) -> np.ndarray:
    """One skimage photo as uint8 RGB (H, W, 3); cached per process."""
    try:
        import skimage.data
    except ImportError as e:
        raise ImportError("the photos source needs scikit-image: pip install scikit-image") from e
    if name.startswith("motorcycle_"):
        left, right, _ = skimage.data.stereo_motorcycle()
        image = left if name.endswith("left") else right
    elif name in TRAIN_PHOTOS + EVAL_PHOTOS:
        image = getattr(skimage.data, name)()
    else:
        raise ValueError(f"unknown photo {name!r}; known: {TRAIN_PHOTOS + EVAL_PHOTOS}")
    image = np.asarray(image)
    if image.dtype != np.uint8:
        image = np.clip(image * (255.0 if image.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    return np.ascontiguousarray(image[..., :3])


@functools.cache
def _scaled(name: str, scale: float) -> np.ndarray:
    image = load_photo(name)
    if scale == 1.0:
        return image
    h, w = image.shape[:2]
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BOX))


class PhotosSource:
    """A grain random-access source of `num_records` deterministic crops of one split's photos."""

    def __init__(self, split: str = "train", *, crop_size: int = 32, num_records: int = 50_000,
                 scales: tuple[float, ...] = (1.0, 0.5, 0.25), seed: int | None = None,
                 photos: tuple[str, ...] | None = None):
        if split not in SPLITS:
            raise ValueError(f"photos has splits {sorted(SPLITS)}, not {split!r}")
        self.photos = tuple(photos) if photos else SPLITS[split]
        self.crop_size, self.num_records = int(crop_size), int(num_records)
        self.scales = tuple(float(s) for s in scales)
        self.seed = int(seed) if seed is not None else (0 if split == "train" else 1)
        for name in self.photos:
            for s in self.scales:
                if min(_scaled(name, s).shape[:2]) < self.crop_size:
                    raise ValueError(f"photo {name!r} at scale {s} is smaller than crop_size {self.crop_size}")

    def __len__(self) -> int:
        return self.num_records

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.num_records:
            raise IndexError(f"photos record {index} out of range [0, {self.num_records})")
        rng = np.random.default_rng([self.seed, int(index)])
        name = self.photos[int(rng.integers(len(self.photos)))]
        image = _scaled(name, self.scales[int(rng.integers(len(self.scales)))])
        c = self.crop_size
        y, x = int(rng.integers(image.shape[0] - c + 1)), int(rng.integers(image.shape[1] - c + 1))
        crop = image[y: y + c, x: x + c]
        if rng.uniform() < 0.5:
            crop = crop[:, ::-1]
        return {"image": np.ascontiguousarray(crop), "photo": name, "index": int(index)}
