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
