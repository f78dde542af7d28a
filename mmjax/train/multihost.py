"""Several JAX processes (a pod's hosts): start-up with bounded timeouts, one program on all, agreed stops.

Start-up (`initialize`) reads the standard environment: `JAX_COORDINATOR_ADDRESS` with `JAX_NUM_PROCESSES` and
`JAX_PROCESS_ID` (set by `mmjax.launch`, or by hand), SLURM's variables, or a Cloud TPU VM's (with
`MMJAX_DISTRIBUTED=1`, `jax.distributed.initialize()` asks the metadata server). The timeouts bound every wait on
another host (docs/multihost.md):

  MMJAX_HEARTBEAT_TIMEOUT (default 100 s): a host silent this long is declared dead and every other host's
      process is terminated by the coordination service (non-zero exit), even when blocked in a collective.
  MMJAX_INIT_TIMEOUT (default 300 s): how long a host waits for all the others to join at start-up.
  MMJAX_SHUTDOWN_TIMEOUT (default 300 s): how long a finishing host waits at the exit barrier for the others.

`check_same_program` refuses, on every host, a start where hosts run a different config or mmjax source (a host
left on an old commit, a typo in one host's override). `agree` is the per-step cross-host decision: a stop
requested on any host (SIGTERM reaching one VM) stops all at the same step, and an input error on any host stops
all with that host's message.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
from typing import Any

import jax
import numpy as np

log = logging.getLogger(__name__)
TIMEOUT_ENV = {"heartbeat_timeout_seconds": ("MMJAX_HEARTBEAT_TIMEOUT", 100),
               "initialization_timeout": ("MMJAX_INIT_TIMEOUT", 300),
               "shutdown_timeout_seconds": ("MMJAX_SHUTDOWN_TIMEOUT", 300)}
MESSAGE_BYTES = 1024


class PeerFailedError(RuntimeError):
    """Another process stopped the run (its input raised); the message names the process and its error."""


def timeouts() -> dict[str, int]:
    return {arg: int(os.environ.get(env, default)) for arg, (env, default) in TIMEOUT_ENV.items()}


def wanted() -> bool:
    """Whether the environment describes a multi-process job (see the module docstring)."""
    env = os.environ
    if env.get("SLURM_NTASKS") == "1":
        return False
    return env.get("MMJAX_DISTRIBUTED") == "1" or any(
        v in env for v in ("JAX_COORDINATOR_ADDRESS", "SLURM_NTASKS", "TPU_WORKER_HOSTNAMES",
                           "MEGASCALE_COORDINATOR_ADDRESS"))


def initialize() -> None:
    """Starts multi-process JAX when `wanted()`; must run before anything touches a backend."""
    if not wanted() or jax.distributed.is_initialized():
        return
    kwargs: dict[str, Any] = timeouts()
    if "JAX_NUM_PROCESSES" in os.environ:   # explicit (jax itself reads only the coordinator's address)
        kwargs.update(num_processes=int(os.environ["JAX_NUM_PROCESSES"]), process_id=int(os.environ["JAX_PROCESS_ID"]))
    jax.distributed.initialize(**kwargs)
    log.info("JAX process %d of %d (pid %d, host %s), %d local of %d devices", jax.process_index(),
             jax.process_count(), os.getpid(), socket.gethostname(), jax.local_device_count(), jax.device_count())


def _allgather(values: np.ndarray) -> np.ndarray:
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(values))


def source_digest() -> str:
    """A digest of every mmjax source file (path and bytes): the code version a host runs."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    digest = hashlib.sha256()
    for folder, dirs, files in sorted(os.walk(root)):
        dirs.sort()
        for name in sorted(f for f in files if f.endswith(".py")):
            path = os.path.join(folder, name)
            digest.update(os.path.relpath(path, root).encode())
            with open(path, "rb") as f:
                digest.update(f.read())
    return digest.hexdigest()


def check_same_program(config: dict[str, Any]) -> None:
    """Raises ConfigError on every process unless all run the same config and mmjax source (see the module)."""
    if jax.process_count() == 1:
        return
    from mmjax.configlib import ConfigError

    config_digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()
    mine = np.frombuffer(bytes.fromhex(config_digest[:16] + source_digest()[:16]), np.uint8).astype(np.int32)
    everyone = _allgather(mine)
    for what, part in (("config", slice(0, 8)), ("mmjax source code", slice(8, 16))):
        differing = [p for p in range(len(everyone)) if not np.array_equal(everyone[p, part], everyone[0, part])]
        if differing:
            raise ConfigError(f"process(es) {differing} run a different {what} than process 0 (of "
                              f"{len(everyone)}); start every host with the same command and checkout")


def agree(stop: bool, error: BaseException | None) -> bool:
    """Whether every process stops now: True if any asked to stop. If any process's input failed, every process
    raises (the failing one its own error, the others PeerFailedError naming it). One small all-gather."""
    if jax.process_count() == 1:
        if error is not None:
            raise error
        return stop
    flags = _allgather(np.array([stop, error is not None], np.int32))
    failed = np.flatnonzero(flags[:, 1])
    if failed.size:
        text = "" if error is None else f"{type(error).__name__}: {' '.join(str(error).split())}"
        raw = text.encode()[:MESSAGE_BYTES].ljust(MESSAGE_BYTES, b"\0")
        messages = _allgather(np.frombuffer(raw, np.uint8).astype(np.int32))
        if error is not None:
            raise error
        first = int(failed[0])
        message = bytes(messages[first].astype(np.uint8)).rstrip(b"\0").decode(errors="replace")
        raise PeerFailedError(f"process {first} of {len(flags)} stopped the run: {message}")
    return bool(flags[:, 0].any())
