"""Named performance workloads, each timed against its PyTorch peer in the same command.

    python scripts/benchmark.py showo_256 lm_decode --peers --json results.json
    python scripts/benchmark.py --list
    python scripts/benchmark.py vit_l14_336 lm_decode --tiny          # CPU smoke run with tiny shapes
    python scripts/benchmark.py showo_256 llava_ov_0p5b --devices 1,2,4  # weak scaling on one host's GPUs

Every workload is built from the project's configs and trainer step (mmjax/bench/); with `--peers` the PyTorch
peer (scripts/peers/, torch + transformers, `torch.compile`, best attention) runs afterwards at the same shapes
in a subprocess, and the ratio `mmjax / peer` (throughput) is printed. One FLOP formula (mmjax/bench/flops.py)
serves both sides; MFU is stated against 989 TFLOP/s (H100/H200 dense bf16) and against the bf16 matmul ceiling
measured at the start of the same run, and decoding against the HBM bandwidth measured there. GPU runs set the
XLA flags of mmjax.platform (documented in docs/benchmarks.md). Benchmarks are not tests: nothing asserts a time.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mmjax import platform  # sets XLA flags before jax initialises

platform.configure_xla_flags()

import jax  # noqa: E402

from mmjax.bench import generation, scaling, training  # noqa: E402
from mmjax.bench import input as input_workloads  # noqa: E402
from mmjax.bench.measure import hbm_bandwidth, matmul_ceiling  # noqa: E402
from mmjax.bench.peers import run_peer  # noqa: E402

Workload = Callable[..., dict[str, Any]]

# name -> (function, keyword arguments at full size, keyword arguments for --tiny CPU smoke runs)
WORKLOADS: dict[str, tuple[Workload, dict[str, Any], dict[str, Any]]] = {
    "showo_256": (training.showo, dict(res=256, stage=1), dict(res=256, stage=1, overrides=(
        "model.preset=tiny-phi", "model.hidden_size=64", "model.num_heads=2", "model.mlp_dim=128",
        "model.num_layers=2", "tokenizer.model.ch=8", "tokenizer.model.ch_mult=(1,1,1,1,1)")), ),
    "showo_512": (training.showo, dict(res=512, stage=3), {}),
    "llava_ov_0p5b": (training.llava_onevision, {}, dict(config="configs/llava/tiny.py", batch=2, seq=128)),
    "llava15_7b": (training.llava15, {}, {}),
    "vit_l14_336": (training.vit, {}, dict(variant="Ti/16", res=32, batch=4)),
    "lm_decode": (generation.lm_decode, dict(batch=1), dict(batch=1, preset="tiny-phi", prompt=8, new=8)),
    "lm_decode_b32": (generation.lm_decode, dict(batch=32), dict(batch=2, preset="tiny-phi", prompt=8, new=8)),
    "t2i_256": (generation.t2i, dict(batch=32), {}),
    "t2i_256_b1": (generation.t2i, dict(batch=1), {}),
    "mmu_decode": (generation.mmu_decode, dict(batch=1), {}),
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


def _ratio(name: str, mine: dict[str, Any], peer: dict[str, Any]) -> float | None:
    """mmjax throughput / peer throughput, from per-call times of the same work."""
    if "error" in peer or not peer.get("ms") or not mine.get("ms"):
        return None
    return peer["ms"] / mine["ms"]


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
    args = parser.parse_args(argv)
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
            print(f"{name:16s} {fn.__module__}.{fn.__name__}{'' if tiny else '  (no --tiny variant)'}")
        return 0
    unknown = [w for w in args.workloads if w not in WORKLOADS]
    if unknown:
        parser.error(f"unknown workload(s) {unknown}; known: {sorted(WORKLOADS)}")
    info = {"devices": [d.device_kind for d in jax.devices()], "jax": jax.__version__,
            "date": time.strftime("%Y-%m-%d"), "xla_flags": platform.xla_flags()}
    print(json.dumps(info), flush=True)
    results: dict[str, Any] = {"info": info}
    on_gpu = jax.default_backend() == "gpu"
    ceiling = matmul_ceiling() if on_gpu else None
    hbm = hbm_bandwidth() if on_gpu else None
    results["ceilings"] = {"matmul_tflops": ceiling and ceiling / 1e12, "hbm_tb_s": hbm and hbm / 1e12}
    print(f"ceilings: {results['ceilings']}", flush=True)
    for name in args.workloads:
        fn, full, tiny = WORKLOADS[name]
        if args.tiny and not tiny:
            print(f"{name}: no --tiny variant, skipped", flush=True)
            continue
        kwargs = dict(tiny if args.tiny else full)
        if "ceiling" in fn.__code__.co_varnames:
            kwargs["ceiling"] = ceiling
        if "hbm" in fn.__code__.co_varnames:
            kwargs["hbm"] = hbm
        if "iters" in fn.__code__.co_varnames:
            kwargs["iters"] = args.iters
        start = time.time()
        try:
            out = fn(**kwargs)
        except Exception as e:  # one failing workload must not lose the others' numbers
            out = {"result": {"error": f"{type(e).__name__}: {str(e)[:300]}"}}
        record = {"mmjax": out["result"], "seconds": time.time() - start}
        print(f"{name}: {json.dumps(out['result'])}", flush=True)
        if args.peers and "peer" in out and "error" not in out["result"]:
            workload, spec = out["peer"]
            peer = run_peer(workload, spec, device="cuda" if on_gpu else "cpu", compile=bool(args.peer_compile),
                            iters=args.iters)
            record["peer"] = peer
            record["ratio"] = _ratio(name, out["result"], peer)
            shown = {k: peer.get(k) for k in ("ms", "peak_mem_gib", "compiled", "attention", "error") if k in peer}
            print(f"{name} peer {workload}: {json.dumps(shown)}  mmjax/peer = {record['ratio']}", flush=True)
        results[name] = record
        if args.json:  # written after every workload: a run cut short keeps what it measured
            Path(args.json).write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
