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
from mmjax.train import preflight, slice_fit, tpu_slices
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
        showo.data.train = showo.data.eval = {"t2i": missing, "lm": missing, "mmu": {**missing, "format": "qa"}}
    report = preflight.preflight(showo, "v5e:2x2", fit=True)  # as shipped: one bundle per step, fit to 4 chips
    assert report["fixed"] == ["batch_size=4"] and report["problems"] == []
    check(report)
    assert report["mesh"] == {"data": 4, "fsdp": 1, "tensor": 1} and report["examples_per_shard"] == 1

    out = tmp_path / "llava.json"
    llava = f"configs/llava/tiny.py:data=llava_json,corpus={MISSING}/chat.json,images={MISSING}/images"
    result = run([sys.executable, "-m", "mmjax.train", "--config", llava, "--compile_only",
                  "--topology", "v5e-4", "--out", str(out), "--config.text.tokenizer=sentencepiece",
                  f"--config.text.tokenizer_path={MISSING}/tokenizer.model", "--config.model.lm.vocab_size=300",
                  "--config.model.lm.num_layers=1", "--config.model.vision.depth=2",
                  f"--config.init.workdir={MISSING}/run"])
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


# Every config in configs/ with the args that change its shapes (stages, sizes, resolutions, slice plans). Tracing
# a paper model's parameters takes a few seconds each, so the paper half of the walk is in the slow suite.
SMALL_CONFIGS = ("d3pm/digits.py", "lm/tiny.py", "vit/digits.py", "vq/tiny.py", "vq/photos.py", "llava/tiny.py",
                 "showo/tiny.py", "showo/tiny.py:clip=1")
PAPER_CONFIGS = (
    "lm/phi15_refinedweb.py", "vit/i1k.py", "vq/lfq_imagenet.py", "vq/showo_magvitv2.py", "llava/llava1.py:stage=1",
    "llava/llava1.py:stage=2", "llava/llava15.py:stage=1", "llava/llava15.py:stage=2",
    "llava/llava15.py:stage=2,slice=v5e-16", "llava/llava15.py:stage=2,slice=v5p-64", "llava/llava_next.py:stage=1",
    "llava/llava_next.py:stage=2", "llava/onevision.py:stage=1", "llava/onevision.py:size=7b,stage=2",
    "showo/pretrain.py:stage=1", "showo/pretrain.py:stage=3,res=512", "showo/pretrain.py:stage=1,slice=v5e-16",
    "showo/pretrain.py:stage=2,slice=v5p-64", "showo/instruct.py:stage=1", "showo/instruct.py:stage=2,res=512",
    "showo/instruct.py:stage=2,clip=1")
# The two slices the issue names, one of each other generation, and the largest slices a shipped plan uses.
CHECK_SLICES = ("v5e:2x2", "v5p:2x2x1", "v4:2x2x1", "v6e:2x2", "v5e:4x4", "v5p:2x4x4")


def test_the_walk_covers_every_config_file():
    configs = os.path.join(REPO, "configs")
    files = {f"{d}/{f}" for d in os.listdir(configs) if os.path.isdir(os.path.join(configs, d))
             for f in os.listdir(os.path.join(configs, d)) if f.endswith(".py") and f != "__init__.py"}
    assert files == {name.split(":")[0] for name in SMALL_CONFIGS + PAPER_CONFIGS}


def walk(names: tuple[str, ...], tokenizer: str) -> dict[tuple[str, str], str]:
    """Shape checks only (no compile) of each config on each slice: a verdict, never an exception, and a config
    that does not fit says which field and what would work."""
    verdicts = {}
    for name in names:
        arg = f",tokenizer={tokenizer}" if name.startswith("showo/tiny.py") else ""
        path = os.path.join(REPO, "configs", name) + (arg if ":" in name else arg.replace(",", ":", 1))
        config = configlib.load_config_file(path)
        try:  # traced once per config, checked against every slice
            shapes = slice_fit.model_shapes(config)
        except OSError:
            shapes = None
        for topology in CHECK_SLICES:
            report = preflight.preflight(config, topology, compile=False, shapes=shapes)
            text = preflight.format_report(report)
            assert text.splitlines()[-1].startswith("verdict: "), (name, topology, text)
            if report["verdict"] == "does not fit":
                for line in report["problems"]:
                    assert line.startswith("does not fit the slice: ") and "nearest that work: --config." in line
            verdicts[name, topology] = report["verdict"]
    return verdicts


def test_every_small_config_gets_a_verdict_on_every_slice(tmp_path):
    verdicts = walk(SMALL_CONFIGS, tokenizer_architecture(str(tmp_path / "vq")))
    assert set(verdicts.values()) == {"shapes fit", "does not fit"}
    assert verdicts["showo/tiny.py", "v5e:2x2"] == "does not fit"  # one bundle per step over 4 chips
    assert verdicts["lm/tiny.py", "v5e:2x2"] == "shapes fit"


@pytest.mark.slow
def test_every_paper_config_gets_a_verdict_on_every_slice(tmp_path):
    """Show-o with CLIP-ViT in stage 2 tokenizes its system prompt to size its rows: without the tokenizer file
    its verdict is `cannot check`, naming the file."""
    verdicts = walk(PAPER_CONFIGS, "")
    assert verdicts["showo/instruct.py:stage=2,clip=1", "v5e:2x2"] == "cannot check"
    assert {v for (name, _), v in verdicts.items() if "clip=1" not in name} == {"shapes fit", "does not fit"}
    # every slice plan fits its own slice and not another; the paper meshes' fsdp=8 needs 8 chips
    assert verdicts["showo/pretrain.py:stage=1,slice=v5e-16", "v5e:4x4"] == "shapes fit"
    assert verdicts["llava/llava15.py:stage=2,slice=v5p-64", "v5p:2x4x4"] == "shapes fit"
    assert verdicts["llava/llava15.py:stage=2,slice=v5p-64", "v5e:4x4"] == "does not fit"
    assert verdicts["showo/pretrain.py:stage=1", "v5e:2x2"] == "does not fit"


def test_shape_problems_name_the_field_and_the_nearest_settings():
    """The checks on a small model: batch, mesh product, tensor vs heads / vocab, host span; each fix works."""
    config = configlib.load_config_file(os.path.join(REPO, "configs/lm/tiny.py"))
    shapes = slice_fit.model_shapes(config)
    sizes = slice_fit.tensor_dims(shapes, tpu_slices_rules(config))
    devices = preflight.topology_devices("v5e:4x4")  # 4 hosts of 4 chips
    assert slice_fit.host_chips(devices) == 4

    def problems(**overrides):
        with config.unlocked():
            configlib.apply_overrides(config, [f"{k.replace('__', '.')}={v}" for k, v in overrides.items()])
        return slice_fit.check(config, shapes, devices)

    found = problems(batch_size=6, mesh__data=-1, mesh__fsdp=1, mesh__tensor=1)
    assert [p.field for p in found] == ["batch_size"]
    assert "6 examples per step do not split over the 16 batch shards" in found[0].line()
    assert str(found[0].fixes[0]) == "--config.batch_size=16 (global batch 16 per update, was 6)"
    with config.unlocked():
        config.optim.grad_accum = 16  # 96 per update: 16 x 6 keeps it
    assert str(problems()[0].fixes[0]) == "--config.batch_size=16 --config.optim.grad_accum=6"
    found = problems(batch_size=64, optim__grad_accum=1, mesh__data=2, mesh__fsdp=4, mesh__tensor=1)
    assert [p.field for p in found] == ["mesh"] and "does not multiply to the slice's 16 chips" in found[0].message
    bad_tensor = next(t for t in (2, 4, 8, 16) if any(size % t for size in sizes.values()))
    found = problems(mesh__data=-1, mesh__fsdp=1, mesh__tensor=bad_tensor)
    assert found[0].field == "mesh.tensor" and f"tensor={bad_tensor} does not divide" in found[0].message
    for fix in found[0].fixes:  # every suggested mesh passes the checks
        with config.unlocked():
            configlib.apply_overrides(config, list(fix.overrides))
        assert slice_fit.check(config, shapes, devices) == []
    found = problems(mesh__data=-1, mesh__fsdp=1, mesh__tensor=8)
    assert found[0].field == "mesh.tensor" and "tensor=8" in found[0].message
    # tensor=4 fits a host's 4 chips in number, but no layout of a 4x4 torus of 2x2 hosts keeps a group on one
    assert not slice_fit.lays_out((2, 2, 4), devices) and slice_fit.lays_out((1, 8, 2), devices)
    meshes = slice_fit.valid_meshes(16, batch_size=None, tensor_sizes={}, per_host=4, devices=devices)
    assert (1, 8, 2) in meshes and not [m for m in meshes if m[2] == 4]


def tpu_slices_rules(config):
    from mmjax.train.sharding import rules_from_config

    return rules_from_config(config.sharding.rules)


def test_the_issue_command_gives_a_verdict_and_fit_applies_the_nearest_settings(tmp_path):
    """configs/showo/tiny.py as shipped (one bundle per step) on v5e:2x2: a verdict naming batch_size, exit 1, no
    traceback; with --fit --shapes_only the nearest fix is applied and the shapes fit (exit 0)."""
    tokenizer = tokenizer_architecture(str(tmp_path / "vq"))
    command = [sys.executable, "-m", "mmjax.train", "--config", "configs/showo/tiny.py",
               f"--config.tokenizer.workdir={tokenizer}", "--compile_only", "--topology", "v5e:2x2"]
    result = run(command)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.stdout.splitlines()[-2:] == [
        "does not fit the slice: batch_size: 1 examples per step do not split over the 4 batch shards (mesh.data 4 "
        "x mesh.fsdp 1); nearest that work: --config.batch_size=4 (global batch 4 per update, was 1)",
        "verdict: does not fit the slice (shape checks; nothing compiled)"]
    result = run([*command, "--fit", "--shapes_only"])
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines()[-2:] == ["applied to fit the slice: --config.batch_size=4",
                                               "verdict: shapes fit the slice (shape checks only: memory not compiled)"]
