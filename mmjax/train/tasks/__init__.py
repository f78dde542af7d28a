"""Task registry: `config.task` names one of these; each is imported only when used."""

from __future__ import annotations

import ml_collections

from mmjax.configlib import ConfigError
from mmjax.train.tasks.base import Task, import_task

REGISTRY = {
    "classification": "mmjax.train.tasks.classification:ClassificationTask",
    "lm": "mmjax.train.tasks.lm:LMTask",
    "vq": "mmjax.train.tasks.vq:VQTask",
    "d3pm": "mmjax.train.tasks.d3pm:D3PMTask",
    "showo": "mmjax.train.tasks.showo:ShowoTask",
    "llava": "mmjax.train.tasks.llava:LlavaTask",
}


def make_task(config: ml_collections.ConfigDict) -> Task:
    if config.task not in REGISTRY:
        raise ConfigError(f"config.task: unknown task {config.task!r}; known: {sorted(REGISTRY)}")
    return import_task(REGISTRY[config.task])(config)
