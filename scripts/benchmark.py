"""Named performance workloads, each timed against its PyTorch peer in the same command.

    python scripts/benchmark.py showo_256 lm_decode --peers --json results.json
    python scripts/benchmark.py --list
    python scripts/benchmark.py vit_l14_336 lm_decode --tiny          # CPU smoke run with tiny shapes
    python scripts/benchmark.py showo_256 llava_ov_0p5b --devices 1,2,4  # weak scaling on one host's GPUs

Every workload is built from the project's configs and trainer step (mmjax/bench/) and runs in a fresh process;
with `--peers` the PyTorch peer (scripts/peers/, torch + transformers, `torch.compile`, best attention) runs
next, at the same shapes, in its own process (so neither holds GPU memory the other needs), and the ratio
`mmjax / peer` (throughput) is printed. One FLOP formula (mmjax/bench/flops.py)
serves both sides; MFU is stated against 989 TFLOP/s (H100/H200 dense bf16) and against the bf16 matmul ceiling
measured at the start of the same run, and decoding against the HBM bandwidth measured there. GPU runs set the
XLA flags of mmjax.platform (documented in docs/benchmarks.md). Benchmarks are not tests: nothing asserts a time.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mmjax import platform  # sets XLA flags before jax initialises

platform.configure_xla_flags()

import jax  # noqa: E402

from mmjax.bench import generation, kernels, scaling, training  # noqa: E402
from mmjax.bench import input as input_workloads  # noqa: E402
from mmjax.bench.measure import hbm_bandwidth, matmul_ceiling  # noqa: E402
from mmjax.bench.peers import run_peer  # noqa: E402

Workload = Callable[..., dict[str, Any]]

# name -> (function, keyword arguments at full size, keyword arguments for --tiny CPU smoke runs)
WORKLOADS: dict[str, tuple[Workload, dict[str, Any], dict[str, Any]]] = {
    "showo_256": (training.showo, dict(res=256, stage=1), dict(res=256, stage=1, overrides=("model.preset=tiny-phi",))),
    "showo_512": (training.showo, dict(res=512, stage=3), {}),
    "llava_ov_0p5b": (training.llava_onevision, {}, dict(config="configs/llava/tiny.py", batch=2, seq=128)),
    "llava15_7b": (training.llava15, {}, {}),
    "vit_l14_336": (training.vit, {}, dict(variant="Ti/16", res=32, batch=4)),
    "vit_l14_336_scanned": (training.vit, dict(overrides=("model.scan=True",)), {}),
    "lm_decode": (generation.lm_decode, dict(batch=1), dict(batch=1, preset="tiny-phi", prompt=8, new=8)),
    "lm_decode_b32": (generation.lm_decode, dict(batch=32), dict(batch=2, preset="tiny-phi", prompt=8, new=8)),
    "t2i_256": (generation.t2i, dict(batch=32), dict(batch=2, res=64, steps=3, preset="tiny-phi")),
    "t2i_256_b1": (generation.t2i, dict(batch=1), {}),
    "mmu_decode": (generation.mmu_decode, dict(batch=1), dict(batch=2, res=64, new=4, preset="tiny-phi")),
    "matmul_shapes": (kernels.matmul_shapes, {}, {}),
    "attention_padding": (kernels.attention_padding, {}, {}),
    "embedding_grad": (kernels.embedding_gradient, {}, {}),
    "head_ce": (kernels.head_cross_entropy, {}, {}),
    **input_workloads.WORKLOADS,  # input_llava_ov, input_showo_raw, input_showo_tokenized: host preprocessing rates
}

# --devices: (config, overrides, per-device batch) of the workloads whose multi-device scaling is measured
SCALING: dict[str, tuple[str, tuple[str, ...], int]] = {
    "showo_256": ("configs/showo/pretrain.py:stage=1,res=256,devices=1", ("tokenizer.pretokenize=True",), 1),
    "llava_ov_0p5b": ("configs/llava/onevision.py:size=0.5b,stage=2", training.ONEVISION_OVERRIDES, 4),
    "llava15_7b": ("configs/llava/llava15.py:stage=2,size=7b", training.LLAVA15_OVERRIDES, 8),
}


def run_scaling(names: list[str], counts: list[int], iters: int) -> dict[str, Any]:
    """Weak scaling over `counts` devices, the FSDP-vs-one-device loss check and a restore onto half the mesh."""
    import tempfile

    out = {}
    for name in names:
        spec, overrides, per_device = SCALING[name]
        rows = scaling.weak_scaling(spec, overrides, per_device, counts, iters)
        n = max(counts)
        check = scaling.equivalence(spec, overrides, n, steps=3, per_device_batch=per_device)
        with tempfile.TemporaryDirectory() as tmp:
            moved = scaling.restore_across_meshes(spec, overrides, n, max(1, n // 2), tmp, per_device)
        out[name] = {"weak_scaling": rows, "equivalence": check, "restore": moved}
        print(f"{name} scaling: {json.dumps(out[name])}", flush=True)
    return out


def _ratio(mine: dict[str, Any], peer: dict[str, Any]) -> float | None:
    """mmjax throughput / peer throughput, from per-call times of the same work."""
    if "error" in peer or not peer.get("ms") or not mine.get("ms"):
        return None
    return peer["ms"] / mine["ms"]


def run_one(name: str, tiny: bool, iters: int, ceiling: float | None, hbm: float | None,
            overrides: tuple[str, ...] = ()) -> dict[str, Any]:
    """One workload in this process: {"result": ..., "peer": (workload, spec)} or the ceilings and device info."""
    if name == "ceilings":
        on_gpu = jax.default_backend() == "gpu"
        return {"devices": [d.device_kind for d in jax.devices()], "jax": jax.__version__,
                "date": time.strftime("%Y-%m-%d"), "xla_flags": platform.xla_flags(), "gpu": on_gpu,
                "matmul_flops": matmul_ceiling() if on_gpu else None,
                "hbm_bytes_s": hbm_bandwidth() if on_gpu else None}
    fn, full, tiny_kwargs = WORKLOADS[name]
    kwargs = dict(tiny_kwargs if tiny else full)
    for key, value in (("ceiling", ceiling), ("hbm", hbm), ("iters", iters)):
        if key in fn.__code__.co_varnames:
            kwargs[key] = value
    if overrides:
        if "overrides" not in fn.__code__.co_varnames:
            return {"result": {"error": f"--set applies to config-built training workloads, not {name}"}}
        kwargs["overrides"] = (*kwargs.get("overrides", ()), *overrides)
    try:
        return fn(**kwargs)
    except Exception as e:  # one failing workload must not lose the others' numbers
        return {"result": {"error": f"{type(e).__name__}: {str(e)[:300]}"}}


def in_subprocess(name: str, args: argparse.Namespace, timeout: float, ceilings: dict[str, Any]) -> dict[str, Any]:
    """`run_one` in a fresh process, so each workload (and each peer after it) finds the whole accelerator: a
    JAX process keeps the memory it reserved until it exits."""
    cmd = [sys.executable, __file__, "--one", name, "--iters", str(args.iters),
           "--ceiling", str(ceilings.get("matmul_flops") or 0), "--hbm", str(ceilings.get("hbm_bytes_s") or 0)]
    if args.tiny:
        cmd.append("--tiny")
    for override in args.set:
        cmd += ["--set", override]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"result": {"error": f"timed out after {timeout:.0f} s"}}
    for line in reversed(done.stdout.splitlines()):
        if line.startswith("BENCH_RESULT "):
            return json.loads(line[len("BENCH_RESULT "):])
    return {"result": {"error": f"exited {done.returncode}: {done.stderr.strip()[-400:]}"}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workloads", nargs="*", help="workload names (see --list)")
    parser.add_argument("--list", action="store_true", help="list the workloads and exit")
    parser.add_argument("--peers", action="store_true", help="also run each workload's PyTorch peer")
    parser.add_argument("--peer_compile", type=int, choices=(0, 1), default=1, help="torch.compile the peers")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes on any device (smoke test)")
    parser.add_argument("--iters", type=int, default=10, help="timed repetitions per workload")
    parser.add_argument("--devices", help="comma-separated device counts for weak scaling (e.g. 1,2,4)")
    parser.add_argument("--json", help="write every result to this file")
    parser.add_argument("--budget", type=float, default=0, help="seconds; later workloads are skipped past it")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="config override for the training workloads, e.g. --set model.scan_layers=True")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one workload in this process
    parser.add_argument("--ceiling", type=float, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--hbm", type=float, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        out = run_one(args.one, args.tiny, args.iters, args.ceiling or None, args.hbm or None, tuple(args.set))
        print("BENCH_RESULT " + json.dumps(out, default=str), flush=True)
        return 0
    began = time.time()
    if args.devices:
        counts = [int(c) for c in args.devices.split(",")]
        unknown = [w for w in args.workloads if w not in SCALING]
        if unknown or max(counts) > jax.device_count():
            parser.error(f"--devices: workloads {sorted(SCALING)} on at most {jax.device_count()} devices")
        results = run_scaling(args.workloads, counts, args.iters)
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1, default=str))
        return 0
    if args.list or not args.workloads:
        for name, (fn, _, tiny) in WORKLOADS.items():
            print(f"{name:22s} {fn.__module__}.{fn.__name__}{'' if tiny else '  (no --tiny variant)'}")
        return 0
    unknown = [w for w in args.workloads if w not in WORKLOADS]
    if unknown:
        parser.error(f"unknown workload(s) {unknown}; known: {sorted(WORKLOADS)}")
    ceilings = in_subprocess("ceilings", args, 300, {})
    results: dict[str, Any] = {"info": ceilings}
    print(json.dumps(ceilings), flush=True)
    for name in args.workloads:
        left = args.budget - (time.time() - began) if args.budget else 3600.0
        if left < 30:
            print(f"{name}: skipped, the --budget is spent", flush=True)
            continue
        if args.tiny and not WORKLOADS[name][2]:
            print(f"{name}: no --tiny variant, skipped", flush=True)
            continue
        start = time.time()
        out = in_subprocess(name, args, left, ceilings)
        record = {"mmjax": out["result"], "seconds": time.time() - start}
        print(f"{name}: {json.dumps(out['result'])}", flush=True)
        if args.peers and "peer" in out and "error" not in out["result"]:
            workload, spec = out["peer"]
            peer = run_peer(workload, spec, device="cuda" if ceilings.get("gpu") else "cpu",
                            compile=bool(args.peer_compile), iters=args.iters,
                            timeout_s=max(30.0, left - (time.time() - start)))
            record["peer"], record["ratio"] = peer, _ratio(out["result"], peer)
            shown = {k: peer.get(k) for k in ("ms", "peak_mem_gib", "compiled", "attention", "error") if k in peer}
            print(f"{name} peer {workload}: {json.dumps(shown)}  mmjax/peer = {record['ratio']}", flush=True)
        results[name] = record
        if args.json:  # written after every workload: a run cut short keeps what it measured
            Path(args.json).write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
