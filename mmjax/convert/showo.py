"""Show-o's released checkpoints (HF `showlab/show-o`, `show-o-512x512`, `show-o-w-clip-vit`) <-> mmjax `Showo`.

The release is Phi-1.5 with QK LayerNorm under a `showo.` prefix (`showo.model.layers.N.self_attn.q_layernorm`,
`showo.model.embed_tokens`, `showo.lm_head`, ...: exactly HF `PhiForCausalLM(qk_layernorm=True)` names), plus
`mm_projector.0` / `mm_projector.2` (Linear(1024, 2048), Linear(2048, 2048)) in the CLIP-ViT variant. The LM part
goes through `mmjax.convert.hf_lm` (one mapping rule per layer kind, derived from the parameter tree); the
projector is mapped here; every tensor of the file must be consumed and every parameter found, else one error
lists all problems. Released `.bin` pickles are converted to safetensors once with torch (see
mmjax.convert.magvitv2); nothing here unpickles.

`phi_to_showo_params` starts Show-o training from Phi-1.5 itself: the 51,200 embedding / lm_head rows keep
Phi's weights, the rows of the added special, image and mask tokens are drawn fresh (normal, std 0.02; lm_head
bias 0), and the QK LayerNorms are left to their fresh init (w=1, b=0), as in the reference.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from mmjax.convert.hf_lm import config_from_hf, hf_to_params, params_to_hf
from mmjax.convert.safetensors_io import KeyConsumer, load_safetensors, save_safetensors
from mmjax.models.lm import LMConfig
from mmjax.models.showo import Showo, showo_lm_config
from mmjax.models.showo_layout import ShowoVocab

PREFIX = "showo."
PROJECTOR = {"fc1": "mm_projector.0", "fc2": "mm_projector.2"}


def _release_config(path: Path) -> dict[str, Any]:
    directory = path if path.is_dir() else path.parent
    file = directory / "config.json"
    return json.loads(file.read_text()) if file.is_file() else {}


def showo_to_params(tensors: dict[str, np.ndarray], cfg: LMConfig, *, w_clip_vit: bool = False,
                    source: str = "checkpoint") -> dict[str, Any]:
    """{"lm": ..., ["mm_projector": ...]} numpy params from a release's flat tensors (every key checked)."""
    projector = {k: v for k, v in tensors.items() if k.startswith("mm_projector.")}
    rest = {k: v for k, v in tensors.items() if not k.startswith("mm_projector.")}
    if projector and not w_clip_vit:
        raise ValueError(f"{source} holds an mm_projector (the CLIP-ViT variant) but w_clip_vit=False")
    unprefixed = sorted(k for k in rest if not k.startswith(PREFIX))
    if unprefixed:
        raise ValueError(f"{source}: tensors without the {PREFIX!r} prefix: {unprefixed[:10]}")
    params: dict[str, Any] = {"lm": hf_to_params(rest, cfg, prefix=PREFIX, source=source)}
    if w_clip_vit:
        consumer = KeyConsumer(projector, source)
        dtype = np.dtype(cfg.param_dtype)
        params["mm_projector"] = {}
        for name, key in PROJECTOR.items():
            w = consumer.take(f"{key}.weight")
            b = consumer.take(f"{key}.bias")
            if w is not None and b is not None:
                params["mm_projector"][name] = {"kernel": np.asarray(w.T, dtype), "bias": np.asarray(b, dtype)}
        consumer.finish()
        fc1, fc2 = params["mm_projector"]["fc1"]["kernel"], params["mm_projector"]["fc2"]["kernel"]
        if fc1.shape[1] != cfg.hidden_size or fc2.shape != (cfg.hidden_size, cfg.hidden_size):
            raise ValueError(f"{source}: mm_projector shapes {fc1.shape}, {fc2.shape} do not fit hidden "
                             f"{cfg.hidden_size}")
    return params


def load_showo_params(path: str | os.PathLike, cfg: LMConfig, *, w_clip_vit: bool | None = None) -> dict[str, Any]:
    """Params of a release (directory, index json or .safetensors file) for an LM config `cfg`."""
    path = Path(path)
    release = _release_config(path)
    if w_clip_vit is None:
        w_clip_vit = bool(release.get("w_clip_vit", False))
    if release.get("vocab_size") not in (None, cfg.vocab_size):
        raise ValueError(f"{path}: the release's vocab_size {release['vocab_size']} != the config's "
                         f"{cfg.vocab_size}")
    return showo_to_params(load_safetensors(path), cfg, w_clip_vit=w_clip_vit, source=str(path))


def load_showo(path: str | os.PathLike, cfg: LMConfig | None = None, *, vocab: ShowoVocab | None = None,
               w_clip_vit: bool | None = None, **overrides: Any) -> tuple[Showo, dict[str, Any]]:
    """(model, params) of a release. Defaults: Show-o's vocabulary and Phi-1.5 with QK-norm; the release's
    config.json, when present, decides `w_clip_vit` and is checked against the vocabulary size."""
    vocab = vocab or ShowoVocab()
    cfg = cfg.replace(**overrides) if cfg is not None else showo_lm_config(vocab, **overrides)
    release = _release_config(Path(path))
    if w_clip_vit is None:
        w_clip_vit = bool(release.get("w_clip_vit", False))
    params = load_showo_params(path, cfg, w_clip_vit=w_clip_vit)
    return Showo(cfg, vocab, w_clip_vit=w_clip_vit), params


def params_to_showo(params: Any, cfg: LMConfig, dtype: Any = None) -> dict[str, np.ndarray]:
    """Release-named tensors (`showo.` prefix, `mm_projector.{0,2}`) from mmjax Showo params."""
    params = jax.device_get(nn.unbox(params))
    out = {PREFIX + k: v for k, v in params_to_hf(params["lm"], cfg, dtype).items()}
    for name, key in PROJECTOR.items():
        if "mm_projector" in params:
            layer = params["mm_projector"][name]
            out[f"{key}.weight"] = np.ascontiguousarray(np.asarray(layer["kernel"]).T)
            out[f"{key}.bias"] = np.asarray(layer["bias"])
    if dtype is not None:
        out = {k: v.astype(np.dtype(dtype)) for k, v in out.items()}
    return out


def save_showo(params: Any, cfg: LMConfig, path: str | os.PathLike, vocab: ShowoVocab | None = None,
               dtype: Any = None) -> list[Path]:
    """Writes a release-layout directory: model.safetensors + a config.json with Show-o's own fields."""
    vocab = vocab or ShowoVocab()
    files = save_safetensors(params_to_showo(params, cfg, dtype), path)
    meta = {"w_clip_vit": "mm_projector" in nn.unbox(params), "vocab_size": vocab.vocab_size,
            "llm_vocab_size": vocab.text_vocab_size, "codebook_size": vocab.codebook_size}
    (Path(path) / "config.json").write_text(json.dumps(meta, indent=2))
    return files


def phi_to_showo_params(path: str | os.PathLike, cfg: LMConfig, vocab: ShowoVocab, seed: int = 0
                        ) -> dict[str, Any]:
    """Show-o's LM params initialised from a HF Phi-1.5 checkpoint directory (see the module docstring).

    The returned tree has no q/k LayerNorm entries: inserted into a fresh run (`Task.pretrained_variables`) those
    keep their fresh init. Architecture fields other than the vocabulary and QK-norm must match `cfg`.
    """
    phi = config_from_hf(path, scan_layers=cfg.scan_layers, param_dtype=cfg.param_dtype, dtype=cfg.dtype,
                         remat_policy=cfg.remat_policy, attention_backend=cfg.attention_backend,
                         max_len=cfg.max_len)
    arch = lambda c: {**dataclasses.asdict(c), "num_kv_heads": c.kv_heads, "head_dim": c.dim_per_head,
                      "vocab_size": None, "qk_norm": None}
    if arch(phi) != arch(cfg):
        diff = {k: (v, arch(cfg)[k]) for k, v in arch(phi).items() if v != arch(cfg)[k]}
        raise ValueError(f"{path}: the checkpoint's architecture differs from config.model: {diff}")
    if phi.vocab_size > vocab.vocab_size:
        raise ValueError(f"{path}: {phi.vocab_size} rows do not fit Show-o's {vocab.vocab_size}")
    params = hf_to_params(load_safetensors(path), phi, source=str(path))
    rng = np.random.default_rng(seed)
    extra = vocab.vocab_size - phi.vocab_size
    emb = params["embed_tokens"]["embedding"]
    params["embed_tokens"]["embedding"] = np.concatenate(
        [emb, rng.normal(0.0, 0.02, (extra, emb.shape[1])).astype(emb.dtype)])
    head = params["lm_head"]
    head["kernel"] = np.concatenate(
        [head["kernel"], rng.normal(0.0, 0.02, (head["kernel"].shape[0], extra)).astype(head["kernel"].dtype)], 1)
    if "bias" in head:
        head["bias"] = np.concatenate([head["bias"], np.zeros((extra,), head["bias"].dtype)])
    return params
