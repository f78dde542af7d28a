"""Compile-only pre-flight for Cloud TPU slices: does a config's train step fit the chips' HBM?

    python -m mmjax.train --config configs/showo/pretrain.py:stage=1,slice=v5e-16 --compile_only --topology v5e:4x4

libtpu compiles for any TPU topology on a machine without a TPU (`pip install "jax[tpu]"`): the topology's
abstract chips (`jax.experimental.topologies`) stand in for the slice, the trainer lays its mesh out on them
(`sharding.device_grid`), and init and the train step are lowered for the abstract state and global batch and
compiled for the slice. Nothing is allocated on them and nothing is read: no data, tokenizer or weights file
(tasks give their batch shapes from the config, `Task.example_batch`), so paper configs whose paths exist only on
the training machines are checked anywhere.

The compiler's per-chip accounting (`memory_analysis`) is reported against the chip's HBM: `fits` with at least
10% headroom, `tight` below that (a run may still OOM on fragmentation or a libtpu update), `does not fit` when the
peak exceeds HBM or the compiler refuses the program outright (its RESOURCE_EXHAUSTED message is kept). The peak is
what the compiler planned for this slice; on a slice with room to spare it spends memory it has, so it is not a
minimum.
"""

from __future__ import annotations

import os
import time
from typing import Any

import jax
import ml_collections

from mmjax.train import tpu_slices
from mmjax.train.tpu_slices import GIB

HEADROOM = 0.10           # `fits` needs the peak at most 90% of HBM
SPLASH_MARKER = "tpu_custom_call"  # how a Pallas (Mosaic) kernel such as splash attention appears in lowered code


def topology_devices(topology: str, num_slices: int = 1) -> list[jax.Device]:
    """The abstract chips of `num_slices` slices of `topology` (e.g. "v5e:4x4" or "v5e-16"): compile-only devices."""
    from jax.experimental import topologies

    spec = tpu_slices.parse_slice(topology)
    # Compiling never touches a chip, so several processes may load libtpu at once (pytest workers, a pre-flight
    # beside a test run); without this libtpu refuses the second one on its lockfile.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    try:
        desc = topologies.get_topology_desc(spec.topology, "tpu", num_slices=num_slices,
                                            chip_config_name=tpu_slices.CHIP_CONFIG[spec.generation])
    except (RuntimeError, ValueError) as e:  # no libtpu, or a topology it does not know
        raise RuntimeError(f"cannot describe TPU topology {spec.topology!r} ({e}); compiling for TPU needs libtpu: "
                           f'pip install "jax[tpu]=={jax.__version__}"') from e
    return list(desc.devices)


def memory_report(compiled: jax.stages.Compiled) -> dict[str, int]:
    """Per-chip bytes the compiler planned: arguments, outputs, aliased (donated) bytes, temporaries, peak."""
    stats = compiled.memory_analysis()
    report = {k: int(getattr(stats, f"{k}_size_in_bytes")) for k in ("argument", "output", "alias", "temp",
                                                                       "generated_code")}
    live = report["argument"] + report["output"] - report["alias"] + report["temp"] + report["generated_code"]
    report["peak"] = max(int(getattr(stats, "peak_memory_in_bytes", 0) or 0), live)
    return report


def verdict(peak: int | None, hbm: int) -> str:
    if peak is None or peak > hbm:
        return "does not fit"
    return "fits" if peak <= (1 - HEADROOM) * hbm else "tight"


def _compile(lower: Any) -> tuple[dict[str, Any], str]:
    """(memory report, lowered text) of one program; an out-of-memory refusal becomes {"error": message}."""
    lowered = lower()
    text = lowered.as_text()
    try:
        return memory_report(lowered.compile()), text
    except jax.errors.JaxRuntimeError as e:
        message = str(e)
        if "RESOURCE_EXHAUSTED" not in message and "exceeds" not in message:
            raise
        return {"error": message.strip().splitlines()[0][:500]}, text


def preflight(config: ml_collections.ConfigDict, topology: str, *, num_slices: int = 1) -> dict[str, Any]:
    """Compiles init and the train step of `config` for `num_slices` slices of `topology`; returns the report.

    Keys: topology, accelerator_type, chips, hbm_bytes_per_chip, mesh, batch_size (per micro-step),
    grad_accum, examples_per_update, examples_per_shard, params, init / step (memory reports or {"error": ...}),
    splash_kernels (Pallas kernels in the lowered step), peak_bytes, peak_fraction, verdict, compile_seconds.
    """
    from mmjax.train.trainer import Trainer

    spec = tpu_slices.parse_slice(topology)
    devices = topology_devices(spec.topology, num_slices)
    start = time.perf_counter()
    trainer = Trainer(config, None, devices=devices)
    trainer.build()
    accum = int(config.optim.get("grad_accum", 1))
    batch_shards = trainer.mesh.shape["data"] * trainer.mesh.shape["fsdp"]
    report: dict[str, Any] = {
        "topology": spec.topology, "accelerator_type": spec.accelerator_type, "num_slices": num_slices,
        "chips": len(devices), "hbm_bytes_per_chip": spec.hbm_bytes, "mesh": dict(trainer.mesh.shape),
        "batch_size": int(config.batch_size), "grad_accum": accum,
        "examples_per_update": int(config.batch_size) * accum, "examples_per_shard": config.batch_size / batch_shards,
        "params": trainer.num_params}
    report["init"], _ = _compile(trainer.lower_init)
    report["step"], step_text = _compile(trainer.lower_step)
    report["splash_kernels"] = step_text.count(SPLASH_MARKER)
    peaks = [r.get("peak") for r in (report["init"], report["step"])]
    peak = None if None in peaks else max(peaks)
    report.update(peak_bytes=peak, peak_fraction=None if peak is None else peak / spec.hbm_bytes,
                  verdict=verdict(peak, spec.hbm_bytes), compile_seconds=round(time.perf_counter() - start, 1))
    return report


def format_report(report: dict[str, Any]) -> str:
    """A human-readable summary: per-chip GiB of each program and the verdict."""
    gib = lambda b: f"{b / GIB:8.2f}"
    mesh = " ".join(f"{k}={v}" for k, v in report["mesh"].items())
    slices = f" x {report['num_slices']} slices" if report["num_slices"] > 1 else ""
    lines = [f"pre-flight {report['topology']} ({report['accelerator_type']}{slices}: {report['chips']} chips x "
             f"{report['hbm_bytes_per_chip'] / GIB:.0f} GiB HBM), mesh {mesh}, {report['params']:,} params",
             f"batch {report['batch_size']} x grad_accum {report['grad_accum']} = {report['examples_per_update']} "
             f"per update ({report['examples_per_shard']:g} per batch shard per micro-step); "
             f"splash kernels in the step: {report['splash_kernels']}",
             f"{'GiB per chip':12s} {'argument':>8s} {'output':>8s} {'temp':>8s} {'peak':>8s}"]
    for name in ("init", "step"):
        r = report[name]
        if "error" in r:
            lines.append(f"{name:12s} compiler refused: {r['error']}")
        else:
            lines.append(f"{name:12s} {gib(r['argument'])} {gib(r['output'])} {gib(r['temp'])} {gib(r['peak'])}")
    share = "" if report["peak_bytes"] is None else f": peak {report['peak_fraction']:.0%} of HBM"
    lines.append(f"verdict: {report['verdict']}{share} (compiled in {report['compile_seconds']:.0f} s)")
    return "\n".join(lines)

