"""`--plan SLICE`: the fastest way to run a config on a TPU slice, predicted by the cost model, verified by compiling.

    python -m mmjax.train --config configs/showo/pretrain.py:stage=1 --plan v5e-64

Enumerates every mesh (data, fsdp, tensor) the config's shapes allow on the slice (`slice_fit.valid_meshes`), every
micro-batch whose gradient accumulation keeps the config's global batch per update (examples per micro-step a
multiple of the batch shards), and the remat policies `none`, `dots_with_no_batch_dims` and `full` (each traced
once on the CPU, `cost_model.profile`); drops plans the model puts above 90% of HBM, ranks the rest by predicted
seconds per update, compiles the best `k` with the pre-flight, and prints a table and the winner as one override
line. Scanned or unrolled layers are the config's own: the model predicts the same step for both, and the compile
measures the memory of the one the config ships.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import ml_collections

from mmjax import configlib
from mmjax.train import cost_model, preflight, sharding, slice_fit, tpu_slices
from mmjax.train.tpu_slices import GIB

POLICIES = ("none", "dots_with_no_batch_dims", "full")
DAY = 86_400.0


@dataclasses.dataclass(frozen=True)
class Plan:
    mesh: slice_fit.Mesh3
    batch_size: int      # examples per micro-step (global)
    grad_accum: int
    remat_policy: str
    estimate: cost_model.Estimate

    def overrides(self, config: ml_collections.ConfigDict) -> list[str]:
        """The plan as `--config.` overrides (without the prefix): mesh, batch, accumulation, remat, and the step
        counts scaled by the accumulation (the trainer counts micro-steps; the schedule stays in updates)."""
        scale = self.grad_accum / int(config.optim.get("grad_accum", 1))
        out = [f"mesh.{k}={v}" for k, v in zip(("data", "fsdp", "tensor"), self.mesh)]
        out += [f"batch_size={self.batch_size}", f"optim.grad_accum={self.grad_accum}"]
        out += [f"{field}={self.remat_policy}" for field in cost_model.remat_fields(config)]
        out += [f"{field}={round(int(config[field]) * scale)}" for field in ("total_steps", "checkpoint_every",
                                                                          "eval_every")]
        return out


def with_policy(config: ml_collections.ConfigDict, policy: str) -> ml_collections.ConfigDict:
    """A copy of `config` with every remat_policy field set to `policy`."""
    out = copy.deepcopy(config)
    with out.unlocked():
        configlib.apply_overrides(out, [f"{field}={policy}" for field in cost_model.remat_fields(out)])
    return out


def enumerate_plans(config: ml_collections.ConfigDict, topology: str, profiles: dict[str, cost_model.Profile],
                    tensor_sizes: dict[str, int], per_host: int, *, num_slices: int = 1,
                    headroom: float = preflight.HEADROOM, devices: list | None = None) -> list[Plan]:
    """Every plan that keeps the global batch and that the model fits in HBM with `headroom`, fastest first."""
    spec = tpu_slices.parse_slice(topology)
    chip = cost_model.CHIPS[spec.generation]
    chips = spec.chips * num_slices
    global_batch = int(config.batch_size) * int(config.optim.get("grad_accum", 1))
    plans = []
    for mesh in slice_fit.valid_meshes(chips, batch_size=None, tensor_sizes=tensor_sizes, per_host=per_host,
                                       num_slices=num_slices, devices=devices):
        shards = mesh[0] * mesh[1]
        for batch in range(shards, global_batch + 1, shards):
            if global_batch % batch:
                continue
            for policy, prof in profiles.items():
                est = cost_model.estimate(prof, chip, mesh, examples=batch, grad_accum=global_batch // batch,
                                          config=config, num_slices=num_slices)
                if est.peak_bytes <= (1 - headroom) * spec.hbm_bytes:
                    plans.append(Plan(mesh, batch, global_batch // batch, policy, est))
    return sorted(plans, key=lambda p: (p.estimate.update_seconds, p.estimate.peak_bytes))


def plan(config: ml_collections.ConfigDict, topology: str, *, k: int = 3, num_slices: int = 1,
         policies: tuple[str, ...] = POLICIES, verify: bool = True) -> dict[str, Any]:
    """The ranked plans for `config` on the slice, the best `k` compiled with the pre-flight (when `verify`)."""
    spec = tpu_slices.parse_slice(topology)
    devices = preflight.topology_devices(spec.topology, num_slices)
    shapes = slice_fit.model_shapes(config)
    sizes = slice_fit.tensor_dims(shapes, sharding.rules_from_config(config.sharding.rules))
    fields = cost_model.remat_fields(config)
    profiles = {p: cost_model.profile(with_policy(config, p)) for p in (policies if fields else ("none",))}
    ranked = enumerate_plans(config, topology, profiles, sizes, slice_fit.host_chips(devices), num_slices=num_slices,
                             devices=devices)
    rows = []
    for i, candidate in enumerate(ranked[:max(k, 3)]):  # at least three rows; the first k compiled
        compiled = None
        if verify and i < k:
            trial = with_policy(config, candidate.remat_policy)
            with trial.unlocked():
                configlib.apply_overrides(trial, candidate.overrides(config))
            compiled = preflight.preflight(trial, topology, num_slices=num_slices, shapes=shapes)
        rows.append((candidate, compiled))
    updates = int(config.total_steps) / int(config.optim.get("grad_accum", 1))
    return {"topology": spec.topology, "chips": spec.chips * num_slices, "hbm_bytes_per_chip": spec.hbm_bytes,
            "candidates": len(ranked), "rows": rows, "updates": updates, "config": config}


def format_plan(result: dict[str, Any]) -> str:
    """The table of the best plans and the winner (the fastest whose compile fits, else the fastest) as one line."""
    chips, updates = result["chips"], result["updates"]
    head = (f"{'#':>2} {'mesh d,f,t':>10} {'batch x accum':>13} {'remat':>24} {'pred peak':>9} {'compiled':>9} "
            f"{'pred step':>9} {'ex/s/chip':>9} {'days':>7} {'chip-hours':>10}")
    lines = [f"plan {result['topology']}: {chips} chips x {result['hbm_bytes_per_chip'] / GIB:.0f} GiB, "
             f"{result['candidates']} plans fit by the model; the best {len(result['rows'])} (compiled peak in GiB, "
             "'-' where not compiled):", head]
    winner = None
    for i, (p, compiled) in enumerate(result["rows"], 1):
        if compiled is None:
            peak = "-"
        elif compiled.get("peak_bytes") is None:
            peak = compiled["verdict"]
        else:
            peak = f"{compiled['peak_bytes'] / GIB:.2f}"
        ok = compiled is None or compiled["verdict"] in ("fits", "tight")
        winner = winner or (p if ok else None)
        seconds = p.estimate.update_seconds
        days = seconds * updates / DAY
        lines.append(f"{i:>2} {','.join(map(str, p.mesh)):>10} {f'{p.batch_size} x {p.grad_accum}':>13} "
                     f"{p.remat_policy:>24} {p.estimate.peak_bytes / GIB:>9.2f} {peak:>9} {seconds:>8.3f}s "
                     f"{p.batch_size * p.grad_accum / seconds / chips:>9.2f} {days:>7.2f} {days * 24 * chips:>10,.0f}")
    if winner is None:
        return "\n".join([*lines, "no plan fits: no mesh splits the global batch over these chips with a tensor axis "
                          "dividing heads / MLP / vocabulary, or the model puts every split above 90% of HBM"
                          if not result["rows"] else
                          "none of these compiled to fit: try a larger --plan_k or a larger slice"])
    line = " ".join(f"--config.{o}" for o in winner.overrides(result["config"]))
    return "\n".join([*lines, f"best: {line}"])


def main(config: ml_collections.ConfigDict, topology: str, *, k: int, num_slices: int) -> int:
    """`python -m mmjax.train --config ... --plan SLICE [--plan_k K]`: prints the table; exit 1 when nothing fits."""
    text = format_plan(plan(config, topology, k=k, num_slices=num_slices, verify=k > 0))
    print(text)
    return 0 if "\nbest: " in text else 1
