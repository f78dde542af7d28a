"""Show-o MAGVIT-v2 weight conversion: reference key set, round trips, errors, parity with a torch forward."""

import hashlib
import math

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import traverse_util

from mmjax.convert.magvitv2 import (
    convert_state_dict,
    export_state_dict,
    load_magvitv2,
    param_shapes,
    path_to_torch_key,
    save_magvitv2,
    torch_key_to_path,
)
from mmjax.convert.safetensors_io import save_safetensors
from mmjax.models.vq import VQConfig, VQModel, showo_magvitv2

# sha256 of the sorted "key:shape" lines of `MAGVITv2().state_dict()` from showlab/Show-o
# (models/modeling_magvitv2.py), computed once on the instantiated PyTorch module: 380 params + 2 LFQ buffers.
SHOWO_STATE_DICT_SHA256 = "c90b7793068139d5b16c7373ad0d0bb53ff898e47e1798853bf408787a62cbd3"
SMALL = VQConfig(ch=16, enc_ch_mult=(1, 2, 2), enc_num_res_blocks=(2, 1, 1), dec_ch_mult=(1, 1, 2),
                 dec_num_res_blocks=(1, 2, 1), resolution=16, attn_resolutions=(8,), z_channels=5)


def _torch_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    return (shape[3], shape[2], shape[0], shape[1]) if len(shape) == 4 else shape


def _reference_shapes(config: VQConfig) -> dict[str, tuple[int, ...]]:
    shapes = {path_to_torch_key(p): _torch_shape(s) for p, s in param_shapes(config).items()}
    k = config.z_channels
    return {**shapes, "quantize.embedding": (2 ** k, k), "quantize.power_vals": (k,)}


def _random_params(config: VQConfig, seed: int = 0) -> dict:
    """Random params of every kind (norm scales != 1, biases != 0) without paying for a jit-compiled init."""
    rng = np.random.default_rng(seed)
    flat = {}
    for path, shape in param_shapes(config).items():
        if path[-1] == "kernel":
            flat[path] = rng.standard_normal(shape) / math.sqrt(np.prod(shape[:-1]))
        else:
            flat[path] = (1.0 if path[-1] == "scale" else 0.0) + 0.1 * rng.standard_normal(shape)
    return traverse_util.unflatten_dict({p: v.astype(np.float32) for p, v in flat.items()})


def test_showo_reference_key_set():
    shapes = _reference_shapes(showo_magvitv2())
    assert len(shapes) == 382
    lines = sorted(f"{k}:{s}" for k, s in shapes.items())
    assert hashlib.sha256("\n".join(lines).encode()).hexdigest() == SHOWO_STATE_DICT_SHA256
    spot = {"encoder.conv_in.weight": (128, 3, 3, 3),
            "encoder.down.1.block.0.nin_shortcut.weight": (256, 128, 1, 1),
            "encoder.down.3.downsample.conv.weight": (512, 512, 3, 3),
            "encoder.mid.attn_1.q.weight": (512, 512, 1, 1),
            "encoder.conv_out.weight": (13, 512, 3, 3), "encoder.quant_conv.weight": (13, 13, 1, 1),
            "decoder.conv_in.weight": (512, 13, 3, 3), "decoder.up.4.upsample.conv.weight": (512, 512, 3, 3),
            "decoder.up.1.block.0.nin_shortcut.weight": (128, 256, 1, 1), "decoder.norm_out.weight": (128,),
            "decoder.post_quant_conv.bias": (13,), "decoder.up.4.block.2.norm2.bias": (512,)}
    assert {k: shapes[k] for k in spot} == spot
    for key in shapes:  # the name mapping is a bijection on the whole reference key set
        if not key.startswith("quantize."):
            assert path_to_torch_key(torch_key_to_path(key)) == key


def test_round_trip_and_safetensors(tmp_path):
    params = _random_params(SMALL)
    state = export_state_dict(params, SMALL)
    assert {k: v.shape for k, v in state.items()} == _reference_shapes(SMALL)
    back = convert_state_dict(state, SMALL)
    jax.tree.map(np.testing.assert_array_equal, back, params)
    files = save_magvitv2(tmp_path / "tok", params, SMALL)
    assert [f.name for f in files] == ["model.safetensors"]
    jax.tree.map(np.testing.assert_array_equal, load_magvitv2(tmp_path / "tok", SMALL), params)
    half = {k: v.astype(ml_dtypes.bfloat16) if v.dtype == np.float32 else v for k, v in state.items()}
    save_safetensors(half, tmp_path / "bf16")  # a bf16 copy of a release loads too (as float32)
    back = load_magvitv2(tmp_path / "bf16", SMALL)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-2, atol=1e-2), back, params)
    prefixed = {f"vq_model.{k}": v for k, v in state.items()}
    back = convert_state_dict(prefixed, SMALL, prefix="vq_model.")
    jax.tree.map(np.testing.assert_array_equal, back, params)
    with pytest.raises(ValueError, match="does not unpickle"):
        load_magvitv2(tmp_path / "pytorch_model.bin", SMALL)


def test_errors_list_every_problem():
    state = export_state_dict(_random_params(SMALL), SMALL)
    del state["encoder.mid.attn_1.k.bias"]
    state["encoder.mid.attn_2.k.bias"] = np.zeros(32, np.float32)
    state["decoder.conv_out.weight"] = np.zeros((3, 16, 1, 1), np.float32)
    with pytest.raises(ValueError) as err:
        convert_state_dict(state, SMALL)
    msg = str(err.value)
    assert "1 expected tensors missing:\n    encoder.mid.attn_1.k.bias" in msg
    assert "1 tensors not consumed:\n    encoder.mid.attn_2.k.bias" in msg
    assert "decoder.conv_out.weight: expected (3, 16, 3, 3), found (3, 16, 1, 1)" in msg
    lsb = SMALL.replace(msb_first=False)  # the checkpoint's MSB-first codebook refuses an LSB-first config
    with pytest.raises(ValueError, match=r"quantize\.embedding.*msb_first=False"):
        convert_state_dict(export_state_dict(_random_params(SMALL), SMALL), lsb)


def _torch_forward(sd: dict, config: VQConfig, x):
    """An independent statement of the reference forward in PyTorch (NCHW), using reference key names only.

    Returns (pre-quantization latents, reconstruction decoded from their +-1 codes)."""
    import torch
    import torch.nn.functional as F

    conv = lambda h, n, stride=1, pad=1: F.conv2d(h, sd[f"{n}.weight"], sd[f"{n}.bias"], stride, pad)
    norm = lambda h, n: F.group_norm(h, math.gcd(h.shape[1], 32), sd[f"{n}.weight"], sd[f"{n}.bias"], 1e-6)
    act = lambda h: h * torch.sigmoid(h)

    def res(h, n):
        y = conv(act(norm(conv(act(norm(h, f"{n}.norm1")), f"{n}.conv1"), f"{n}.norm2")), f"{n}.conv2")
        return (conv(h, f"{n}.nin_shortcut", pad=0) if f"{n}.nin_shortcut.weight" in sd else h) + y

    def attn(h, n):
        b, c, hh, ww = h.shape
        q, k, v = (conv(norm(h, f"{n}.norm"), f"{n}.{m}", pad=0).flatten(2) for m in "qkv")
        w = torch.softmax(q.transpose(1, 2) @ k / math.sqrt(c), dim=-1)  # (b, query, key)
        return h + conv((v @ w.transpose(1, 2)).reshape(b, c, hh, ww), f"{n}.proj_out", pad=0)

    def level(h, n):
        j = 0
        while f"{n}.block.{j}.conv1.weight" in sd:
            h = res(h, f"{n}.block.{j}")
            h = attn(h, f"{n}.attn.{j}") if f"{n}.attn.{j}.q.weight" in sd else h
            j += 1
        return h

    mid = lambda h, p: res(attn(res(h, f"{p}.mid.block_1"), f"{p}.mid.attn_1"), f"{p}.mid.block_2")
    levels = len(config.enc_ch_mult)
    h = conv(x, "encoder.conv_in")
    for i in range(levels):
        h = level(h, f"encoder.down.{i}")
        if i < levels - 1:
            h = conv(F.pad(h, (0, 1, 0, 1)), f"encoder.down.{i}.downsample.conv", stride=2, pad=0)
    h = conv(act(norm(mid(h, "encoder"), "encoder.norm_out")), "encoder.conv_out")
    z = conv(h, "encoder.quant_conv", pad=0)
    codes = torch.where(z > 0, 1.0, -1.0).to(z.dtype)
    h = conv(conv(codes, "decoder.post_quant_conv", pad=0), "decoder.conv_in")
    h = mid(h, "decoder")
    for i in reversed(range(levels)):
        h = level(h, f"decoder.up.{i}")
        if i > 0:
            h = conv(F.interpolate(h, scale_factor=2.0, mode="nearest"), f"decoder.up.{i}.upsample.conv")
    return z, conv(act(norm(h, "decoder.norm_out")), "decoder.conv_out")


@pytest.mark.parity
def test_parity_with_torch_forward():
    torch = pytest.importorskip("torch")
    params = _random_params(SMALL, seed=1)
    sd = {k: torch.from_numpy(np.asarray(v, np.float64)) for k, v in export_state_dict(params, SMALL).items()}
    x = np.random.default_rng(2).uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)
    with torch.no_grad():
        outputs = _torch_forward(sd, SMALL, torch.from_numpy(x.transpose(0, 3, 1, 2)).double())
    z_ref, recon_ref = (t.numpy().transpose(0, 2, 3, 1) for t in outputs)
    model, variables = VQModel(SMALL), {"params": convert_state_dict(export_state_dict(params, SMALL), SMALL)}
    z, ids, _ = jax.jit(lambda v, x: model.apply(v, x, method=VQModel.encode))(variables, jnp.asarray(x))
    encoder_only = lambda m, x: m.encoder(x)
    z_pre = jax.jit(lambda v, x: model.apply(v, x, method=encoder_only))(variables, jnp.asarray(x))
    np.testing.assert_allclose(z_pre, z_ref, atol=1e-4 * np.abs(z_ref).max())
    confident = np.abs(z_ref) > 1e-3  # away from the sign boundary float32 and float64 agree on the bits
    np.testing.assert_array_equal(np.asarray(z)[confident], np.sign(z_ref)[confident])
    # Decode the reference's own codes, so one borderline bit cannot make the comparison flaky.
    codes = jnp.asarray(np.where(z_ref > 0, 1.0, -1.0), jnp.float32)
    recon = jax.jit(lambda v, c: model.apply(v, c, method=VQModel.decode))(variables, codes)
    np.testing.assert_allclose(recon, recon_ref, atol=1e-4 * np.abs(recon_ref).max())
    assert ids.shape == (2, 4, 4)
