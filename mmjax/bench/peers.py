"""Runs a PyTorch peer (`scripts/peers/run.py`) in a subprocess and reads its `PEER_RESULT` line.

A subprocess keeps torch and jax from sharing one process (and one GPU memory pool): the peer starts after the
mmjax workload has finished and released its arrays. torch is never imported by mmjax itself.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

RUNNER = Path(__file__).resolve().parents[2] / "scripts" / "peers" / "run.py"


def run_peer(workload: str, spec: dict[str, Any], *, device: str = "cuda", compile: bool = True, warmup: int = 3,
             iters: int = 10, timeout_s: float = 600, python: str | None = None) -> dict[str, Any]:
    """The peer's result record, or {"error": ...} when it fails or times out (the benchmark carries on)."""
    if not RUNNER.exists():
        return {"error": f"{RUNNER} not found (peers run from a source checkout)"}
    cmd = [python or sys.executable, str(RUNNER), workload, "--spec", json.dumps(spec), "--device", device,
           "--compile", str(int(compile)), "--warmup", str(warmup), "--iters", str(iters)]
    env = {**os.environ, "PYTHONPATH": str(RUNNER.parent)}
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"peer {workload} timed out after {timeout_s:.0f} s"}
    for line in reversed(done.stdout.splitlines()):
        if line.startswith("PEER_RESULT "):
            return json.loads(line[len("PEER_RESULT "):])
    tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
    return {"error": f"peer {workload} exited {done.returncode}: {' | '.join(tail)[-400:]}"}
