"""Checkpoints with orbax: the train state, the grain iterator state and the config, saved asynchronously.

A run's `workdir/checkpoints/<step>/` holds three items: `state` (params, optimizer state, step, RNG: orbax's
tensorstore format, no pickle), `data` (the grain iterator position, JSON) and `config` (JSON). Restoring takes the
newest step that restores cleanly: a corrupt latest checkpoint falls back to the previous one with a warning.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """No usable checkpoint where one was required; the message names the directory."""


class Checkpointer:
    """Thin policy layer over `ocp.CheckpointManager`: what a run saves, and how it recovers."""

    def __init__(self, directory: str, *, save_every: int, keep: int, async_save: bool = True):
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, save_interval_steps=save_every, enable_async_checkpointing=async_save, create=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options,
                                             item_names=("state", "data", "config"))

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, step: int, state: Any, data_iter: Any, config: dict, *, force: bool = False) -> bool:
        args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                                  data=grain.checkpoint.CheckpointSave(data_iter),
                                  config=ocp.args.JsonSave(config))
        return self.manager.save(step, args=args, force=force)

    def restore(self, abstract_state: Any, data_iter: Any) -> tuple[Any, int] | None:
        """Restores the newest good checkpoint into `abstract_state`'s shardings; None when there is none."""
        for step in reversed(self.steps()):
            try:
                args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                          data=grain.checkpoint.CheckpointRestore(data_iter))
                restored = self.manager.restore(step, args=args)
                return restored.state, step
            except Exception as e:  # corrupt or partial files: say so and fall back to an older step
                first_line = str(e).strip().splitlines()[0] if str(e).strip() else ""
                log.warning("checkpoint %s/%d cannot be restored (%s: %s); trying an older one",
                            self.directory, step, type(e).__name__, first_line[:200])
        if self.steps():
            raise CheckpointError(f"no checkpoint in {self.directory} could be restored (steps {self.steps()})")
        return None

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def latest_state_dir(workdir: str) -> tuple[str, int]:
    """The newest checkpoint step of a run and its `state` directory; clear error if the run has none."""
    ckpt_dir = os.path.join(workdir, "checkpoints")
    steps = sorted(int(d) for d in os.listdir(ckpt_dir) if d.isdigit()) if os.path.isdir(ckpt_dir) else []
    if not steps:
        raise CheckpointError(f"no checkpoints under {ckpt_dir}")
    return os.path.join(ckpt_dir, str(steps[-1]), "state"), steps[-1]


def load_params(workdir: str, *, key: str = "params") -> Any:
    """The parameters (or `ema_params`) of a run's newest checkpoint as host numpy arrays, for sampling/eval."""
    state_dir, _ = latest_state_dir(workdir)
    with ocp.StandardCheckpointer() as ckptr:
        metadata = ckptr.metadata(state_dir)
        tree = getattr(metadata, "item_metadata", metadata)
        tree = getattr(tree, "tree", tree)
        if tree is None:  # older orbax (0.12.4) keeps no item metadata here: restore everything as saved
            restored = ckptr.restore(state_dir)
        else:
            if key not in tree or tree[key] is None:
                raise CheckpointError(f"{state_dir} has no {key!r}")
            device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
            target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), tree)
            restored = ckptr.restore(state_dir, target)
    if key not in restored or restored[key] is None:
        raise CheckpointError(f"{state_dir} has no {key!r}")
    return restored[key]
