"""Shared test helpers: running mmjax entry points in fresh processes (for device counts, kills, signals)."""

from __future__ import annotations

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def subprocess_env(devices: int | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    env["JAX_PLATFORMS"] = "cpu"
    if devices:
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}".strip()
    return env


def train_cmd(config: str, workdir: str, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "mmjax.train", "--config", config, "--workdir", workdir,
            *[f"--config.{o}" for o in overrides]]


def run(cmd: list[str], devices: int | None = None, timeout: int = 600, cwd: str = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=subprocess_env(devices), cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)
