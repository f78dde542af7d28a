"""VQModel: config validation, Show-o tokenizer architecture (eval_shape), tiny forward/encode/decode."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import traverse_util

from mmjax.models.quantizers import indices_to_codes
from mmjax.models.vq import VQConfig, VQModel, decode_ids, encode_to_ids, showo_magvitv2, tiny

# Reference: showlab/Show-o models/modeling_magvitv2.py MAGVITv2(), counted on the PyTorch module itself.
SHOWO_PARAMS, SHOWO_ENCODER_PARAMS, SHOWO_DECODER_PARAMS = 95_387_004, 55_439_171, 39_947_833


def _count(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _abstract_init(model: VQModel, size: int):
    images = jax.ShapeDtypeStruct((1, size, size, model.config.in_channels), jnp.float32)
    return jax.eval_shape(model.init, jax.random.key(0), images)


def _init(model: VQModel, images: jax.Array):
    # The "rbg" PRNG compiles several times faster than threefry on CPU, and init is mostly random draws.
    return jax.jit(model.init)(jax.random.key(1, impl="rbg"), images)


def test_config_rejects_unknown_and_inconsistent_fields():
    with pytest.raises(ValueError, match=r"unknown VQConfig fields.*chmult"):
        VQConfig.from_dict({"chmult": [1, 2]})
    with pytest.raises(ValueError, match="unknown VQConfig fields"):
        showo_magvitv2().replace(z_chanels=8)
    with pytest.raises(ValueError, match="same length"):
        VQConfig(enc_ch_mult=(1, 2), enc_num_res_blocks=(1,))
    with pytest.raises(ValueError, match="same number of levels"):
        tiny(dec_ch_mult=(1, 2, 2), dec_num_res_blocks=(1, 1, 1))
    with pytest.raises(ValueError, match="quantizer"):
        tiny(quantizer="fsq")
    cfg = VQConfig.from_dict({"enc_ch_mult": [1, 2, 2, 4, 4]})  # lists (yaml/json) become tuples: hashable
    assert cfg.enc_ch_mult == (1, 2, 2, 4, 4) and hash(cfg) == hash(showo_magvitv2())
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.ch = 64


def test_showo_magvitv2_architecture():
    cfg = showo_magvitv2()
    assert (cfg.ch, cfg.z_channels, cfg.num_codes, cfg.downsample_factor) == (128, 13, 8192, 16)
    assert cfg.msb_first and cfg.mid_attn and cfg.attn_resolutions == ()
    assert cfg.enc_ch_mult == (1, 2, 2, 4, 4) and cfg.enc_num_res_blocks == (4, 3, 4, 3, 4)
    assert cfg.dec_ch_mult == (1, 1, 2, 2, 4) and cfg.dec_num_res_blocks == (4, 4, 3, 4, 3)
    params = nn.meta.unbox(_abstract_init(VQModel(cfg), 16))["params"]
    assert _count(params) == SHOWO_PARAMS
    assert _count(params["encoder"]) == SHOWO_ENCODER_PARAMS
    assert _count(params["decoder"]) == SHOWO_DECODER_PARAMS
    enc, dec = params["encoder"], params["decoder"]
    assert enc["down_0_downsample"]["conv"]["kernel"].shape == (3, 3, 128, 128)
    assert "down_4_downsample" not in enc and "up_0_upsample" not in dec
    assert not any("attn" in k and not k.startswith("mid") for k in [*enc, *dec])  # mid attention only
    shortcuts = sorted(f"{n}/{k}" for n, t in (("enc", enc), ("dec", dec)) for k in t
                       if "nin_shortcut" in t[k])
    assert shortcuts == ["dec/up_1_block_0", "dec/up_3_block_0", "enc/down_1_block_0", "enc/down_3_block_0"]
    assert enc["quant_conv"]["kernel"].shape == dec["post_quant_conv"]["kernel"].shape == (1, 1, 13, 13)


@pytest.mark.parametrize("size", [256, 512])
def test_showo_encode_decode_shapes(size):
    model = VQModel(showo_magvitv2())
    variables = _abstract_init(model, 16)
    images = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
    z_q, ids, _ = jax.eval_shape(lambda v, x: model.apply(v, x, method=VQModel.encode), variables, images)
    n = size // 16
    assert ids.shape == (2, n, n) and ids.dtype == jnp.int32 and z_q.shape == (2, n, n, 13)
    out = jax.eval_shape(lambda v, i: model.apply(v, i, method=VQModel.decode_indices), variables, ids)
    assert out.shape == (2, size, size, 3) and out.dtype == jnp.float32


def test_logical_axes():
    boxed = _abstract_init(VQModel(tiny()), 16)["params"]
    flat = traverse_util.flatten_dict(boxed)
    assert flat[("encoder", "conv_in", "kernel")].names == (None, None, "conv_in", "conv_out")
    assert flat[("decoder", "up_0_block_0", "norm1", "scale")].names == ("norm",)
    assert all(isinstance(v, nn.LogicallyPartitioned) for v in flat.values())


@pytest.fixture(scope="module")
def tiny_lfq():
    model = VQModel(tiny(attn_resolutions=(8,)))
    images = jax.random.uniform(jax.random.key(0), (2, 16, 16, 3), minval=-1.0, maxval=1.0)
    variables = _init(model, images)
    return model, variables, images


def test_tiny_forward_encode_decode(tiny_lfq):
    model, variables, images = tiny_lfq
    assert "down_1_attn_0" in variables["params"]["encoder"]  # attention at nominal resolution 8
    recon, aux = jax.jit(model.apply)(variables, images)
    assert recon.shape == images.shape and recon.dtype == jnp.float32
    assert set(aux) >= {"loss", "commit_loss", "entropy_loss", "usage", "perplexity"}
    assert all(np.isfinite(np.asarray(v)) for v in aux.values())
    z_q, ids, _ = jax.jit(lambda v, x: model.apply(v, x, method=VQModel.encode))(variables, images)
    assert ids.shape == (2, 8, 8) and z_q.shape == (2, 8, 8, 6)
    # ids and z_q agree: decoding the ids is decoding z_q (clipped to the pixel range).
    np.testing.assert_array_equal(indices_to_codes(ids, 6, msb_first=True), z_q)
    np.testing.assert_array_equal(encode_to_ids(model, variables, images), ids)
    decoded = decode_ids(model, variables["params"], ids)  # a bare params tree is accepted too
    direct = jax.jit(lambda v, z: model.apply(v, z, method=VQModel.decode))(variables, z_q)
    np.testing.assert_allclose(decoded, jnp.clip(direct, -1, 1), atol=1e-6)
    np.testing.assert_allclose(direct, recon, atol=1e-6)
    assert decoded.min() >= -1 and decoded.max() <= 1


def test_gradients_reach_the_encoder(tiny_lfq):
    model, variables, images = tiny_lfq

    def loss(params):
        recon, aux = model.apply({"params": params}, images)
        return jnp.mean(jnp.abs(recon - images)) + aux["loss"]

    grads = jax.jit(jax.grad(loss))(variables["params"])
    for path in (("encoder", "conv_in", "kernel"), ("encoder", "quant_conv", "kernel")):
        g = nn.meta.unbox(traverse_util.flatten_dict(grads)[path])
        assert np.all(np.isfinite(g)) and np.abs(g).max() > 0, path


def test_bad_image_shape_is_refused(tiny_lfq):
    model, variables, _ = tiny_lfq
    with pytest.raises(ValueError, match="multiples of 2"):
        model.apply(variables, jnp.zeros((1, 15, 16, 3)), method=VQModel.encode)


def test_vq_ema_model_and_bf16():
    model = VQModel(tiny(quantizer="vq", dead_code_threshold=0.0), dtype=jnp.bfloat16)
    images = jax.random.uniform(jax.random.key(2), (2, 16, 16, 3), minval=-1.0, maxval=1.0)
    variables = _init(model, images)
    assert set(variables) == {"params", "vq_stats"} and "quantize" not in variables["params"]
    step = jax.jit(lambda v, x: model.apply(v, x, mutable=["vq_stats"]))
    (recon, aux), stats = step(variables, images)
    assert recon.dtype == jnp.float32 and np.isfinite(float(aux["loss"]))
    before = nn.meta.unbox(variables["vq_stats"])["quantize"]["codebook"]
    after = nn.meta.unbox(stats["vq_stats"])["quantize"]["codebook"]
    assert not np.allclose(before, after)
    ids = encode_to_ids(model, {**variables, **stats}, images)
    assert ids.shape == (2, 8, 8) and int(ids.max()) < 16
    assert decode_ids(model, {**variables, **stats}, ids).shape == images.shape
