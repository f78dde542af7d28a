"""What every PyTorch peer shares: the spec, the device setup, the timer, the train step and the result line.

The peers exist so scripts/benchmark.py can put a number for "the same work in PyTorch" beside each mmjax number.
For that ratio to mean anything the peer must be the best PyTorch offers and be timed the same way: inputs built
and moved to the device before timing, `warmup` untimed steps (compilation happens there), then `iters` timed ones
with the device synchronised, the median reported.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import transformers

# Spec fields every workload accepts, with their defaults.
COMMON_SPEC: dict[str, Any] = {
    "seed": 0,
    "attention": "sdpa",  # transformers' attn_implementation: "sdpa", "flex_attention", "flash_attention_2", "eager"
    "compile_mode": "default",  # torch.compile mode, e.g. "max-autotune-no-cudagraphs"
}
IGNORE = -100  # the label torch's cross-entropy skips


@dataclass(frozen=True)
class Bench:
    """How to run and time one workload (the CLI's flags)."""

    device: torch.device
    compile: bool
    warmup: int
    iters: int


def make_spec(workload: str, defaults: Mapping[str, Any], given: Mapping[str, Any]) -> dict[str, Any]:
    """The workload's defaults overridden by `given`; an unknown field is an error, so a typo is never ignored."""
    known = {**COMMON_SPEC, **defaults}
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise ValueError(f"spec for {workload!r}: unknown field(s) {unknown}; known: {sorted(known)}")
    for key, value in given.items():
        if isinstance(known[key], dict) and not isinstance(value, dict):
            raise ValueError(f"spec for {workload!r}: field {key!r} must be a dict, got {value!r}")
        if isinstance(known[key], dict):
            bad = sorted(set(value) - set(known[key]))
            if bad:
                raise ValueError(f"spec for {workload!r}: unknown key(s) {bad} in {key!r}; known: {sorted(known[key])}")
    return {**known, **{k: ({**known[k], **v} if isinstance(known[k], dict) else v) for k, v in given.items()}}


def setup(bench: Bench, seed: int) -> None:
    """Seed and allow TF32 for the fp32 matmuls that remain (the optimizer's master weights stay fp32)."""
    torch.manual_seed(seed)
    torch.set_float32_matmul_precision("high")
    torch.backends.cudnn.allow_tf32 = True


def autocast(device: torch.device) -> torch.autocast:
    """bf16 mixed precision with fp32 master params, as accelerate/DeepSpeed bf16 train the references."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def adamw(params: Iterable[torch.nn.Parameter], device: torch.device, lr: float,
          weight_decay: float = 0.0) -> torch.optim.AdamW:
    """AdamW (0.9, 0.999, eps 1e-8); the fused single-kernel update on CUDA."""
    return torch.optim.AdamW(list(params), lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=weight_decay,
                             fused=device.type == "cuda")


def maybe_compile(fn: Callable, bench: Bench, mode: str) -> Callable:
    """`fn` under torch.compile (mode "default" is torch's own default) when the run asks for it."""
    if not bench.compile:
        return fn
    return torch.compile(fn, mode=None if mode == "default" else mode)


def time_training(loss_fn: Callable[[], torch.Tensor], optimizer: torch.optim.Optimizer, bench: Bench,
                  compile_mode: str) -> tuple[list[float], list[float]]:
    """Time optimisation steps (forward + loss, backward, AdamW update, grads freed with set_to_none), the loss
    function compiled when asked. Returns the timed steps' milliseconds and every step's loss (warm-up ones
    first): compiled and eager runs of one spec start from the same weights and batch, so their losses must
    agree, which is how a wrong compiled program shows."""
    loss_fn = maybe_compile(loss_fn, bench, compile_mode)
    losses: list[torch.Tensor] = []

    def step() -> None:
        loss = loss_fn()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.detach())  # read after timing: no device sync inside the timed steps

    reset_peak_memory(bench.device)
    times, _ = time_steps(step, bench)
    return times, [float(loss) for loss in losses]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step: Callable[[], Any], bench: Bench) -> tuple[list[float], Any]:
    """Milliseconds of each of `iters` timed calls after `warmup` untimed ones, and the last call's output.

    CUDA events bracket each call and the end event is waited on, so a call's time includes the kernels it
    queued; on CPU every op is synchronous and perf_counter is enough.
    """
    out = None
    for _ in range(bench.warmup):
        out = step()
    synchronize(bench.device)
    times = []
    for _ in range(bench.iters):
        if bench.device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = step()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            out = step()
            times.append((time.perf_counter() - t0) * 1e3)
    return times, out


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def result(workload: str, bench: Bench, times: list[float], *, attention: str, dtype: str,
           spec: Mapping[str, Any], **counts: Any) -> dict[str, Any]:
    """The PEER_RESULT record: timing, memory, versions, settings and the workload's own counts."""
    cuda = bench.device.type == "cuda"
    return {
        "workload": workload,
        "ms": statistics.median(times) if times else float("nan"),
        "ms_all": times,
        "peak_mem_gib": torch.cuda.max_memory_allocated(bench.device) / 2**30 if cuda else 0.0,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "device_name": torch.cuda.get_device_name(bench.device) if cuda else platform.processor() or "cpu",
        "attention": attention,
        "compiled": bench.compile,
        "dtype": dtype,
        "warmup": bench.warmup,
        "iters": bench.iters,
        **counts,
        "spec": dict(spec),
    }


def emit(record: Mapping[str, Any], out: str | None) -> None:
    """Print the one `PEER_RESULT {json}` line the benchmark parses (last line of stdout) and write it to `out`."""
    line = "PEER_RESULT " + json.dumps(record, sort_keys=True)
    if out:
        with open(out, "w") as f:
            f.write(line + "\n")
    print(line, flush=True)
