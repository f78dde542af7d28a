"""The models `python -m mmjax.eval` can answer with: a LLaVA-family run or a Show-o run (with or without the
CLIP-ViT features), each loaded from its run directory (resolved `config.json` + newest checkpoint, released
weights converted as docs/convert_weights.md says) and answering greedily with the KV cache, in batches.

An answerer takes `(prompt text, images)` pairs, `images` uint8 (H, W, 3) arrays, and returns the answers.
LLaVA puts one `<image>` per image before the text in a one-turn conversation; Show-o answers about the first
image (its MMU rows hold one) in its own `USER: ... ASSISTANT:` form, and a question without an image is
refused at reading time (`needs_image`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np


def read_config(workdir: str, overrides: Sequence[str] = ()) -> Any:
    """A run's resolved config.json with `field=value` overrides."""
    import ml_collections

    from mmjax import configlib

    path = os.path.join(workdir, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{workdir}: no config.json (is it a training run directory?)")
    with open(path) as f:
        config = ml_collections.ConfigDict(json.load(f))
    config = configlib.apply_overrides(config, list(overrides))
    if config.task not in ("llava", "showo"):
        raise configlib.ConfigError(f"{path}: task is {config.task!r}; mmjax.eval answers with 'llava' or 'showo' "
                                    "runs")
    return config


class LlavaAnswerer:
    needs_image = False

    def __init__(self, task: Any, params: Any):
        self.task, self.params = task, params

    def answer(self, items: Sequence[tuple[str, list[np.ndarray]]], batch_size: int, max_new_tokens: int
               ) -> list[str]:
        from mmjax.data.conversation import IMAGE_PLACEHOLDER

        prompts = [([{"from": "human", "value": f"{IMAGE_PLACEHOLDER}\n" * len(images) + text}], images)
                   for text, images in items]
        return self.task.answer(self.params, prompts, batch_size=batch_size, max_new_tokens=max_new_tokens)


class ShowoAnswerer:
    """Show-o's `task.answer`, fed `eval.batch` images at a time (its batch and answer length come from the
    run's `eval.batch` / `eval.max_new_tokens`, set from the command line at load time)."""

    needs_image = True

    def __init__(self, task: Any, params: Any, model_state: Any):
        self.task, self.params, self.model_state = task, params, model_state

    def answer(self, items: Sequence[tuple[str, list[np.ndarray]]], batch_size: int, max_new_tokens: int
               ) -> list[str]:
        b, answers = int(self.task.config.eval.batch), []
        for start in range(0, len(items), b):
            chunk = items[start : start + b]
            inputs = self.task.mmu_inputs(self.model_state, [{"image": images[0]} for _, images in chunk])
            answers += self.task.answer(self.params, self.model_state, inputs, [text for text, _ in chunk])
        return answers


def load_answerer(workdir: str, overrides: Sequence[str] = (), *, batch_size: int = 0, max_new_tokens: int = 16
                  ) -> tuple[LlavaAnswerer | ShowoAnswerer, int]:
    """(answerer, batch size) of a run directory; `batch_size` 0 takes the run's eval batch."""
    from mmjax.train.checkpoint import load_params
    from mmjax.train.tasks import make_task

    config = read_config(workdir, overrides)
    if config.task == "showo":
        config.eval.max_new_tokens = max_new_tokens
        if batch_size:
            config.eval.batch = batch_size
        task = make_task(config)
        params = load_params(workdir, key="ema_params" if config.get("ema_decay") else "params")
        return ShowoAnswerer(task, params, load_params(workdir, key="model_state")), int(config.eval.batch)
    task = make_task(config)
    return LlavaAnswerer(task, load_params(workdir)), batch_size or config.eval_batch_size or config.batch_size
