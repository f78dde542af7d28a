"""Show-o's released MAGVIT-v2 tokenizer (HF `showlab/magvitv2`) <-> mmjax `VQModel` params.

The release is a PyTorch `pytorch_model.bin` (a pickle). mmjax never unpickles at load time; convert it once
to safetensors with torch (`pip install -e .[parity]`):

    import torch, safetensors.torch as st
    sd = torch.load("pytorch_model.bin", map_location="cpu", weights_only=True)
    st.save_file(sd, "magvitv2.safetensors")  # numpy has no bfloat16: `.float()` bf16 tensors first if any

then `params = load_magvitv2("magvitv2.safetensors")` and use `{"params": params}` with
`VQModel(showo_magvitv2())`.

Key mapping (reference name -> mmjax path): `encoder.down.1.block.0.conv1.weight` ->
`encoder/down_1_block_0/conv1/kernel`; `decoder.up.4.upsample.conv` -> `decoder/up_4_upsample/conv`;
`mid.block_1` / `mid.attn_1` -> `mid_block_1` / `mid_attn_1`; conv weights OIHW -> HWIO `kernel`; GroupNorm
(`norm*`) weight -> `scale`. The LFQ buffers `quantize.embedding` (2^K, K) and `quantize.power_vals` (K,)
are not parameters: they are checked against the configured bit order (a wrong `msb_first` is refused) and
dropped. Every key must be consumed and every parameter filled with the right shape, otherwise one error
lists them all.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from mmjax.models.quantizers import indices_to_codes
from mmjax.models.vq import VQConfig, VQModel, showo_magvitv2

LFQ_BUFFERS = ("quantize.embedding", "quantize.power_vals")
_TO_PATH = (
    (re.compile(r"\b(down|up)\.(\d+)\.(block|attn)\.(\d+)\b"), r"\1_\2_\3_\4"),
    (re.compile(r"\b(down|up)\.(\d+)\.(downsample|upsample)\b"), r"\1_\2_\3"),
    (re.compile(r"\bmid\.(block_1|block_2|attn_1)\b"), r"mid_\1"),
)
_TO_KEY = (
    (re.compile(r"^(down|up)_(\d+)_(block|attn)_(\d+)$"), r"\1.\2.\3.\4"),
    (re.compile(r"^(down|up)_(\d+)_(downsample|upsample)$"), r"\1.\2.\3"),
    (re.compile(r"^mid_(block_1|block_2|attn_1)$"), r"mid.\1"),
)


def torch_key_to_path(key: str) -> tuple[str, ...]:
    """Reference state-dict key -> mmjax param path (a tuple, as `flax.traverse_util.flatten_dict` gives)."""
    *modules, leaf = key.split(".")
    name = ".".join(modules)
    for pattern, repl in _TO_PATH:
        name = pattern.sub(repl, name)
    path = tuple(name.split("."))
    if leaf == "weight":
        leaf = "scale" if path[-1].startswith("norm") else "kernel"
    return (*path, leaf)


def path_to_torch_key(path: tuple[str, ...]) -> str:
    """mmjax param path -> reference state-dict key; the inverse of `torch_key_to_path`."""
    *modules, leaf = path
    parts = []
    for m in modules:
        for pattern, repl in _TO_KEY:
            m = pattern.sub(repl, m)
        parts.append(m)
    return ".".join([*parts, "weight" if leaf in ("kernel", "scale") else leaf])


def _to_mmjax(arr: np.ndarray) -> np.ndarray:
    return arr.transpose(2, 3, 1, 0) if arr.ndim == 4 else arr  # OIHW -> HWIO


def _to_torch(arr: np.ndarray) -> np.ndarray:
    return arr.transpose(3, 2, 0, 1) if arr.ndim == 4 else arr  # HWIO -> OIHW


def param_shapes(config: VQConfig) -> dict[tuple[str, ...], tuple[int, ...]]:
    """Flat mmjax param path -> shape for `config`, from `jax.eval_shape` (nothing allocated or computed)."""
    size = config.downsample_factor
    images = jax.ShapeDtypeStruct((1, size, size, config.in_channels), jnp.float32)
    abstract = jax.eval_shape(VQModel(config).init, jax.random.key(0), images)["params"]
    flat = traverse_util.flatten_dict(nn.meta.unbox(abstract))
    return {path: tuple(leaf.shape) for path, leaf in flat.items()}


def _lfq_buffers(config: VQConfig) -> dict[str, np.ndarray]:
    """The reference LFQ's registered buffers for this bit width and bit order."""
    k = config.z_channels
    codes = np.asarray(indices_to_codes(jnp.arange(2 ** k), k, config.msb_first), np.float32)
    shifts = np.arange(k)[::-1] if config.msb_first else np.arange(k)
    return {"quantize.embedding": codes, "quantize.power_vals": (2 ** shifts).astype(np.int64)}


def convert_state_dict(state: Mapping[str, Any], config: VQConfig | None = None,
                       prefix: str = "") -> dict[str, Any]:
    """Reference state dict (numpy/torch-layout arrays) -> nested mmjax params (float32 numpy) for `config`.

    `prefix` is stripped from every key (for tokenizers stored inside a larger checkpoint). Raises ValueError
    listing every unmatched key, every missing parameter and every shape mismatch at once.
    """
    config = config or showo_magvitv2()
    if config.quantizer != "lfq":
        raise ValueError("convert_state_dict loads MAGVIT-v2 (LFQ) weights; VQConfig.quantizer must be 'lfq'")
    expected = param_shapes(config)
    buffers = _lfq_buffers(config)
    flat: dict[tuple[str, ...], np.ndarray] = {}
    unmatched, mismatched, bad_paths = [], [], set()
    for full_key, value in state.items():
        if not full_key.startswith(prefix):
            unmatched.append(full_key)
            continue
        key, arr = full_key[len(prefix):], np.asarray(value)
        if key in buffers:
            if arr.shape != buffers[key].shape or not np.array_equal(arr, buffers[key]):
                mismatched.append(f"{full_key}: does not match a {config.z_channels}-bit LFQ with "
                                  f"msb_first={config.msb_first} (wrong bit order or bit count?)")
            continue
        path = torch_key_to_path(key)
        if path not in expected:
            unmatched.append(full_key)
            continue
        arr = _to_mmjax(arr)
        if arr.shape != expected[path]:
            mismatched.append(f"{full_key}: {np.shape(value)} -> {arr.shape}, expected {expected[path]} "
                              f"at {'/'.join(path)}")
            bad_paths.add(path)
            continue
        flat[path] = arr.astype(np.float32)
    missing = [path_to_torch_key(p) for p in expected if p not in flat and p not in bad_paths]
    if unmatched or missing or mismatched:
        raise ValueError(
            "MAGVIT-v2 checkpoint does not match the config:\n"
            f"  unmatched checkpoint keys ({len(unmatched)}): {unmatched}\n"
            f"  missing parameters ({len(missing)}): {missing}\n"
            f"  mismatched ({len(mismatched)}): {mismatched}")
    return traverse_util.unflatten_dict(flat)


def export_state_dict(params: Mapping[str, Any], config: VQConfig | None = None) -> dict[str, np.ndarray]:
    """mmjax params -> reference state dict (torch layouts and names). With an LFQ `config` the quantizer
    buffers are added, so the result has exactly the released key set (382 keys for Show-o's tokenizer)."""
    flat = traverse_util.flatten_dict(nn.meta.unbox(dict(params)))
    out = {path_to_torch_key(p): _to_torch(np.asarray(v)) for p, v in flat.items()}
    if config is not None and config.quantizer == "lfq":
        out.update(_lfq_buffers(config))
    return out


def load_magvitv2(path: str | Path, config: VQConfig | None = None, prefix: str = "") -> dict[str, Any]:
    """Reads a safetensors file with the reference key names and converts it (see the module docstring)."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: expected a .safetensors file; convert the released .bin once with the "
                         "snippet in mmjax/convert/magvitv2.py's docstring (mmjax does not unpickle)")
    from safetensors.numpy import load_file

    return convert_state_dict(load_file(str(path)), config, prefix)


def save_magvitv2(path: str | Path, params: Mapping[str, Any], config: VQConfig | None = None) -> None:
    """Writes mmjax params as a safetensors file with the reference key names (loadable by the reference)."""
    from safetensors.numpy import save_file

    state = export_state_dict(params, config)
    save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, str(path))
