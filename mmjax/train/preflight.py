"""Compile-only pre-flight for Cloud TPU slices: does a config's train step fit the chips' HBM?

    python -m mmjax.train --config configs/showo/pretrain.py:stage=1,slice=v5e-16 --compile_only --topology v5e:4x4

libtpu compiles for any TPU topology on a machine without a TPU (`pip install "jax[tpu]"`): the topology's
abstract chips (`jax.experimental.topologies`) stand in for the slice, the trainer lays its mesh out on them
(`sharding.device_grid`), and init and the train step are lowered for the abstract state and global batch and
compiled for the slice. Nothing is allocated on them and nothing is read: no data, tokenizer or weights file
(tasks give their batch shapes from the config, `Task.example_batch`), so paper configs whose paths exist only on
the training machines are checked anywhere.

Before anything is lowered, the config's shapes are checked against the slice (`mmjax.train.slice_fit`): a batch
that does not split over the batch shards, a mesh that is not the chip count, a `tensor` axis that does not divide
the heads / MLP / vocabulary. Each becomes a "does not fit the slice: FIELD: ..." line with the nearest settings
that work, and the verdict `does not fit` without compiling; `compile=False` stops after these checks (seconds, no
libtpu compile), `fit=True` applies the nearest fix itself and says which.

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

from mmjax import configlib
from mmjax.data.sources import DataError
from mmjax.train import slice_fit, tpu_slices
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


SHAPES_FIT = "shapes fit"  # the verdict of a check without a compile: memory not judged
CANNOT_CHECK = "cannot check"  # the config's shapes depend on a file this machine lacks (e.g. a tokenizer)


def verdict(peak: int | None, hbm: int) -> str:
    if peak is None or peak > hbm:
        return "does not fit"
    return "fits" if peak <= (1 - HEADROOM) * hbm else "tight"


def _compile(lower: Any) -> tuple[dict[str, Any], str]:
    """(memory report, lowered text) of one program; a compiler refusal becomes {"error": message}: out of
    memory, or any other error the compiler raises for this program on this slice (kept, not a traceback)."""
    lowered = lower()
    text = lowered.as_text()
    try:
        return memory_report(lowered.compile()), text
    except jax.errors.JaxRuntimeError as e:
        return {"error": str(e).strip().splitlines()[0][:500]}, text


def fit_config(config: ml_collections.ConfigDict, shapes: slice_fit.ModelShapes, devices: list[jax.Device],
               num_slices: int = 1) -> list[str]:
    """Applies the nearest fix of each shape problem to `config` (in place) until none is left or one has no fix;
    returns the overrides applied."""
    applied: list[str] = []
    for _ in range(3):  # a mesh fix can expose a batch problem, whose fix keeps the mesh: at most a few rounds
        problems = slice_fit.check(config, shapes, devices, num_slices)
        if not problems or not problems[0].fixes:
            break
        overrides = list(problems[0].fixes[0].overrides)
        with config.unlocked():
            configlib.apply_overrides(config, overrides)
        applied += overrides
    return applied


def preflight(config: ml_collections.ConfigDict, topology: str, *, num_slices: int = 1, compile: bool = True,
              fit: bool = False, shapes: slice_fit.ModelShapes | None = None) -> dict[str, Any]:
    """Checks the shapes of `config` against `num_slices` slices of `topology`, then compiles init and the train
    step for them; returns the report.

    Keys: topology, accelerator_type, num_slices, chips, hbm_bytes_per_chip, params, problems (the shape checks'
    lines), fixed (overrides `fit` applied), verdict; when the shapes fit, also mesh, batch_size (per micro-step),
    grad_accum, examples_per_update, examples_per_shard; when compiled, init / step (memory reports or
    {"error": ...}), splash_kernels (Pallas kernels in the lowered step), peak_bytes, peak_fraction,
    compile_seconds. `shapes` (from `slice_fit.model_shapes(config)`) saves tracing the model again.
    """
    from mmjax.train.trainer import Trainer

    spec = tpu_slices.parse_slice(topology)
    devices = topology_devices(spec.topology, num_slices)
    start = time.perf_counter()
    report: dict[str, Any] = {
        "topology": spec.topology, "accelerator_type": spec.accelerator_type, "num_slices": num_slices,
        "chips": len(devices), "hbm_bytes_per_chip": spec.hbm_bytes, "params": None, "fixed": []}
    try:
        shapes = shapes or slice_fit.model_shapes(config)
    except (OSError, DataError) as e:  # e.g. a prompt whose token count sets a row length needs the tokenizer
        return {**report, "verdict": CANNOT_CHECK, "problems": [
            f"cannot check the slice: the config's shapes need a file this machine lacks ({e}); point that field "
            "at a local copy"]}
    report["fixed"] = fit_config(config, shapes, devices, num_slices) if fit else []
    problems = [p.line() for p in slice_fit.check(config, shapes, devices, num_slices)]
    report.update(params=shapes.num_params, problems=problems)
    if problems or not compile:
        return {**report, "verdict": "does not fit" if problems else SHAPES_FIT}
    trainer = Trainer(config, None, devices=devices)
    trainer.build()
    accum = int(config.optim.get("grad_accum", 1))
    batch_shards = trainer.mesh.shape["data"] * trainer.mesh.shape["fsdp"]
    report.update(mesh=dict(trainer.mesh.shape), batch_size=int(config.batch_size), grad_accum=accum,
                  examples_per_update=int(config.batch_size) * accum,
                  examples_per_shard=config.batch_size / batch_shards, params=trainer.num_params)
    report["init"], _ = _compile(trainer.lower_init)
    report["step"], step_text = _compile(trainer.lower_step)
    report["splash_kernels"] = step_text.count(SPLASH_MARKER)
    peaks = [r.get("peak") for r in (report["init"], report["step"])]
    peak = None if None in peaks else max(peaks)
    report.update(peak_bytes=peak, peak_fraction=None if peak is None else peak / spec.hbm_bytes,
                  verdict=verdict(peak, spec.hbm_bytes), compile_seconds=round(time.perf_counter() - start, 1))
    return report


def format_report(report: dict[str, Any]) -> str:
    """A human-readable summary: the shape problems, or per-chip GiB of each program; the verdict last."""
    gib = lambda b: f"{b / GIB:8.2f}"
    slices = f" x {report['num_slices']} slices" if report["num_slices"] > 1 else ""
    params = "" if report["params"] is None else f", {report['params']:,} params"
    head = (f"pre-flight {report['topology']} ({report['accelerator_type']}{slices}: {report['chips']} chips x "
            f"{report['hbm_bytes_per_chip'] / GIB:.0f} GiB HBM){params}")
    applied = " ".join(f"--config.{o}" for o in report["fixed"])
    fixed = [f"applied to fit the slice: {applied}"] if applied else []
    if "step" not in report:
        last = {"does not fit": "verdict: does not fit the slice (shape checks; nothing compiled)",
                SHAPES_FIT: "verdict: shapes fit the slice (shape checks only: memory not compiled)",
                CANNOT_CHECK: "verdict: cannot check the slice (a file the shapes depend on is missing)"}
        last = last[report["verdict"]]
        return "\n".join([head, *fixed, *report["problems"], last])
    mesh = " ".join(f"{k}={v}" for k, v in report["mesh"].items())
    lines = [f"{head}, mesh {mesh}", *fixed,
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

