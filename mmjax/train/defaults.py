"""The trainer's config fields with their defaults; every config file starts from `trainer_config()`.

Declaring every field up front is what lets a locked config refuse a misspelt `--config.` override, and declaring
the allowed values of the enum fields (`CHOICES`) is what lets it refuse a misspelt value.
"""

from __future__ import annotations

import ml_collections

from mmjax import configlib
from mmjax.data.text import TOKENIZER_KINDS
from mmjax.nn.attention import BACKENDS
from mmjax.nn.scan import REMAT_POLICIES
from mmjax.train import optim

# Enum fields every task shares (fnmatch patterns over dotted field names); tasks declare their own the same way.
CHOICES = {
    "nonfinite": ("stop", "skip"),
    "optim.name": ("adamw", "sgd", "adafactor"),          # mmjax.train.optim dispatches on these
    "optim.schedule": ("cosine", "linear", "constant"),
    "*remat_policy": tuple(REMAT_POLICIES),
    "*attention_backend": BACKENDS,
    "text.kind": TOKENIZER_KINDS,
    "text.tokenizer": TOKENIZER_KINDS,
    "tokenizer.kind": TOKENIZER_KINDS,
}
configlib.declare_choices(CHOICES)


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
    # A starved input (every record skipped) stops the run instead of spinning forever; the limits apply per
    # process (each grain worker checks its own share).
    c.data_max_consecutive_skips = 1000  # this many skipped records in a row stop the run
    c.data_max_skip_fraction = 0.9       # ... or a larger skipped fraction of the records read so far,
    c.data_skip_check_after = 1000       # once at least this many records were read
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    c.sharding = ml_collections.ConfigDict(dict(rules=()))   # () = mmjax.train.sharding.DEFAULT_RULES
    c.optim = optim.default_config()
    c.data = ml_collections.ConfigDict()
    c.model = ml_collections.ConfigDict()
    c.update(overrides)
    return c
