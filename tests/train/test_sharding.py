import pytest

from mmjax.train import sharding


def test_mesh_shape_resolves_one_free_axis():
    assert sharding.mesh_shape({"data": -1, "fsdp": 4, "tensor": 1}, 8) == (2, 4, 1)
    assert sharding.mesh_shape({"data": 1, "fsdp": -1, "tensor": 2}, 8) == (1, 4, 2)
    with pytest.raises(ValueError, match="at most one"):
        sharding.mesh_shape({"data": -1, "fsdp": -1}, 8)
    with pytest.raises(ValueError, match="needs 6 devices"):
        sharding.mesh_shape({"data": 3, "fsdp": 2, "tensor": 1}, 8)


def test_rules_from_config_default_and_custom():
    assert sharding.rules_from_config(()) == sharding.DEFAULT_RULES
    rules = sharding.rules_from_config([["embed", None], ["act_batch", ["data", "fsdp"]]])
    assert rules == (("embed", None), ("act_batch", ("data", "fsdp")))


def test_non_divisible_dimensions_are_replicated():
    import flax.linen as nn
    import jax
    import numpy as np
    from jax.sharding import Mesh

    mesh = Mesh(np.array(jax.devices()[:1]).reshape(1, 1, 1), sharding.MESH_AXES)
    box = nn.LogicallyPartitioned(jax.ShapeDtypeStruct((13, 8), np.float32), ("conv_out", "mlp"))
    out = sharding.logical_shardings({"w": box}, mesh, sharding.DEFAULT_RULES)
    assert out["w"].spec == jax.sharding.PartitionSpec("fsdp", "tensor")  # size-1 axes divide anything
    mesh_4x2 = type("MeshShape", (), {"shape": {"data": 1, "fsdp": 4, "tensor": 2}})()  # only .shape is read
    spec = sharding._divisible(jax.sharding.PartitionSpec("fsdp", "tensor"), (13, 8), mesh_4x2)
    assert spec == jax.sharding.PartitionSpec(None, "tensor")


def test_emulated_cpu_slices_join_along_data(monkeypatch):
    """`MMJAX_CPU_SLICES` (mmjax.launch --slices) gives CPU processes slices; the grid puts them along `data`."""
    import types

    import jax

    devices = [types.SimpleNamespace(platform="cpu", process_index=p, id=p) for p in (3, 1, 0, 2)]
    monkeypatch.setattr(jax, "process_count", lambda: 4)
    monkeypatch.setenv("MMJAX_CPU_SLICES", "2")
    assert sharding.device_slices(devices) == [1, 0, 0, 1]
    grid = sharding.device_grid((2, 2, 1), devices)
    assert [[d.process_index for d in row[:, 0]] for row in grid] == [[0, 1], [2, 3]]   # data row = slice
    with pytest.raises(ValueError, match=r"2 slices are joined along `data`, so mesh\.data must be a multiple of 2"):
        sharding.device_grid((1, 4, 1), devices)
