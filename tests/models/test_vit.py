import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.models.vit import ViT, clip_vit_l14, decode_variant
from mmjax.train.sharding import strip_boxes


def count(tree):
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(strip_boxes(tree)))


def test_variants_and_param_counts():
    assert decode_variant("B/16") == dict(width=768, depth=12, mlp_dim=3072, num_heads=12, patch_size=(16, 16))
    with pytest.raises(ValueError, match="unknown ViT variant"):
        decode_variant("Q/16")
    init = lambda m: jax.eval_shape(m.init, jax.random.key(0), jnp.ones((1, 224, 224, 3)))
    # timm's ViT-B/16 (class token inside the position table); big_vision's has one position (768) fewer.
    assert count(init(ViT(variant="B/16", num_classes=1000, cls_in_posemb=True))) == 86_567_656
    assert count(init(ViT(variant="B/16", num_classes=1000))) == 86_567_656 - 768
    clip = jax.eval_shape(clip_vit_l14().init, jax.random.key(0), jnp.ones((1, 336, 336, 3)))
    assert count(clip) == 303_507_456  # HF CLIPVisionModel ViT-L/14-336 (577 positions)


def test_scan_equals_unrolled_layers():
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
    unrolled = ViT(variant="Mu/2", num_classes=5, head_zero_init=False)
    scanned = ViT(variant="Mu/2", num_classes=5, head_zero_init=False, scan=True, remat_policy="full")
    params = strip_boxes(unrolled.init(jax.random.key(0), x))["params"]
    enc = params["encoder"]
    stacked = dict(params, encoder={"layers": jax.tree.map(lambda *xs: jnp.stack(xs),
                                                           *[enc[f"block_{i}"] for i in range(4)])})
    a, ea = unrolled.apply({"params": params}, x)
    b, eb = scanned.apply({"params": stacked}, x)
    np.testing.assert_allclose(a, b, atol=1e-5)
    np.testing.assert_allclose(ea["hidden_states"], eb["hidden_states"], atol=1e-5)
    ga = jax.grad(lambda p: unrolled.apply({"params": p}, x)[0].sum())(params)
    gb = jax.grad(lambda p: scanned.apply({"params": p}, x)[0].sum())(stacked)
    np.testing.assert_allclose(ga["encoder"]["block_2"]["mlp"]["fc1"]["kernel"],
                               gb["encoder"]["layers"]["mlp"]["fc1"]["kernel"][2], atol=1e-5)


@pytest.mark.parametrize("pool", ["tok", "gap", "map", "none"])
def test_pool_types_and_hidden_states(pool):
    m = ViT(variant="Mu/4", num_classes=0, pool_type=pool, posemb="sincos2d")
    x = jnp.ones((2, 16, 16, 3))
    v = m.init(jax.random.key(0), x)
    out, extras = m.apply(v, x)
    tokens = 16 + (pool == "tok")
    assert out.shape == ((2, tokens, 64) if pool == "none" else (2, 64))
    assert extras["hidden_states"].shape == (5, 2, tokens, 64)


def test_params_carry_logical_axes():
    v = ViT(variant="Mu/2", num_classes=3).init(jax.random.key(0), jnp.ones((1, 8, 8, 1)))
    fc1 = v["params"]["encoder"]["block_0"]["mlp"]["fc1"]["kernel"]
    assert isinstance(fc1, nn.LogicallyPartitioned) and fc1.names == ("embed", "mlp")
