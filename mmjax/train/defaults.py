"""The trainer's config fields with their defaults; every config file starts from `trainer_config()`.

Declaring every field up front is what lets a locked config refuse a misspelt `--config.` override.
"""

from __future__ import annotations

import ml_collections

from mmjax.train import optim


def trainer_config(**overrides) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.task = ""
    c.seed = 0
    c.batch_size = 128              # global batch size (all hosts together)
    c.eval_batch_size = 0           # 0: same as batch_size
    c.total_steps = 1000
    c.log_every = 50
    c.eval_every = 0                # 0: only the final evaluation
    c.checkpoint_every = 500
    c.keep_checkpoints = 3
    c.ema_decay = 0.0               # > 0 keeps an EMA of the params, used for evaluation
    c.nonfinite = "stop"            # stop | skip: what a non-finite loss does (the update is never applied)
    c.data_workers = 0              # grain worker processes (0: threads in the trainer process)
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    c.sharding = ml_collections.ConfigDict(dict(rules=()))   # () = mmjax.train.sharding.DEFAULT_RULES
    c.optim = optim.default_config()
    c.data = ml_collections.ConfigDict()
    c.model = ml_collections.ConfigDict()
    c.update(overrides)
    return c
