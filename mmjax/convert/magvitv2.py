"""Show-o's released MAGVIT-v2 tokenizer (HF `showlab/magvitv2`) <-> mmjax `VQModel` params.

The release is a PyTorch `pytorch_model.bin` (a pickle). mmjax never unpickles at load time; convert it once
to safetensors with torch (`pip install -e .[parity]`):

    import torch, safetensors.torch as st
    st.save_file(torch.load("pytorch_model.bin", map_location="cpu", weights_only=True), "tok.safetensors")

then `params = load_magvitv2("tok.safetensors")` and use `{"params": params}` with
`VQModel(showo_magvitv2())`.

Key mapping (reference name -> mmjax path): `encoder.down.1.block.0.conv1.weight` ->
`encoder/down_1_block_0/conv1/kernel`; `decoder.up.4.upsample.conv` -> `decoder/up_4_upsample/conv`;
`mid.block_1` / `mid.attn_1` -> `mid_block_1` / `mid_attn_1`; conv weights OIHW -> HWIO `kernel`; GroupNorm
(`norm*`) weight -> `scale`. The LFQ buffers `quantize.embedding` (2^K, K) and `quantize.power_vals` (K,)
are not parameters: they are checked against the configured bit order (a wrong `msb_first` is refused) and
dropped. Reading and key accounting go through `mmjax.convert.safetensors_io` (bf16 files, shards, and one
error that lists every missing, mis-shaped and unconsumed tensor at once).
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

from mmjax.convert.safetensors_io import KeyConsumer, load_safetensors, save_safetensors, strip_prefix
from mmjax.models.quantizers import indices_to_codes
from mmjax.models.vq import VQConfig, VQModel, showo_magvitv2

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


def _torch_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    return (shape[3], shape[2], shape[0], shape[1]) if len(shape) == 4 else tuple(shape)


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


def convert_state_dict(state: Mapping[str, Any], config: VQConfig | None = None, prefix: str = "",
                       source: str = "MAGVIT-v2 checkpoint") -> dict[str, Any]:
    """Reference state dict (numpy / torch-layout arrays) -> nested mmjax params (float32 numpy) for `config`.

    `prefix` is stripped from the keys that carry it (a tokenizer inside a larger checkpoint); keys without it
    count as unconsumed. Raises ValueError listing every missing, mis-shaped and unconsumed tensor at once, or
    naming the LFQ buffer whose bit order / width disagrees with the config.
    """
    config = config or showo_magvitv2()
    if config.quantizer != "lfq":
        raise ValueError("convert_state_dict loads MAGVIT-v2 (LFQ) weights; VQConfig.quantizer must be 'lfq'")
    consumer = KeyConsumer(strip_prefix({k: np.asarray(v) for k, v in state.items()}, prefix), source)
    for key, expected in _lfq_buffers(config).items():
        if key in consumer:
            found = consumer.take(key)
            if found.shape != expected.shape or not np.array_equal(found, expected):
                raise ValueError(f"{source}: {prefix}{key} does not match a {config.z_channels}-bit LFQ with "
                                 f"msb_first={config.msb_first} (wrong bit order or bit count?)")
    flat = {}
    for path, shape in param_shapes(config).items():
        arr = consumer.take(path_to_torch_key(path), _torch_shape(shape))
        if arr is not None:
            flat[path] = _to_mmjax(arr).astype(np.float32)
    consumer.finish()
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
    """Reads safetensors weights with the reference key names (a file, a directory or a sharded index) and
    converts them (see the module docstring for turning the released `.bin` into safetensors)."""
    path = Path(path)
    if path.suffix in (".bin", ".pt", ".pth", ".ckpt"):
        raise ValueError(f"{path}: mmjax does not unpickle checkpoints; convert it to safetensors once "
                         "with the two lines in mmjax/convert/magvitv2.py's docstring")
    return convert_state_dict(load_safetensors(path), config, prefix, source=str(path))


def save_magvitv2(directory: str | Path, params: Mapping[str, Any],
                  config: VQConfig | None = None) -> list[Path]:
    """Writes mmjax params as `directory/model.safetensors` with the reference key names (and LFQ buffers)."""
    return save_safetensors(export_state_dict(params, config), directory)
