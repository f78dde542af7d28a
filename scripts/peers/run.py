"""Time one PyTorch peer workload and print its `PEER_RESULT {json}` line (the interface scripts/benchmark.py calls).

    python scripts/peers/run.py showo_step --spec '{"rows": {"t2i": 15, "lm": 4, "mmu": 10}}' --device cuda
    python scripts/peers/run.py phi_generate --spec '{"batch": 32}' --device cuda --out phi32.json

The spec is a JSON dict of shapes; fields left out take the workload's defaults (the full-size models, see each
module's DEFAULT_SPEC), unknown fields are rejected. Requires torch and transformers; mmjax itself never imports
this.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

import common
import llava15_step
import llava_ov_step
import phi_generate
import showo_step
import showo_t2i
import torch
import vit_step

WORKLOADS = {m.__name__: m for m in (showo_step, llava_ov_step, llava15_step, vit_step, phi_generate, showo_t2i)}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workload", choices=sorted(WORKLOADS))
    parser.add_argument("--spec", default="{}", help="JSON dict of shapes overriding the workload's defaults")
    parser.add_argument("--device", choices=["cuda", "cpu"], required=True)
    parser.add_argument("--compile", type=int, choices=[0, 1], default=1, help="torch.compile (1) or eager (0)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation happens here)")
    parser.add_argument("--iters", type=int, default=10, help="timed steps; the median is reported")
    parser.add_argument("--out", help="also write the PEER_RESULT line to this file")
    args = parser.parse_args(argv)
    if args.warmup < 0 or args.iters < 1:
        parser.error(f"--warmup must be >= 0 and --iters >= 1, got {args.warmup} and {args.iters}")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    try:
        given = json.loads(args.spec)
    except json.JSONDecodeError as error:
        raise SystemExit(f"--spec is not valid JSON ({error}): {args.spec!r}") from error
    if not isinstance(given, dict):
        raise SystemExit(f"--spec must be a JSON object, got {args.spec!r}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device")
    module = WORKLOADS[args.workload]
    spec = common.make_spec(args.workload, module.DEFAULT_SPEC, given)
    bench = common.Bench(device=torch.device(args.device), compile=bool(args.compile), warmup=args.warmup,
                         iters=args.iters)
    record = module.run(spec, bench)
    common.emit(record, args.out)
    return record


if __name__ == "__main__":
    main(sys.argv[1:])
