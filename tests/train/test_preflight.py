"""The compile-only TPU pre-flight: tiny Show-o and tiny LLaVA compile for a v5e-4 slice (`v5e:2x2`) with splash
attention, on this CPU machine, without reading any data, tokenizer or weights file; the topology-aware mesh;
slice names; the verdict rule; the CLI.

Compiling for TPU needs libtpu (the `test` extras install `jax[tpu]`); without it these tests are skipped.
"""

from __future__ import annotations

import itertools
import json
import os
import sys

import pytest

from mmjax import configlib
from mmjax.train import preflight, tpu_slices
from mmjax.train.sharding import make_mesh
from tests.helpers import REPO, run

pytest.importorskip("libtpu")
GIB = tpu_slices.GIB
MISSING = "/nonexistent/mmjax-preflight"  # every file a config could read points here


def tokenizer_architecture(workdir: str) -> str:
    """A tokenizer run holding only its config.json (the architecture Show-o builds from): no weights."""
    config = configlib.load_config_file(os.path.join(REPO, "configs/vq/tiny.py:tokens=4,bits=6"))
    os.makedirs(workdir)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        json.dump({"task": "vq", "model": configlib.to_dict(config.model), "ema_decay": 0.0}, f)
    return workdir


def check(report: dict, chips: int = 4) -> None:
    assert report["verdict"] == "fits" and report["chips"] == chips
    assert report["splash_kernels"] > 0  # auto picked splash for the TPU compile
    for program in ("init", "step"):
        memory = report[program]
        assert memory["argument"] + memory["output"] > 0 and 0 < memory["peak"] < report["hbm_bytes_per_chip"]
    assert report["step"]["temp"] > 0 and report["peak_bytes"] == max(report["init"]["peak"], report["step"]["peak"])


def test_tiny_showo_and_llava_compile_for_v5e_with_splash(tmp_path):
    """Show-o through `preflight()`, LLaVA through the CLI (JSON report); every data / tokenizer / weights path
    of both configs points at files that do not exist."""
    tokenizer = tokenizer_architecture(str(tmp_path / "vq"))
    showo = configlib.load_config_file(os.path.join(REPO, "configs/showo/tiny.py") +
                                       f":width=64,layers=1,tokenizer={tokenizer}")
    missing = {"source": {"name": "arrayrecord", "pattern": f"{MISSING}/*.array_record"}, "text_field": "caption"}
    with showo.unlocked():
        showo.batch_size = 4
        showo.data.train = showo.data.eval = {"t2i": missing, "lm": missing, "mmu": {**missing, "format": "qa"}}
    report = preflight.preflight(showo, "v5e:2x2")
    check(report)
    assert report["mesh"] == {"data": 4, "fsdp": 1, "tensor": 1} and report["examples_per_shard"] == 1

    out = tmp_path / "llava.json"
    result = run([sys.executable, "-m", "mmjax.train", "--config", "configs/llava/tiny.py", "--compile_only",
                  "--topology", "v5e-4", "--out", str(out), "--config.text.tokenizer=sentencepiece",
                  f"--config.text.tokenizer_path={MISSING}/tokenizer.model", "--config.model.lm.vocab_size=300",
                  "--config.model.lm.num_layers=1", "--config.model.vision.depth=2",
                  f"--config.init.workdir={MISSING}/run", "--config.data.train.name=llava_json"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "verdict: fits" in result.stdout
    check(json.loads(out.read_text()))


def test_topology_mesh_follows_the_physical_layout():
    devices = preflight.topology_devices("v5e:4x4")  # 4 hosts of 2x2 chips
    mesh = make_mesh({"data": 1, "fsdp": 8, "tensor": 2}, devices)
    # neighbours along `tensor` are neighbouring chips of the torus, on one host
    for pair in mesh.devices[0]:
        for a, b in itertools.pairwise(pair):
            assert sum(abs(x - y) for x, y in zip(a.coords, b.coords)) == 1 and a.process_index == b.process_index
    with pytest.raises(ValueError, match="spans several hosts"):  # each host would feed the shard its own rows
        make_mesh({"data": 1, "fsdp": 4, "tensor": 4}, devices)
    two_slices = preflight.topology_devices("v5e:2x2", num_slices=2)
    mesh = make_mesh({"data": 2, "fsdp": 4, "tensor": 1}, two_slices)
    assert [{d.slice_index for d in mesh.devices[i].flat} for i in range(2)] == [{0}, {1}]  # data spans the slices
    with pytest.raises(ValueError, match="multiple of 2"):
        make_mesh({"data": 1, "fsdp": 8, "tensor": 1}, two_slices)


def test_slices_and_verdicts():
    assert tpu_slices.parse_slice("v5e-16") == tpu_slices.Slice("v5e", "v5e:4x4", 16)
    v5p = tpu_slices.parse_slice("v5p:2x4x4")
    assert (v5p.chips, v5p.accelerator_type, v5p.hbm_bytes) == (32, "v5p-64", 95 * GIB)
    assert len(preflight.topology_devices("v4-16")) == 8  # one device per chip (megacore)
    with pytest.raises(ValueError, match="unknown TPU slice"):
        tpu_slices.parse_slice("v9:2x2")
    hbm = 16 * GIB
    assert preflight.verdict(int(0.9 * hbm), hbm) == "fits"
    assert preflight.verdict(int(0.95 * hbm), hbm) == "tight"
    assert preflight.verdict(hbm + 1, hbm) == preflight.verdict(None, hbm) == "does not fit"


def test_slice_plans_keep_the_global_batch():
    for name in ("v5e-16", "v5p-64"):
        showo = configlib.load_config_file(os.path.join(REPO, f"configs/showo/pretrain.py:stage=1,slice={name}"))
        assert showo.batch_size * showo.optim.grad_accum == 48  # bundles of 29 rows: 1392 rows per update
        chips = tpu_slices.parse_slice(name).chips
        assert showo.mesh.data * showo.mesh.fsdp * showo.mesh.tensor == chips
        assert showo.total_steps == 500_000 * showo.optim.grad_accum
        llava = configlib.load_config_file(os.path.join(REPO, f"configs/llava/llava15.py:stage=2,slice={name}"))
        assert llava.batch_size * llava.optim.grad_accum == 128
        assert llava.mesh.data * llava.mesh.fsdp * llava.mesh.tensor == chips
    with pytest.raises(configlib.ConfigError, match="v5e-16"):
        configlib.load_config_file(os.path.join(REPO, "configs/showo/pretrain.py:stage=1,slice=v4-8"))


def test_launch_environment_starts_multi_host_jax(monkeypatch):
    """worker_loop.sh's MMJAX_DISTRIBUTED=1 makes the trainer call jax.distributed.initialize() (which reads the
    TPU VM's metadata); a single SLURM task does not."""
    import jax

    from mmjax.train import sharding

    calls = []
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(jax.distributed, "initialize", lambda **timeouts: calls.append("init"))
    for name in ("JAX_COORDINATOR_ADDRESS", "SLURM_NTASKS", "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MMJAX_DISTRIBUTED", "1")
    sharding.maybe_initialize_distributed()
    assert calls == ["init"]
    monkeypatch.setenv("SLURM_NTASKS", "1")
    sharding.maybe_initialize_distributed()
    assert calls == ["init"]
    with open(os.path.join(REPO, "scripts/tpu/worker_loop.sh")) as f:
        assert "export MMJAX_DISTRIBUTED=1" in f.read()
