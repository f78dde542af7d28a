"""XLA flags that mmjax's commands set on the accelerator, each one kept because a measurement justified it.

`--xla_gpu_enable_triton_gemm=false` sends matmuls to cuBLAS instead of XLA's Triton GEMM emitter. On one H200
(jax 0.11.2, 2026-11-29, docs/benchmarks.md) it raised the bf16 8192^3 matmul from 685 to 763 TFLOP/s, the
8192 x 11223 x 2048 weight-gradient product of a Show-o step from 208 to 468, and the Show-o 1.3B train step by 2%.
The flags are harmless on CPU and TPU. A flag the user already put in XLA_FLAGS wins; MMJAX_XLA_FLAGS=0 disables
all of this. XLA reads XLA_FLAGS when the backend starts, so this must run before the first computation.
"""

from __future__ import annotations

import os

GPU_FLAGS: tuple[str, ...] = ("--xla_gpu_enable_triton_gemm=false",)


def xla_flags() -> str:
    return os.environ.get("XLA_FLAGS", "")


def configure_xla_flags(flags: tuple[str, ...] = GPU_FLAGS) -> str:
    """Adds `flags` to XLA_FLAGS (those whose name the user has not set); returns the resulting XLA_FLAGS."""
    if os.environ.get("MMJAX_XLA_FLAGS", "1") == "0":
        return xla_flags()
    current = xla_flags().split()
    names = {f.split("=")[0] for f in current}
    added = [f for f in flags if f.split("=")[0] not in names]
    os.environ["XLA_FLAGS"] = " ".join(current + added)
    return xla_flags()
