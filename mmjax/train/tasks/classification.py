"""Image classification with a ViT: softmax cross-entropy (optional label smoothing), top-1 accuracy.

Data records carry `image` (float in [0, 1] or uint8) and `label`. Training augmentation is a random translation
by up to `config.augment.max_shift` pixels (zero padded), which is what small images like the 8x8 digits need.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mmjax.models.vit import vit_from_config
from mmjax.train.tasks.base import Metrics, Task


def random_shift(image: np.ndarray, max_shift: int, rng: np.random.Generator) -> np.ndarray:
    if max_shift <= 0:
        return image
    dy, dx = rng.integers(-max_shift, max_shift + 1, size=2)
    padded = np.pad(image, ((max_shift, max_shift), (max_shift, max_shift), (0, 0)))
    h, w = image.shape[:2]
    return padded[max_shift + dy: max_shift + dy + h, max_shift + dx: max_shift + dx + w]


class ClassificationTask(Task):
    def __init__(self, config):
        super().__init__(config)
        self.model = vit_from_config(dict(config.model), num_classes=config.num_classes)

    def preprocess(self, record: dict[str, Any], rng: np.random.Generator | None) -> dict[str, np.ndarray]:
        image = np.asarray(record["image"])
        image = image.astype(np.float32) / 255.0 if image.dtype == np.uint8 else image.astype(np.float32)
        if image.ndim == 2:
            image = image[..., None]
        if rng is not None:
            image = random_shift(image, self.config.augment.max_shift, rng)
        return {"image": image, "label": np.int32(record["label"])}

    def init(self, rng: jax.Array, batch: dict[str, jax.Array]) -> dict[str, Any]:
        return self.model.init(rng, batch["image"])

    def _logits(self, params: Any, batch: dict[str, jax.Array], rng: jax.Array | None) -> jax.Array:
        train = rng is not None
        logits, _ = self.model.apply({"params": params}, batch["image"], train=train,
                                     rngs={"dropout": rng} if train else {})
        return logits

    def loss_fn(self, params, model_state, batch, rng) -> tuple[jax.Array, tuple[Metrics, Any]]:
        logits = self._logits(params, batch, rng)
        labels = jax.nn.one_hot(batch["label"], self.config.num_classes)
        labels = optax.smooth_labels(labels, self.config.label_smoothing) if self.config.label_smoothing else labels
        loss = jnp.mean(optax.softmax_cross_entropy(logits, labels))
        accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
        return loss, ({"accuracy": accuracy}, model_state)

    def eval_step(self, params, model_state, batch) -> Metrics:
        logits = self._logits(params, batch, None)
        valid = batch["valid"]
        nll = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
        return {"accuracy": jnp.sum((jnp.argmax(logits, -1) == batch["label"]) * valid),
                "loss": jnp.sum(nll * valid), "count": jnp.sum(valid)}
