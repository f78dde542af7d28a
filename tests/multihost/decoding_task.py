"""A test-only task: the tokenizer's, reading encoded image bytes (an image folder's records) by decoding them, so
that undecodable files are skipped and counted like any bad record. A test's config registers it."""

from __future__ import annotations

from typing import Any

import numpy as np

from mmjax.data.images import decode_image
from mmjax.train.tasks.vq import VQTask


class DecodingVQTask(VQTask):
    def preprocess(self, record: dict[str, Any], rng: np.random.Generator | None) -> dict[str, np.ndarray]:
        return super().preprocess({**record, "image": decode_image(record["image"])}, rng)
