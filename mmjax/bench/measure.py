"""Timing, device ceilings and MFU: the measuring half of the benchmarks.

Times are medians over repeated calls after warm-up, synchronised on the outputs (`jax.block_until_ready`), so
compilation and dispatch queues stay out of them. MFU is stated against the datasheet's 989 TFLOP/s (H100/H200
dense bf16, the conventional reference) and against the bf16 matmul ceiling measured in the same process.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

DATASHEET_BF16 = 989e12  # H100 / H200 SXM dense bf16 FLOP/s


def timed(fn: Callable[[], Any], warmup: int = 2, iters: int = 10) -> tuple[float, list[float]]:
    """(median seconds per call, every timed call) after `warmup` untimed calls."""
    for _ in range(warmup):
        jax.block_until_ready(fn())
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return float(np.median(times)), times


def peak_memory_gib() -> float:
    """Peak bytes in use on the first device since the process started (0 where the backend does not say)."""
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use", 0) / 2**30


def matmul_ceiling(n: int = 8192, repeats: int = 10) -> float:
    """bf16 FLOP/s of an n^3 product, `repeats` of them inside one jit so dispatch does not count."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.bfloat16)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.bfloat16)

    @jax.jit
    def products(a, b):
        return jax.lax.fori_loop(0, repeats, lambda i, acc: acc + (a @ b)[0, 0].astype(jnp.float32), 0.0)

    sec, _ = timed(lambda: products(a, b), iters=5)
    return 2 * n**3 * repeats / sec


def hbm_bandwidth(gib: float = 1.0) -> float:
    """Bytes/s of an elementwise pass over `gib` of float32 (bytes read + bytes written)."""
    x = jnp.ones((int(gib * 2**30) // 4,), jnp.float32)
    scale = jax.jit(lambda x: x * 1.0001)
    sec, _ = timed(lambda: scale(x), iters=10)
    return 2 * x.nbytes / sec


def utilisation(flops: float, seconds: float, ceiling: float | None) -> dict[str, float]:
    """TFLOP/s and MFU against the datasheet and (when measured) against the matmul ceiling."""
    rate = flops / seconds
    out = {"tflops": rate / 1e12, "mfu": rate / DATASHEET_BF16}
    if ceiling:
        out["mfu_of_ceiling"] = rate / ceiling
    return out
