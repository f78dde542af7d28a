"""Running mmjax commands as several local JAX processes (mmjax.launch) or as one, and reading their runs back."""

from __future__ import annotations

import glob
import json
import os
import re
import subprocess
import sys
import time

from tests.helpers import REPO, subprocess_env

DIGITS = os.path.join(REPO, "configs/vit/digits.py")
# Short bounds for the hosts' waits on each other, so a lost host ends a test run in seconds (docs/multihost.md).
FAST_TIMEOUTS = {"MMJAX_HEARTBEAT_TIMEOUT": "10", "MMJAX_SHUTDOWN_TIMEOUT": "30", "MMJAX_INIT_TIMEOUT": "120"}


def env(devices: int | None = None, **extra: str) -> dict[str, str]:
    e = subprocess_env(devices)
    e.update(FAST_TIMEOUTS)
    e.update(extra)
    return e


def launch_cmd(processes: int, devices: int, *command: str) -> list[str]:
    return [sys.executable, "-m", "mmjax.launch", "--processes", str(processes), "--devices_per_process",
            str(devices), "--", *command]


def train_args(config: str, workdir: str, *overrides: str) -> list[str]:
    return ["train", "--config", config, "--workdir", workdir, *[f"--config.{o}" for o in overrides]]


def start(cmd: list[str], log_path: str, **extra_env: str) -> subprocess.Popen:
    """Starts `cmd` with its output in `log_path` (the launcher's lines carry each process's index)."""
    with open(log_path, "w") as log:   # the child keeps its own copy of the descriptor
        return subprocess.Popen(cmd, env=env(**extra_env), cwd=REPO, stdout=log, stderr=subprocess.STDOUT, text=True)


def run(cmd: list[str], log_path: str, timeout: float = 900, devices: int | None = None,
        **extra_env: str) -> int:
    with open(log_path, "w") as log:
        return subprocess.run(cmd, env=env(devices, **extra_env), cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                              timeout=timeout).returncode


def single_process(*args: str) -> list[str]:
    """`python -m mmjax.<args[0]> args[1:]` in one process (the launcher's command form)."""
    return [sys.executable, "-m", f"mmjax.{args[0]}", *args[1:]]


def read(path: str) -> str:
    with open(path) as f:
        return f.read()


def pids(log_path: str, processes: int, timeout: float = 600) -> dict[int, int]:
    """The pid of each launched process, from its start-up line (mmjax.train.multihost)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = {int(i): int(p) for i, p in re.findall(r"JAX process (\d+) of \d+ \(pid (\d+)", read(log_path))}
        if len(found) == processes:
            return found
        time.sleep(0.1)
    raise TimeoutError(f"the processes did not start; log:\n{read(log_path)[-3000:]}")


def wait_for(pattern: str, timeout: float = 900, proc: subprocess.Popen | None = None) -> str:
    """The first path matching the glob `pattern`, waiting for it to appear."""
    deadline = time.time() + timeout
    while time.time() < deadline and (proc is None or proc.poll() is None):
        found = glob.glob(pattern)
        if found:
            return found[0]
        time.sleep(0.01)
    raise TimeoutError(f"{pattern} never appeared")


def exit_statuses(log_path: str) -> dict[int, int]:
    """Each process's exit status as the launcher reported it."""
    return {int(i): int(s) for i, s in re.findall(r"\[launch\] process (\d+) exited with status (\d+)",
                                                  read(log_path))}


def records(workdir: str) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def train_losses(workdir: str) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in records(workdir) if r["split"] == "train"}


def final_eval(workdir: str) -> dict:
    finals = [r for r in records(workdir) if r.get("final")]
    assert len(finals) == 1, finals
    return {k: v for k, v in finals[0].items()
            if not k.startswith("goodput") and isinstance(v, int | float) and not isinstance(v, bool)}
