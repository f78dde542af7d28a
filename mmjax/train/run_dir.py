"""What a new command may do with an existing run directory: checked before anything in it is written.

Re-running with the same `--workdir` resumes the run, so the config must be the run's own (its `config.json`):
a different model or data would fail at restore, or worse, train on from a state it does not fit. The fields in
`RESUMABLE_FIELDS` may differ on resume because they do not change what was trained so far (logging, evaluation
and checkpoint cadence, starvation limits, mesh and sharding layout, the non-finite policy);
`total_steps` may change to extend or shorten a run (the learning-rate schedule is recomputed for the new length,
so the steps after the resume follow the new schedule; a warning says so). Any other difference is refused with
the differing fields named, and nothing is written. (`data_workers` may not change: grain's iterator
state, which is checkpointed, has a different form with worker processes.)
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os

import ml_collections
from etils import epath

from mmjax import configlib, paths
from mmjax.train.checkpoint import CheckpointError, checkpoint_steps

log = logging.getLogger(__name__)
RESUMABLE_FIELDS = ("total_steps", "log_every", "eval_every", "checkpoint_every", "keep_checkpoints",
                    "data_max_consecutive_skips", "data_max_skip_fraction", "data_skip_check_after", "eval_batch_size",
                    "nonfinite", "mesh.*", "sharding.*")
ABSENT = "<absent>"


def prepare_workdir(workdir: str, config: ml_collections.ConfigDict) -> str:
    """The absolute run directory, created if new; refuses a path that is a file and a config that differs from
    the one of the run to be resumed (see the module docstring). Writes nothing but the empty directory."""
    workdir = paths.absolute(workdir)  # a gs:// URL stays one (mmjax.paths)
    if epath.Path(workdir).exists() and not epath.Path(workdir).is_dir():
        raise CheckpointError(f"--workdir {workdir} exists and is not a directory")
    config_path = os.path.join(workdir, "config.json")
    if checkpoint_steps(os.path.join(workdir, "checkpoints")) and epath.Path(config_path).exists():
        try:
            old = json.loads(epath.Path(config_path).read_text())
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{config_path} cannot be read ({e}); the run cannot be resumed") from e
        old, new = dict(configlib.flat_items(old)), dict(configlib.flat_items(configlib.to_dict(config)))
        differing = [k for k in sorted(old.keys() | new.keys()) if old.get(k, ABSENT) != new.get(k, ABSENT)]
        refused = [k for k in differing if not any(fnmatch.fnmatchcase(k, p) for p in RESUMABLE_FIELDS)]
        if refused:
            shown = ", ".join(f"{k}: {old.get(k, ABSENT)!r} -> {new.get(k, ABSENT)!r}" for k in refused[:10])
            more = f" and {len(refused) - 10} more" if len(refused) > 10 else ""
            raise configlib.ConfigError(
                f"{workdir} holds a run with a different config ({shown}{more}); resume it with its own config "
                f"(only {', '.join(RESUMABLE_FIELDS)} may change) or choose a new --workdir")
        if "total_steps" in differing:
            log.warning("resuming %s with total_steps %s (was %s): the learning-rate schedule follows the new length",
                        workdir, new["total_steps"], old["total_steps"])
    paths.make_dirs(workdir)
    return workdir
