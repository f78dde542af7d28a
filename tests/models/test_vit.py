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


def test_token_padding_keeps_outputs_and_gradients():
    """5 tokens (4 patches + class token) padded to 8 with the keys hidden: the same function as unpadded."""
    x = jax.random.normal(jax.random.key(1), (3, 8, 8, 3))
    make = lambda multiple: ViT(variant="Mu/4", num_classes=5, head_zero_init=False, scan=True,
                                remat_policy="dots_and_attention", token_multiple=multiple)
    plain, padded = make(1), make(8)
    params = strip_boxes(plain.init(jax.random.key(0), x))["params"]
    (a, ea), (b, eb) = plain.apply({"params": params}, x), padded.apply({"params": params}, x)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    assert eb["hidden_states"].shape == ea["hidden_states"].shape == (5, 3, 5, 64)
    np.testing.assert_allclose(ea["hidden_states"], eb["hidden_states"], rtol=1e-5, atol=1e-5)
    loss = lambda m: lambda p: jnp.sum(m.apply({"params": p}, x)[0] ** 2)
    ga, gb = jax.grad(loss(plain))(params), jax.grad(loss(padded))(params)
    for u, v in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
        np.testing.assert_allclose(u, v, rtol=1e-3, atol=1e-5)
