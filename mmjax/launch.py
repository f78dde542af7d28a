"""`python -m mmjax.launch --processes N [--devices_per_process D | --gpus] -- train --config ... --workdir ...`

Runs one mmjax command as N JAX processes on this machine, the way a pod runs it as one process per host: the
local proving ground for every multi-host code path (docs/multihost.md). The command after `--` is an mmjax entry
point (`train`, `sample`, `eval`, `tokenize_images`, `pretokenize`, or a full module name) and its arguments.

Each process gets the standard environment that `jax.distributed.initialize` reads (`mmjax.train.multihost`):
`JAX_COORDINATOR_ADDRESS=localhost:<free port>`, `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`; the programs read nothing
from the launcher itself, so the same command runs under SLURM or `gcloud ... --worker=all` unchanged.
`--devices_per_process D` makes each process a CPU host of D devices (XLA's host-platform device count, gloo
collectives); with it, `--slices S` makes S emulated TPU slices of consecutive processes, joined along the mesh's
`data` axis as on a multi-slice pod (`mmjax.train.sharding.device_slices`). `--gpus` gives process i the i-th GPU
alone (`CUDA_VISIBLE_DEVICES=i`, one process per GPU: written for GPU hosts, not run on one yet).

Every output line is prefixed with `[i]`, its process index. SIGTERM and SIGINT are forwarded to every process.
The exit status is the worst of the processes': a failure (any status but 0 and 75; a process killed by signal s
counts as 128 + s) before a preemption (75) before success (0).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

from mmjax import cli

COMMANDS = ("train", "sample", "eval", "tokenize_images", "pretokenize")


def free_port() -> int:
    """A TCP port nothing listens on now (the coordinator binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def module_command(args: Sequence[str]) -> list[str]:
    """`train --config X` -> `python -m mmjax.train --config X` (a dotted module name is taken as given)."""
    if not args:
        raise ValueError("no command after `--` (e.g. -- train --config configs/vit/digits.py --workdir runs/x)")
    name, rest = args[0], list(args[1:])
    module = f"mmjax.{name}" if name in COMMANDS else name
    if not module.startswith("mmjax."):
        raise ValueError(f"unknown command {name!r}: one of {', '.join(COMMANDS)} or an mmjax module name")
    return [sys.executable, "-m", module, *rest]


def process_env(index: int, count: int, port: int, *, devices_per_process: int = 0, gpus: bool = False,
                slices: int = 0, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of process `index` of `count` (see the module docstring)."""
    env = dict(os.environ if base is None else base)
    if slices:
        env["MMJAX_CPU_SLICES"] = str(slices)
    env.update(JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES=str(count), JAX_PROCESS_ID=str(index),
               PYTHONUNBUFFERED="1")
    if devices_per_process:
        flags = [f for f in env.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f]
        env["XLA_FLAGS"] = " ".join([*flags, f"--xla_force_host_platform_device_count={devices_per_process}"])
        env["JAX_PLATFORMS"] = "cpu"
        env["JAX_CPU_COLLECTIVES_IMPLEMENTATION"] = "gloo"   # CPU collectives across processes
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = str(index)
    return env


def worst_status(statuses: Sequence[int]) -> int:
    """A failure before a preemption before success; a death by signal s is 128 + s."""
    codes = [128 - s if s < 0 else s for s in statuses]
    failures = [c for c in codes if c not in (cli.EXIT_OK, cli.EXIT_PREEMPTED)]
    if failures:
        return max(failures)
    return cli.EXIT_PREEMPTED if cli.EXIT_PREEMPTED in codes else cli.EXIT_OK


def _relay(index: int, stream, lock: threading.Lock) -> None:
    for line in iter(stream.readline, ""):
        with lock:
            sys.stdout.write(f"[{index}] {line}")
            sys.stdout.flush()
    stream.close()


def launch(command: list[str], processes: int, *, devices_per_process: int = 0, gpus: bool = False,
           slices: int = 0, port: int | None = None) -> int:
    """Runs `command` as `processes` JAX processes and returns the worst exit status (see the module)."""
    port = port or free_port()
    procs = [subprocess.Popen(command, env=process_env(i, processes, port, devices_per_process=devices_per_process,
                                                       gpus=gpus, slices=slices),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
             for i in range(processes)]
    lock = threading.Lock()
    relays = [threading.Thread(target=_relay, args=(i, p.stdout, lock), daemon=True) for i, p in enumerate(procs)]
    for t in relays:
        t.start()

    def forward(signum, _frame):
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    statuses: list[int | None] = [None] * processes
    try:
        while None in statuses:   # each exit is reported when it happens: the first to die names the culprit
            for i, p in enumerate(procs):
                if statuses[i] is None and p.poll() is not None:
                    statuses[i] = p.returncode
                    relays[i].join(timeout=5)
                    with lock:
                        print(f"[launch] process {i} exited with status {worst_status([p.returncode])}",
                              flush=True)
            time.sleep(0.1)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return worst_status(statuses)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ours, command = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    parser = cli.ArgumentParser(prog="python -m mmjax.launch", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=cli.int_at_least(1), required=True, help="JAX processes to start")
    parser.add_argument("--devices_per_process", type=cli.int_at_least(0), default=0,
                        help="CPU devices per process (0: the platform's own devices)")
    parser.add_argument("--gpus", action="store_true", help="one process per GPU: process i sees GPU i only")
    parser.add_argument("--slices", type=cli.int_at_least(0), default=0,
                        help="with --devices_per_process: emulate this many TPU slices of consecutive processes")
    parser.add_argument("--port", type=cli.int_at_least(1), help="coordinator port (default: a free one)")
    args = parser.parse_args(ours)
    if args.gpus and args.devices_per_process:
        parser.error("--gpus and --devices_per_process exclude each other")
    if args.slices and (not args.devices_per_process or args.processes % args.slices):
        parser.error("--slices needs --devices_per_process and a process count that it divides")
    try:
        full = module_command(command)
    except ValueError as e:
        parser.error(str(e))
    return launch(full, args.processes, devices_per_process=args.devices_per_process, gpus=args.gpus,
                  slices=args.slices, port=args.port)


if __name__ == "__main__":
    sys.exit(main())
