"""Hugging Face LLaVA / LLaVA-NeXT / LLaVA-OneVision checkpoints (safetensors) -> mmjax `Llava` params.

A checkpoint is three known parts plus a vector: the vision tower (CLIP or SigLIP, converted by
`mmjax.convert.hf_clip`), the projector (`multi_modal_projector.linear_k`), the LM (LLaMA/Vicuna or Qwen2,
converted by `mmjax.convert.hf_lm`) and, for NeXT / OneVision, `image_newline`. Keys come in three spellings
(Hub llava-hf files: `vision_tower.vision_model.*`, `language_model.model.*`, `language_model.lm_head.*`;
transformers v5 `save_pretrained`: `vision_tower.*`, `language_model.model.*`; v5 module names:
`model.vision_tower.*`, `model.language_model.*`, `lm_head.*`); they are normalised first, then every key is
either consumed (shape-checked) or skipped for a stated reason: the tower's blocks after `vision_feature_layer`
and its `post_layernorm` (LLaVA reads an inner layer; mmjax does not build what cannot affect the output) and a
SigLIP pooling head. Anything else left over, missing or mis-shaped raises one error listing all of it.

`llava_config_from_hf` also returns the image preprocessing (`ImageConfig`): HF stores grid pinpoints as
(height, width), mmjax as (width, height), and the list order decides ties, so the order is kept.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np

from mmjax.convert import hf_clip, hf_lm
from mmjax.convert.safetensors_io import KeyConsumer, load_safetensors
from mmjax.data.llava_data import ImageConfig
from mmjax.layout.anyres import CLIP_MEAN, CLIP_STD, SIGLIP_MEAN, SIGLIP_STD
from mmjax.models.llava import LlavaConfig

log = logging.getLogger(__name__)
ARCHITECTURES = {"llava": "LlavaForConditionalGeneration", "llava_next": "LlavaNextForConditionalGeneration",
                 "llava_onevision": "LlavaOnevisionForConditionalGeneration"}
_PARTS = ("vision_tower.", "multi_modal_projector.", "language_model.", "image_newline", "lm_head.")


class LoadedLlava(NamedTuple):
    config: LlavaConfig
    image: ImageConfig
    params: dict[str, Any]
    skipped: dict[str, tuple[str, ...]]  # reason -> checkpoint keys deliberately not loaded


def _read_json(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    return json.loads((path / "config.json" if path.is_dir() else path).read_text())


def _image_norm(vision_type: str, preprocessor: dict[str, Any] | None) -> tuple[tuple, tuple]:
    if preprocessor and "image_mean" in preprocessor:
        return tuple(preprocessor["image_mean"]), tuple(preprocessor["image_std"])
    if vision_type.startswith("siglip"):
        return SIGLIP_MEAN, SIGLIP_STD
    return CLIP_MEAN, CLIP_STD


def llava_config_from_hf(hf: dict[str, Any] | str | os.PathLike, *, preprocessor: dict[str, Any] | None = None,
                         **lm_overrides: Any) -> tuple[LlavaConfig, ImageConfig]:
    """(LlavaConfig, ImageConfig) from a HF LLaVA-family config.json (dict, file or checkpoint directory)."""
    if not isinstance(hf, dict):
        directory = Path(hf) if Path(hf).is_dir() else Path(hf).parent
        pre = directory / "preprocessor_config.json"
        preprocessor = preprocessor or (json.loads(pre.read_text()) if pre.exists() else None)
        hf = _read_json(hf)
    arch = hf.get("model_type")
    if arch not in ARCHITECTURES:
        raise ValueError(f"config.json model_type {arch!r} is not one of {sorted(ARCHITECTURES)}")
    layer = hf.get("vision_feature_layer", -1 if arch == "llava_onevision" else -2)
    if not isinstance(layer, int):
        raise NotImplementedError(f"vision_feature_layer {layer!r}: concatenating several layers is not supported")
    strategy = hf.get("vision_feature_select_strategy", "full" if arch == "llava_onevision" else "default")
    if hf.get("projector_hidden_act", "gelu") != "gelu" or not hf.get("multimodal_projector_bias", True):
        raise NotImplementedError("only the GELU projector with biases (mlp2x_gelu) is supported")
    text = dict(hf["text_config"])
    tie = bool(hf.get("tie_word_embeddings") or text.get("tie_word_embeddings"))
    lm = hf_lm.config_from_hf(text, **({"tie_embeddings": tie} | lm_overrides))
    vision = _vit_fields(hf)
    vision.pop("final_norm")
    vision_type = hf["vision_config"].get("model_type", "clip_vision_model")
    mean, std = _image_norm(vision_type, preprocessor)
    size = hf_clip.hf_image_size(hf)[0]
    cfg = LlavaConfig(lm=lm, vision=tuple(sorted(vision.items())), feature_layer=layer,
                      drop_cls=strategy == "default", projector="mlp2x_gelu", image_newline=arch != "llava",
                      image_token_id=int(hf.get("image_token_index", hf.get("image_token_id", 32000))),
                      image_mean=mean, image_std=std)
    patch = vision["patch_size"][0]
    if arch == "llava":
        image = ImageConfig(mode="pad", size=size, patch_size=patch)
    else:
        hf_pins = hf.get("image_grid_pinpoints") or [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
        pins = tuple((int(w), int(h)) for h, w in hf_pins)  # HF (h, w) -> mmjax (w, h), order kept
        ratio = hf.get("vision_aspect_ratio", "anyres_max_9") if arch == "llava_onevision" else ""
        anyres_max = int(ratio.removeprefix("anyres_max_")) if ratio.startswith("anyres_max_") else 0
        image = ImageConfig(mode="anyres", size=size, patch_size=patch, pinpoints=pins, anyres_max=anyres_max,
                            newline=True, multi_image="base" if arch == "llava_onevision" else "same",
                            taps=4 if arch == "llava_onevision" else 1)
    return cfg, image


def _vit_fields(config_json: dict[str, Any]) -> dict[str, Any]:
    """ViT fields of the tower in a (LLaVA or CLIP/SigLIP) config.json. SigLIP-so400m/14 runs at 384px, which is
    not a multiple of 14: the patch conv drops the last 6 pixels (27x27 patches). `hf_clip` refuses such sizes, so
    it is shown the size the patches actually cover; the size is not a ViT field either way."""
    section = dict(config_json.get("vision_config") or config_json)
    patch = section.get("patch_size", 14)
    patch = patch if isinstance(patch, int) else patch[0]
    size = section.get("image_size")
    if isinstance(size, int):
        section["image_size"] = size // patch * patch
    return hf_clip.clip_vit_config_from_hf(section)


def _normalise(key: str) -> tuple[str, str] | None:
    """(part, key within the part) of a checkpoint key in any of the three spellings; None if unknown."""
    if key.startswith("model.") and key[len("model."):].startswith(_PARTS):
        key = key[len("model."):]
    if key.startswith("vision_tower."):
        rest = key[len("vision_tower."):]
        return "vision", rest.removeprefix("vision_model.")
    if key.startswith("multi_modal_projector."):
        return "projector", key[len("multi_modal_projector."):]
    if key == "image_newline":
        return "newline", key
    if key.startswith("lm_head."):
        return "lm", key
    if key.startswith("language_model."):
        rest = key[len("language_model."):]
        return "lm", rest if rest.startswith(("model.", "lm_head.")) else "model." + rest
    return None


def hf_to_params(tensors: dict[str, np.ndarray], cfg: LlavaConfig, *, image_size: int,
                 source: str = "checkpoint") -> tuple[dict[str, Any], dict[str, tuple[str, ...]]]:
    """(mmjax Llava params as numpy, skipped keys by reason) from HF tensors; raises listing every problem."""
    parts: dict[str, dict[str, np.ndarray]] = {"vision": {}, "projector": {}, "newline": {}, "lm": {}}
    original: dict[str, str] = {}  # normalised vision key -> checkpoint key, for the report
    unknown = []
    for key, value in tensors.items():
        where = _normalise(key)
        if where is None:
            unknown.append(key)
            continue
        parts[where[0]][where[1]] = value
        if where[0] == "vision":
            original[where[1]] = key
    skipped: dict[str, list[str]] = {}
    vision = parts["vision"]
    for key in [k for k in vision if k.startswith("post_layernorm.")]:
        skipped.setdefault("vision post_layernorm (LLaVA reads an inner layer)", []).append(original[key])
        del vision[key]
    problems = [f"  keys of no LLaVA part: {unknown[:10]}"] if unknown else []
    params: dict[str, Any] = {}
    dtype = jnp.dtype(cfg.lm.param_dtype)
    try:
        params["vision_tower"], report = hf_clip.convert_hf_vision_tensors(
            vision, cfg.tower(), image_size=image_size, prefix="", truncate=True, allow_outside_keys=False,
            source=f"{source} (vision tower)")
        for reason, keys in report.skipped.items():
            skipped.setdefault(f"vision: {reason}", []).extend(original.get(k, k) for k in keys)
    except ValueError as e:
        problems.append(str(e))
    consumer = KeyConsumer(parts["projector"], f"{source} (projector)")
    projector: dict[str, Any] = {}
    depth = len([k for k in parts["projector"] if k.endswith(".weight")])
    width = dict(cfg.vision)["width"]
    for i in range(1, max(depth, 2) + 1):
        fan_in = width if i == 1 else cfg.lm.hidden_size
        w = consumer.take(f"linear_{i}.weight", (cfg.lm.hidden_size, fan_in))
        b = consumer.take(f"linear_{i}.bias", (cfg.lm.hidden_size,))
        if w is not None and b is not None:
            projector[f"linear_{i}"] = {"kernel": np.asarray(w, dtype).T, "bias": np.asarray(b, dtype)}
    if depth and f"mlp{depth}x_gelu" != cfg.projector:
        problems.append(f"  projector has {depth} layers, config says {cfg.projector}")
    try:
        consumer.finish()
    except ValueError as e:
        problems.append(str(e))
    params["projector"] = projector
    if cfg.image_newline:
        newline = parts["newline"].get("image_newline")
        if newline is None or newline.shape != (cfg.lm.hidden_size,):
            problems.append(f"  image_newline missing or mis-shaped (need ({cfg.lm.hidden_size},))")
        else:
            params["image_newline"] = np.asarray(newline, dtype)
    elif parts["newline"]:
        problems.append("  checkpoint has image_newline but the config has no newline")
    try:
        params["lm"] = hf_lm.hf_to_params(parts["lm"], cfg.lm, source=f"{source} (language model)")
    except ValueError as e:
        problems.append(str(e))
    if problems:
        raise ValueError(f"{source} does not match the LLaVA config:\n" + "\n".join(problems))
    return params, {r: tuple(sorted(k)) for r, k in skipped.items()}


def load_hf_llava(path: str | os.PathLike, **lm_overrides: Any) -> LoadedLlava:
    """(config, image config, params, skipped) from a HF LLaVA / NeXT / OneVision checkpoint directory.
    `lm_overrides` change LMConfig fields (e.g. scan_layers=False, dtype='bfloat16')."""
    path = Path(path)
    directory = path if path.is_dir() else path.parent
    cfg, image = llava_config_from_hf(directory, **lm_overrides)
    params, skipped = hf_to_params(load_safetensors(path), cfg, image_size=image.size, source=str(path))
    for reason, keys in skipped.items():
        log.info("%s: skipped %d keys: %s", path, len(keys), reason)
    return LoadedLlava(cfg, image, params, skipped)


def load_vision_tower(path: str | os.PathLike, cfg: LlavaConfig, image_size: int) -> dict[str, Any]:
    """A released CLIP / SigLIP tower (standalone, full CLIPModel/SiglipModel, or nested) as the `vision_tower`
    params of `cfg`, for the start of stage 1. The config.json beside the weights must describe the same tower;
    its blocks after `cfg.feature_layer` and its post_layernorm are skipped (and logged), like `hf_to_params`."""
    path = Path(path)
    tensors = load_safetensors(path)
    prefix = hf_clip.detect_prefix(tensors)
    config = (path if path.is_dir() else path.parent) / "config.json"
    if config.exists():
        want = _vit_fields(json.loads(config.read_text()))
        have = cfg.vision_dict
        wrong = [f"{k}: config.model.vision has {have.get(k)!r}, {config} says {v!r}" for k, v in want.items()
                 if k != "final_norm" and have.get(k) != v and not (k == "ln_eps" and np.isclose(have.get(k), v))]
        if wrong:
            raise ValueError("vision tower does not match the checkpoint:\n  " + "\n  ".join(wrong))
    dropped = sorted(k for k in tensors if k.startswith(prefix + "post_layernorm."))
    tensors = {k: v for k, v in tensors.items() if k not in dropped}
    params, _ = hf_clip.convert_hf_vision_tensors(tensors, cfg.tower(), image_size=image_size, prefix=prefix,
                                                  truncate=True, source=str(path))
    log.info("%s: skipped %d post_layernorm tensors (LLaVA reads an inner layer)", path, len(dropped))
    return params
