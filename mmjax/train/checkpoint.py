"""Checkpoints with orbax: the train state, the grain iterator state and the config, saved asynchronously.

A run's `workdir/checkpoints/<step>/` holds three items: `state` (params, optimizer state, step, RNG: orbax's
tensorstore format, no pickle), `data` (the grain iterator position, JSON) and `config` (JSON). Every loader (resume,
`load_params` for sampling, evaluation and stage-2 init) takes the newest step that restores cleanly
(`restore_newest`): newer steps that fail while an older one restores are corrupt, and are moved aside to
`checkpoints/corrupt/<step>-<time>` with a warning, so the run directory stays consistent for the next loader.
When no step restores, nothing is moved (the cause may be the caller's, e.g. a changed model) and the error lists
why each step failed. Paths may be relative: they are resolved here, where they are handed to orbax. They may
also be `gs://` URLs (Cloud TPU pods): directory listing and moves go through etils.epath (`mmjax.paths`).

On several hosts orbax writes into `<step>.orbax-checkpoint-tmp-*` and process 0 renames it to `<step>` once every
host has finished; a checkpoint whose writing a dead host interrupted stays temporary: never listed, restored or
newest. A checkpoint written by another number of processes restores (`Checkpointer.restore`'s `move_position`).
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Callable
from typing import Any, TypeVar

import grain
import jax
import orbax.checkpoint as ocp
from etils import epath

from mmjax import paths

log = logging.getLogger(__name__)
T = TypeVar("T")
CORRUPT_DIR = "corrupt"


class CheckpointError(RuntimeError):
    """No usable run directory or checkpoint where one was required; the message names the directory."""


def checkpoint_steps(ckpt_dir: str) -> list[int]:
    """The finished checkpoint steps in `ckpt_dir` (orbax's temporary and the quarantined ones excluded)."""
    directory = epath.Path(ckpt_dir)
    if not directory.is_dir():
        return []
    return sorted(int(d.name) for d in directory.iterdir() if d.name.isdigit())


def quarantine(ckpt_dir: str, step: int) -> str:
    """Moves `ckpt_dir/<step>` to `ckpt_dir/corrupt/<step>-<time>` (kept for inspection, never loaded again)."""
    target = os.path.join(ckpt_dir, CORRUPT_DIR, f"{step}-{time.strftime('%Y%m%d-%H%M%S')}")
    paths.make_dirs(os.path.dirname(target))
    epath.Path(ckpt_dir, str(step)).rename(target)
    return target


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:200] if text else ''}"


def restore_newest(ckpt_dir: str, steps: list[int], restore: Callable[[int], T]) -> tuple[T, int]:
    """`(restore(step), step)` for the newest step that restores; the newer, failing steps are quarantined.

    A CheckpointError from `restore` (e.g. the item asked for is not in the checkpoint) is the caller's problem,
    not corruption: it propagates at once.
    """
    failed: list[tuple[int, str]] = []
    for step in reversed(steps):
        try:
            restored = restore(step)
        except CheckpointError:
            raise
        except Exception as e:  # corrupt or partial files: say so and fall back to an older step
            failed.append((step, _first_line(e)))
            log.warning("checkpoint %s/%d cannot be restored (%s); trying an older one", ckpt_dir, step, failed[-1][1])
            continue
        for bad, _ in failed:
            if jax.process_index() == 0:   # one host moves; the others saw the same failures
                log.warning("checkpoint %s/%d moved aside to %s", ckpt_dir, bad, quarantine(ckpt_dir, bad))
        return restored, step
    reasons = "; ".join(f"step {s}: {why}" for s, why in failed)
    raise CheckpointError(f"no checkpoint in {ckpt_dir} could be restored ({reasons})")


def data_process_count(data_dir: str) -> int | None:
    """How many processes wrote a checkpoint's data positions (grain's `process_<i>-of-<n>.json`); None if none."""
    directory = epath.Path(data_dir)
    names = [p.name for p in directory.iterdir()] if directory.is_dir() else []
    counts = {int(m.group(1)) for m in map(re.compile(r"process_\d+-of-(\d+)\.json$").match, names) if m}
    return counts.pop() if len(counts) == 1 else None


class Checkpointer:
    """Thin policy layer over `ocp.CheckpointManager`: what a run saves, and how it recovers."""

    def __init__(self, directory: str, *, save_every: int, keep: int, async_save: bool = True):
        self.directory = paths.absolute(directory)
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

    def restore(self, abstract_state: Any, data_iter: Any,
                move_position: Callable[[dict, int], dict] | None = None) -> tuple[Any, int] | None:
        """Restores the newest good checkpoint into `abstract_state`'s shardings; None when there is none.

        A checkpoint written by a different number of processes restores its state into this run's mesh; its
        data position is `move_position(saved position of process 0, saved process count)` for this process, or,
        without `move_position`, the restore is refused (CheckpointError: the caller's problem, not corruption).
        """
        steps = self.steps()
        if not steps:
            return None

        def restore_step(step: int) -> Any:
            saved_count = data_process_count(os.path.join(self.directory, str(step), "data"))
            if saved_count in (None, jax.process_count()):
                args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                          data=grain.checkpoint.CheckpointRestore(data_iter))
                return self.manager.restore(step, args=args).state
            if move_position is None:
                raise CheckpointError(f"{self.directory}/{step} was written by {saved_count} processes and this run "
                                      f"has {jax.process_count()}; its data position cannot be moved")
            saved = json.loads(epath.Path(self.directory, str(step), "data",
                                          f"process_0-of-{saved_count}.json").read_text())
            state = self.manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state))).state
            data_iter.set_state(json.dumps(move_position(saved, saved_count)).encode())
            log.info("checkpoint %s/%d: written by %d processes, resumed by %d (data position moved)",
                     self.directory, step, saved_count, jax.process_count())
            return state

        try:
            return restore_newest(self.directory, steps, restore_step)
        finally:
            self.manager.reload()  # quarantined steps are gone from disk

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def _restore_item(ckptr: ocp.StandardCheckpointer, state_dir: str, key: str) -> Any:
    metadata = ckptr.metadata(state_dir)
    tree = getattr(metadata, "item_metadata", metadata)
    tree = getattr(tree, "tree", tree)
    if tree is None:  # older orbax (0.12.4) keeps no item metadata here: restore everything as saved
        restored = ckptr.restore(state_dir)
    else:
        if key not in tree or tree[key] is None:
            raise CheckpointError(f"{state_dir} has no {key!r}")
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])   # this host's (several hosts)
        target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), tree)
        restored = ckptr.restore(state_dir, target)
    if key not in restored or restored[key] is None:
        raise CheckpointError(f"{state_dir} has no {key!r}")
    return restored[key]


def load_params(workdir: str, *, key: str = "params") -> Any:
    """The parameters (or `ema_params`, `model_state`) of a run's newest restorable checkpoint, for sampling,
    evaluation and initialising a later stage; `workdir` may be relative."""
    ckpt_dir = os.path.join(paths.absolute(workdir), "checkpoints")
    steps = checkpoint_steps(ckpt_dir)
    if not steps:
        raise CheckpointError(f"no checkpoints under {ckpt_dir}")
    with ocp.StandardCheckpointer() as ckptr:
        tree, _ = restore_newest(ckpt_dir, steps,
                                 lambda step: _restore_item(ckptr, os.path.join(ckpt_dir, str(step), "state"), key))
    return tree
