"""Run directories that may live in object storage (`gs://bucket/runs/x` on Cloud TPU) as well as on disk.

A TPU VM's disk goes with the VM (a preempted spot slice is deleted), and every host of a pod writes its shards of
a checkpoint, so pod runs keep their workdir in a bucket. orbax / tensorstore write checkpoints there natively;
everything else that touches the workdir goes through `etils.epath`, which serves local paths with `os` and
`gs://` with gcsfs (the `tpu` extras). `os.path.abspath` would turn "gs://b/r" into "/cwd/gs:/b/r" and
`os.makedirs` would create that locally, so paths are made absolute only when they are local (`absolute`).
"""

from __future__ import annotations

import os

from etils import epath


def is_remote(path: str | os.PathLike) -> bool:
    """Whether `path` is a URL (gs://, s3://, ...) rather than a local path."""
    return "://" in os.fspath(path)


def absolute(path: str | os.PathLike) -> str:
    """A local path made absolute (relative workdirs work from any cwd); a URL unchanged."""
    path = os.fspath(path)
    return path if is_remote(path) else os.path.abspath(path)


def make_dirs(path: str | os.PathLike) -> None:
    """`os.makedirs(path, exist_ok=True)` for local paths and URLs alike."""
    epath.Path(path).mkdir(parents=True, exist_ok=True)

