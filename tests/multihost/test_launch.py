"""mmjax.launch without JAX: the per-process environment, the command form, output prefixes, forwarded signals
and the combined exit status (the multi-process runs themselves are in the other files of this folder)."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from mmjax import cli, launch
from tests.helpers import REPO, subprocess_env

# Each child prints its process id and waits; on SIGTERM process 0 exits 75 (preempted), process 1 exits 3.
CHILD = """
import os, signal, sys, time
index = int(os.environ["JAX_PROCESS_ID"])
signal.signal(signal.SIGTERM, lambda *_: sys.exit(75 if index == 0 else 3))
print(f"process {index} of {os.environ['JAX_NUM_PROCESSES']} at {os.environ['JAX_COORDINATOR_ADDRESS']}", flush=True)
time.sleep(120)
"""


def test_each_process_gets_the_standard_environment():
    env = launch.process_env(1, 4, 1234, devices_per_process=2, base={"XLA_FLAGS": "--xla_foo=1"})
    assert env["JAX_COORDINATOR_ADDRESS"] == "localhost:1234"
    assert (env["JAX_NUM_PROCESSES"], env["JAX_PROCESS_ID"]) == ("4", "1")
    assert env["XLA_FLAGS"] == "--xla_foo=1 --xla_force_host_platform_device_count=2"
    assert env["JAX_CPU_COLLECTIVES_IMPLEMENTATION"] == "gloo" and env["JAX_PLATFORMS"] == "cpu"
    gpu = launch.process_env(3, 4, 1234, gpus=True, base={})
    assert gpu["CUDA_VISIBLE_DEVICES"] == "3" and "JAX_PLATFORMS" not in gpu


def test_commands_and_exit_statuses():
    assert launch.module_command(["train", "--config", "x"])[1:] == ["-m", "mmjax.train", "--config", "x"]
    assert launch.module_command(["mmjax.eval"])[1:] == ["-m", "mmjax.eval"]
    with pytest.raises(ValueError, match="unknown command 'rm'"):
        launch.module_command(["rm", "-rf"])
    assert launch.worst_status([0, 0]) == cli.EXIT_OK
    assert launch.worst_status([0, 75]) == cli.EXIT_PREEMPTED
    assert launch.worst_status([75, 1, 2]) == 2
    assert launch.worst_status([75, -signal.SIGKILL]) == 128 + signal.SIGKILL


def test_output_is_prefixed_signals_are_forwarded_and_the_worst_status_wins(tmp_path):
    script = (f"import sys; from mmjax.launch import launch; "
              f"sys.exit(launch([sys.executable, '-c', {CHILD!r}], 2))")
    proc = subprocess.Popen([sys.executable, "-c", script], env=subprocess_env(), cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = []
    while len(seen) < 2:
        line = proc.stdout.readline()
        assert line, "the launcher ended early"
        seen.append(line)
    proc.send_signal(signal.SIGTERM)
    out = "".join(seen) + proc.stdout.read()
    assert proc.wait(timeout=60) == 3, out
    lines = out.splitlines()
    assert {line.split(" at ")[0] for line in lines[:2]} == {"[0] process 0 of 2", "[1] process 1 of 2"}
    assert "[launch] process 0 exited with status 75" in lines and "[launch] process 1 exited with status 3" in lines


def test_the_cli_refuses_a_missing_command():
    done = subprocess.run([sys.executable, "-m", "mmjax.launch", "--processes", "2"], env=subprocess_env(),
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == cli.EXIT_USAGE
    assert done.stderr.startswith("error: no command after `--`")
