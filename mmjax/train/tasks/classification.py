"""Image classification with a ViT: softmax cross-entropy (label smoothing, mixup), top-1 accuracy.

Data records carry `image` (encoded bytes, a path, or an array: float in [0, 1] or uint8, any size; decoded by
`mmjax.data.images.decode_image` unless `augment.channels` is 1) and an integer `label` in [0, num_classes).
`config.augment` chooses the views:
  kind=shift:           random translation by up to `max_shift` pixels (tiny images such as the 8x8 digits)
  kind=inception_crop:  random-resized crop to `image_size` + flip for training; resize to `eval_resize` and
                        central crop for evaluation (ImageNet)
Pixels are scaled to `value_range` (default [0, 1]; big_vision's ImageNet recipes use [-1, 1]).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mmjax.data import augment, pipeline
from mmjax.data.images import decode_image
from mmjax.models.vit import vit_from_config
from mmjax.train.tasks.base import Metrics, Task


class LabelError(ValueError):
    """A record's label is not an integer class in [0, num_classes); skipped and counted under this name."""


class ClassificationTask(Task):
    required_fields = (("image", "label"),)

    def __init__(self, config):
        super().__init__(config)
        self.model = vit_from_config(dict(config.model), num_classes=config.num_classes)

    def preprocess(self, record: dict[str, Any], rng: np.random.Generator | None) -> dict[str, np.ndarray]:
        aug = self.config.augment
        channels = int(aug.get("channels", 3))
        if channels == 3:   # encoded bytes, a path or an array of any layout: the one decode of every task
            image = decode_image(record["image"], name=pipeline.record_where(record) or None)
        else:               # single-channel arrays (the 8x8 digits) as they are
            image = np.asarray(record["image"])
        if image.ndim == 2:
            image = image[..., None]
        label = record["label"]
        if not isinstance(label, int | np.integer) or not 0 <= label < self.config.num_classes:
            raise LabelError(f"label {label!r} is not a class in [0, {self.config.num_classes}) (config.num_classes)")
        if image.shape[-1] != channels:
            raise ValueError(f"image of shape {image.shape} has {image.shape[-1]} channels; config.augment.channels "
                             f"is {channels}")
        if aug.kind == "inception_crop":
            if rng is not None:
                image = augment.random_flip(augment.inception_crop(image, aug.image_size, rng), rng)
            else:
                image = augment.resize_center_crop(image, aug.eval_resize, aug.image_size)
        image = image.astype(np.float32) / 255.0 if image.dtype == np.uint8 else image.astype(np.float32)
        if aug.kind == "shift" and rng is not None:
            image = augment.random_shift(image, aug.max_shift, rng)
        lo, hi = aug.value_range
        return {"image": lo + (hi - lo) * image, "label": np.int32(label)}

    def example_batch(self, batch_size: int) -> dict[str, np.ndarray]:
        """Shapes from the config (`augment.image_size`, `augment.channels`, default 3): no data is read."""
        return {k: np.zeros_like(v) for k, v in self.synthetic_batch(batch_size).items()}

    def synthetic_batch(self, batch_size: int, seed: int = 0) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(seed)
        size, (lo, hi) = self.config.augment.image_size, self.config.augment.value_range
        channels = int(self.config.augment.get("channels", 3))
        image = rng.uniform(lo, hi, (batch_size, size, size, channels)).astype(np.float32)
        return {"image": image, "label": rng.integers(0, self.config.num_classes, batch_size).astype(np.int32)}

    def init(self, rng: jax.Array, batch: dict[str, jax.Array]) -> dict[str, Any]:
        return self.model.init(rng, batch["image"])

    def _logits(self, params: Any, batch: dict[str, jax.Array], rng: jax.Array | None) -> jax.Array:
        train = rng is not None
        logits, _ = self.model.apply({"params": params}, batch["image"], train=train,
                                     rngs={"dropout": rng} if train else {})
        return logits

    def loss_fn(self, params, model_state, batch, rng) -> tuple[jax.Array, tuple[Metrics, Any]]:
        labels = jax.nn.one_hot(batch["label"], self.config.num_classes)
        labels = optax.smooth_labels(labels, self.config.label_smoothing) if self.config.label_smoothing else labels
        if self.config.augment.mixup_alpha:
            mix_rng, rng = jax.random.split(rng)
            images, labels = augment.mixup(mix_rng, batch["image"], labels, self.config.augment.mixup_alpha)
            batch = {**batch, "image": images}
        logits = self._logits(params, batch, rng)
        loss = jnp.mean(optax.softmax_cross_entropy(logits, labels))
        accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
        return loss, ({"accuracy": accuracy}, model_state)

    def eval_step(self, params, model_state, batch) -> Metrics:
        logits = self._logits(params, batch, None)
        valid = batch["valid"]
        nll = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
        return {"accuracy": jnp.sum((jnp.argmax(logits, -1) == batch["label"]) * valid),
                "loss": jnp.sum(nll * valid), "count": jnp.sum(valid)}
