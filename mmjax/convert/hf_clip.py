"""Hugging Face CLIP and SigLIP vision towers (safetensors) -> params of `mmjax.models.vit.ViT`.

One converter serves every place a released tower turns up: a standalone `CLIPVisionModel` / `SiglipVisionModel`
(keys `embeddings.*`, `encoder.layers.<i>.*`), a full `CLIPModel` / `SiglipModel` (the same under `vision_model.`,
next to a text tower), and LLaVA-family checkpoints that nest the tower (Hub llava-hf files:
`vision_tower.vision_model.`; transformers v5 `save_pretrained`: `vision_tower.`; others
`model.vision_tower.vision_model.`). The prefix is found from the one key every tower has
(`embeddings.patch_embedding.weight`) unless given. Nothing needs torch: tensors come from safetensors as numpy.

The mapping is driven by the target model's own parameter tree (`jax.eval_shape` of `init`, nothing allocated),
so the unrolled (`encoder/block_<i>`) and scanned (`encoder/layers`, stacked on axis 0) layouts, and any ViT
field combination, are handled by one walk; every shape is checked against the model. Layouts: torch Linear
(out, in) -> kernel (in, out), q/k/v split into (embed, heads, head_dim), out_proj into (heads, head_dim, embed),
patch conv OIHW -> HWIO, class token (D,) -> (1, 1, D), position table (N, D) -> (1, N, D).

Keys that are not part of the tower are never dropped silently: a full CLIPModel's text tower, `text_projection`,
`visual_projection`, `logit_scale`/`logit_bias`, SigLIP's attention-pooling `head` (LLaVA-OneVision drops it; the
ViT's MAPHead hard-codes exact GELU where SigLIP's uses tanh GELU, so it cannot be represented exactly), a legacy
`position_ids` buffer, and, for a nested prefix, everything outside the tower (the LLM and projector of a LLaVA
checkpoint, another converter's job) are listed by reason in the returned `ImportReport` and logged. Any other
unused key, missing key, wrong shape, or model parameter without an HF counterpart raises one error listing all.

CLIP -> ViT(act quick_gelu, patch_bias False, cls_in_posemb, ln_pre, final_norm "pooled" (post_layernorm ->
ln_post), pool_type "tok"). SigLIP -> ViT(act gelu_tanh, patch_bias, no class token (pool_type "none"),
final_norm "all" (post_layernorm -> encoder_norm, on every token)). `clip_vit_config_from_hf` builds these from
config.json, so a tower of any size loads.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from mmjax.convert.safetensors_io import KeyConsumer, load_safetensors
from mmjax.models.vit import ViT

log = logging.getLogger(__name__)

PATCH_KEY = "embeddings.patch_embedding.weight"
# HF config defaults per vision model_type (save_pretrained / Hub configs may omit fields at their defaults).
_HF_DEFAULTS: dict[str, dict[str, Any]] = {
    "clip_vision_model": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                              num_channels=3, image_size=224, patch_size=32, hidden_act="quick_gelu",
                              layer_norm_eps=1e-5),
    "siglip_vision_model": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                                num_channels=3, image_size=224, patch_size=16, hidden_act="gelu_pytorch_tanh",
                                layer_norm_eps=1e-6),
}
_FAMILY_FIELDS: dict[str, dict[str, Any]] = {
    "clip_vision_model": dict(patch_bias=False, cls_in_posemb=True, ln_pre=True, final_norm="pooled",
                              pool_type="tok", posemb="learned"),
    "siglip_vision_model": dict(patch_bias=True, cls_in_posemb=False, ln_pre=False, final_norm="all",
                                pool_type="none", posemb="learned"),
}
_HF_ACTS = {"quick_gelu": "quick_gelu", "gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh"}
# Keys of a full CLIPModel / SiglipModel that sit beside `vision_model.` and are not part of the vision tower.
_CONTRASTIVE_EXTRAS = {"text_projection.weight": "text projection (contrastive head)",
                       "visual_projection.weight": "visual_projection (contrastive head, not in the tower)",
                       "logit_scale": "logit_scale (contrastive loss)", "logit_bias": "logit_bias (contrastive loss)"}
_TOP = {"embedding": "embeddings.patch_embedding", "ln_pre": "pre_layrnorm", "ln_post": "post_layernorm",
        "encoder_norm": "post_layernorm"}
_BLOCK = {"ln1": "layer_norm1", "ln2": "layer_norm2", "attn/q_proj": "self_attn.q_proj",
          "attn/k_proj": "self_attn.k_proj", "attn/v_proj": "self_attn.v_proj",
          "attn/out_proj": "self_attn.out_proj", "mlp/fc1": "mlp.fc1", "mlp/fc2": "mlp.fc2"}
_LEAF = {"kernel": "weight", "scale": "weight", "bias": "bias"}
_SCANNED = -1


def _vision_section(config_json: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """(model_type, fields with HF defaults filled) of the vision tower in a vision, CLIP/SigLIP or LLaVA config."""
    cfg = dict(config_json.get("vision_config") or config_json)
    model_type = cfg.get("model_type")
    if model_type not in _HF_DEFAULTS:
        raise ValueError(f"config.json: vision model_type {model_type!r} is not supported; known: "
                         f"{sorted(_HF_DEFAULTS)} (a full CLIP/SigLIP/LLaVA config must carry a `vision_config`)")
    return model_type, _HF_DEFAULTS[model_type] | cfg


def _pair(value: Any, field: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2:
        raise ValueError(f"config.json: {field}={value!r} is neither an int nor a pair")
    return int(pair[0]), int(pair[1])


def clip_vit_config_from_hf(config_json: Mapping[str, Any]) -> dict[str, Any]:
    """ViT keyword arguments for the vision tower described by an HF config.json (dict).

    Accepts a `CLIPVisionConfig` / `SiglipVisionConfig`, or any config with a `vision_config` (CLIPModel,
    SiglipModel, LLaVA / NeXT / OneVision). The image size is not a ViT field (the position table follows the
    input); read it with `hf_image_size`.
    """
    model_type, cfg = _vision_section(config_json)
    width, heads = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
    if width % heads:
        raise ValueError(f"config.json: hidden_size {width} is not a multiple of num_attention_heads {heads}")
    if cfg["hidden_act"] not in _HF_ACTS:
        raise ValueError(f"config.json: hidden_act {cfg['hidden_act']!r} is not supported; known: {sorted(_HF_ACTS)}")
    patch = _pair(cfg["patch_size"], "patch_size")
    return dict(width=width, depth=int(cfg["num_hidden_layers"]), mlp_dim=int(cfg["intermediate_size"]),
                num_heads=heads, patch_size=patch, act=_HF_ACTS[cfg["hidden_act"]],
                ln_eps=float(cfg["layer_norm_eps"]), **_FAMILY_FIELDS[model_type])


def hf_image_size(config_json: Mapping[str, Any]) -> tuple[int, int]:
    """(height, width) the tower was trained at, which fixes the length of its position table."""
    return _pair(_vision_section(config_json)[1]["image_size"], "image_size")


def _as_tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list | tuple) else value


def check_vit_matches_hf_config(model: ViT, config_json: Mapping[str, Any], allow_shallower: bool = False) -> None:
    """Refuses a model whose fields differ from config.json: activation, eps and norm placement are invisible in
    the weights' shapes, so a wrong one would load cleanly and give wrong features."""
    dims = model.dims()
    wrong = []
    for field, want in clip_vit_config_from_hf(config_json).items():
        have = dims.get(field, getattr(model, field))
        if field == "depth" and allow_shallower and have <= want:
            continue
        same = math.isclose(have, want, rel_tol=1e-6) if field == "ln_eps" else _as_tuple(have) == _as_tuple(want)
        if not same:
            wrong.append(f"{field}: model has {have!r}, config.json says {want!r}")
    if wrong:
        raise ValueError("ViT does not match the HF config:\n  " + "\n  ".join(wrong))


@dataclass(frozen=True)
class ImportReport:
    """What a conversion did with every checkpoint key: consumed into params, or skipped with a reason."""

    source: str
    prefix: str
    consumed: tuple[str, ...]
    skipped: dict[str, tuple[str, ...]]  # reason -> keys

    def summary(self) -> str:
        lines = [f"{self.source}: {len(self.consumed)} tensors loaded from prefix {self.prefix!r}"]
        lines += [f"  skipped {len(keys)}: {reason} (e.g. {keys[0]})" for reason, keys in self.skipped.items()]
        return "\n".join(lines)


class LoadedTower(NamedTuple):
    model: ViT
    params: dict[str, Any]
    report: ImportReport


def detect_prefix(tensors: Mapping[str, Any]) -> str:
    """The prefix in front of `embeddings.patch_embedding.weight`; refuses zero or several candidates."""
    found = sorted(k[: -len(PATCH_KEY)] for k in tensors if k.endswith(PATCH_KEY))
    found = [p for p in found if p == "" or p.endswith(".")]
    if len(found) != 1:
        raise ValueError(f"cannot find the vision tower: {len(found)} candidate prefixes {found} in front of "
                         f"{PATCH_KEY!r}; pass prefix= explicitly")
    return found[0]


def _plan(path: tuple[str, ...]) -> tuple[str, str, int | None] | None:
    """(HF key below the tower prefix, with {i} for the layer; layout; layer index, _SCANNED or None), or None
    for a ViT parameter that has no HF counterpart (a classifier head, a MAP head)."""
    if path == ("cls",):
        return "embeddings.class_embedding", "cls", None
    if path == ("pos_embedding",):
        return "embeddings.position_embedding.weight", "pos", None
    leaf = path[-1]
    if leaf not in _LEAF:
        return None
    if path[0] == "encoder" and len(path) > 2:
        match = re.fullmatch(r"block_(\d+)", path[1])
        layer = int(match.group(1)) if match else (_SCANNED if path[1] == "layers" else None)
        module = "/".join(path[2:-1])
        if layer is None or module not in _BLOCK:
            return None
        name = f"encoder.layers.{{i}}.{_BLOCK[module]}.{_LEAF[leaf]}"
    else:
        module = "/".join(path[:-1])
        if module not in _TOP:
            return None
        layer, name = None, f"{_TOP[module]}.{_LEAF[leaf]}"
    if leaf != "kernel":
        layout = "flat" if module in ("attn/q_proj", "attn/k_proj", "attn/v_proj") else "same"
    elif module == "embedding":
        layout = "conv"
    elif module == "attn/out_proj":
        layout = "out"
    else:
        layout = "qkv" if module.startswith("attn/") else "dense"
    return name, layout, layer


def _hf_shape(layout: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The torch-side shape of a parameter of mmjax `shape`."""
    if layout == "flat":
        return (math.prod(shape),)
    if layout == "cls":
        return shape[-1:]
    if layout == "pos":
        return shape[1:]
    if layout == "dense":
        return shape[::-1]
    if layout == "qkv":  # kernel (embed, heads, head_dim) <- weight (heads * head_dim, embed)
        return (shape[1] * shape[2], shape[0])
    if layout == "out":  # kernel (heads, head_dim, embed) <- weight (embed, heads * head_dim)
        return (shape[2], shape[0] * shape[1])
    if layout == "conv":  # HWIO <- OIHW
        return (shape[3], shape[2], shape[0], shape[1])
    return shape


def _to_mmjax(layout: str, arr: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if layout in ("dense", "qkv", "out"):
        arr = arr.T
    elif layout == "conv":
        arr = arr.transpose(2, 3, 1, 0)
    return arr.reshape(shape)


def _to_hf(layout: str, arr: np.ndarray) -> np.ndarray:
    hf = _hf_shape(layout, arr.shape)
    if layout in ("dense", "qkv", "out"):
        return arr.reshape(hf[1], hf[0]).T
    if layout == "conv":
        return arr.transpose(3, 2, 0, 1)
    return arr.reshape(hf)


def param_shapes(model: ViT, image_size: int | tuple[int, int], channels: int = 3) -> dict[tuple[str, ...], Any]:
    """Flat param path -> ShapeDtypeStruct of `model` at `image_size` (traced only, nothing allocated)."""
    height, width = _pair(image_size, "image_size")
    images = jax.ShapeDtypeStruct((1, height, width, channels), jnp.float32)
    abstract = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), images)["params"]
    return traverse_util.flatten_dict(nn.meta.unbox(abstract))


def _infer_image_size(tensors: Mapping[str, Any], prefix: str, model: ViT) -> tuple[int, int]:
    """A square image size from the position table length, for checkpoints without a config.json."""
    key = prefix + "embeddings.position_embedding.weight"
    if key not in tensors:
        raise ValueError(f"no {key!r} to infer the image size from; pass image_size=")
    n = tensors[key].shape[0] - int(model.pool_type == "tok" and model.cls_in_posemb)
    side, patch = math.isqrt(n), model.dims()["patch_size"]
    if side * side != n:
        raise ValueError(f"{key}: {n} patch positions is not a square grid; pass image_size=")
    return side * patch[0], side * patch[1]


def _skip_reasons(keys: list[str], prefix: str, depth: int, truncate: bool,
                  allow_outside_keys: bool) -> dict[str, str]:
    """Checkpoint key -> why it is deliberately not loaded; keys not listed here must all be consumed."""
    reasons = {}
    for key in keys:
        if key.startswith(prefix):
            rel = key[len(prefix):]
            layer = re.match(r"encoder\.layers\.(\d+)\.", rel)
            if rel == "embeddings.position_ids":
                reasons[key] = "position_ids buffer (recomputed by the model)"
            elif rel.startswith("head."):
                reasons[key] = "SigLIP attention-pooling head (not in the ViT; LLaVA-OneVision drops it)"
            elif truncate and layer and int(layer.group(1)) >= depth:
                reasons[key] = f"encoder layers beyond the model's depth {depth} (truncate=True)"
        elif prefix == "vision_model." and key.startswith("text_model."):
            reasons[key] = "text tower of a full CLIP/SigLIP checkpoint"
        elif prefix == "vision_model." and key in _CONTRASTIVE_EXTRAS:
            reasons[key] = _CONTRASTIVE_EXTRAS[key]
        elif allow_outside_keys:
            reasons[key] = f"outside the vision tower {prefix!r} (another converter's part: {key.split('.')[0]})"
    return reasons


def convert_hf_vision_tensors(tensors: Mapping[str, np.ndarray], model: ViT, *,
                              image_size: int | tuple[int, int] | None = None, prefix: str | None = None,
                              channels: int = 3, truncate: bool = False, allow_outside_keys: bool | None = None,
                              source: str = "checkpoint") -> tuple[dict[str, Any], ImportReport]:
    """HF-named tensors (numpy) -> (nested params for `model`, report). Raises ValueError listing every problem.

    `prefix`: what precedes `embeddings.` (auto-detected when None). `truncate`: a model shallower than the
    checkpoint takes its first layers and skips the rest (LLaVA reads layer -2). `allow_outside_keys`: keys
    outside the prefix are reported rather than refused; by default only for a nested prefix (LLaVA), where
    they belong to the LLM and projector.
    """
    prefix = detect_prefix(tensors) if prefix is None else prefix
    if allow_outside_keys is None:
        allow_outside_keys = prefix not in ("", "vision_model.")
    if image_size is None:
        image_size = _infer_image_size(tensors, prefix, model)
    template = param_shapes(model, image_size, channels)
    reasons = _skip_reasons(list(tensors), prefix, model.dims()["depth"], truncate, allow_outside_keys)
    consumer = KeyConsumer(dict(tensors), source, ignore=lambda k: k in reasons)
    flat, no_counterpart = {}, []
    for path, leaf in template.items():
        plan = _plan(path)
        if plan is None:
            no_counterpart.append("/".join(path))
            continue
        name, layout, layer = plan
        shape = tuple(leaf.shape[1:] if layer == _SCANNED else leaf.shape)
        layers = range(leaf.shape[0]) if layer == _SCANNED else [layer]
        parts = [consumer.take(prefix + name.format(i=i), _hf_shape(layout, shape)) for i in layers]
        if any(p is None for p in parts):
            continue
        values = [_to_mmjax(layout, np.asarray(p), shape) for p in parts]
        flat[path] = np.asarray(np.stack(values) if layer == _SCANNED else values[0], dtype=leaf.dtype)
    problems = []
    try:
        consumer.finish()
    except ValueError as err:
        problems.append(str(err))
    if no_counterpart:
        problems.append("model parameters with no HF CLIP/SigLIP counterpart (classifier or MAP head?):\n    "
                        + "\n    ".join(no_counterpart))
    if problems:
        raise ValueError("\n".join(problems))
    grouped: dict[str, list[str]] = {}
    for key, reason in reasons.items():
        grouped.setdefault(reason, []).append(key)
    report = ImportReport(source, prefix, tuple(sorted(consumer.used - set(reasons))),
                          {r: tuple(sorted(k)) for r, k in grouped.items()})
    log.info("%s", report.summary())
    return traverse_util.unflatten_dict(flat), report


def export_hf_vision_tensors(params: Mapping[str, Any], prefix: str = "") -> dict[str, np.ndarray]:
    """ViT params (unrolled or scanned) -> HF-named float tensors, the inverse of `convert_hf_vision_tensors`
    (scanned stacks are written as per-layer keys), e.g. to hand a fine-tuned tower back to PyTorch."""
    out = {}
    for path, value in traverse_util.flatten_dict(nn.meta.unbox(dict(params))).items():
        plan = _plan(path)
        if plan is None:
            raise ValueError(f"parameter {'/'.join(path)} has no HF CLIP/SigLIP counterpart")
        name, layout, layer = plan
        value = np.asarray(value)
        stack = list(value) if layer == _SCANNED else [value]
        for i, arr in enumerate(stack):
            out[prefix + name.format(i=i if layer == _SCANNED else layer)] = np.ascontiguousarray(_to_hf(layout, arr))
    return out


def _read_config(path: Path) -> dict[str, Any] | None:
    config = (path if path.is_dir() else path.parent) / "config.json"
    return json.loads(config.read_text()) if config.exists() else None


def load_hf_vision_tower(path: str | os.PathLike, model: ViT | None = None, *, prefix: str | None = None,
                         image_size: int | tuple[int, int] | None = None, truncate: bool = False,
                         allow_outside_keys: bool | None = None, **overrides: Any) -> LoadedTower:
    """Loads a CLIP / SigLIP vision tower from a safetensors file, sharded index or HF directory.

    Without `model`, the ViT is built from the config.json beside the weights (`overrides` such as scan=True,
    dtype=jnp.bfloat16 or a smaller depth with truncate=True are applied on top). With `model`, a config.json
    that is present is checked against it. Returns (model, params, report); use `{"params": params}`.
    """
    path = Path(path)
    config = _read_config(path)
    if model is None:
        if config is None:
            raise FileNotFoundError(f"{path}: no config.json beside the weights; pass model=ViT(...)")
        model = ViT(**(clip_vit_config_from_hf(config) | overrides))
    elif overrides:
        raise TypeError(f"overrides {sorted(overrides)} apply only when the model is built from config.json")
    if config is not None:
        check_vit_matches_hf_config(model, config, allow_shallower=truncate)
        image_size = image_size or hf_image_size(config)
        channels = int(_vision_section(config)[1]["num_channels"])
    else:
        channels = 3
    params, report = convert_hf_vision_tensors(load_safetensors(path), model, image_size=image_size, prefix=prefix,
                                               channels=channels, truncate=truncate,
                                               allow_outside_keys=allow_outside_keys, source=str(path))
    return LoadedTower(model, params, report)
