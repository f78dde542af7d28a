"""Hugging Face LlamaForCausalLM / PhiForCausalLM / Qwen2ForCausalLM safetensors <-> mmjax LM params.

The mapping is derived from the mmjax parameter tree itself (abstract init, no compute): every mmjax parameter has
exactly one HF tensor, found by a naming rule and reshaped by the kind of layer it belongs to, so adding a switch
to LMConfig (biases, QK-norm, tied head) needs no new table here. HF keeps q/k projections in the rotate-half RoPE
layout that mmjax.nn.posemb uses, so no row permutation is needed. Linear weights are (out, in) in HF and
(in, out) in mmjax; attention projections additionally keep their head structure, (embed, heads, head_dim).

Show-o's release stores the same Phi layout under a 'showo.' prefix: `load_hf_lm(path, cfg, prefix="showo.")`.
Import needs only numpy + safetensors; torch is never imported.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from mmjax.convert.safetensors_io import KeyConsumer, load_safetensors, save_safetensors, strip_prefix
from mmjax.models.lm import LM, LMConfig, stack_layers, unstack_layers

_HF_ACT = {"silu": "swiglu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}
_ARCH = {"llama": "LlamaForCausalLM", "phi": "PhiForCausalLM", "qwen2": "Qwen2ForCausalLM"}


def config_from_hf(hf: dict[str, Any] | str | os.PathLike, **overrides: Any) -> LMConfig:
    """LMConfig from a HF config.json (dict, file, or checkpoint directory), plus field overrides.

    Reads RoPE settings from `rope_parameters` (transformers v5) or the older top-level fields; refuses RoPE
    scaling and sliding windows, which this LM does not implement.
    """
    if not isinstance(hf, dict):
        path = Path(hf)
        hf = json.loads((path / "config.json" if path.is_dir() else path).read_text())
    family = hf.get("model_type")
    if family not in _ARCH:
        raise ValueError(f"config.json model_type {family!r} is not one of {sorted(_ARCH)}")
    rope = dict(hf.get("rope_parameters") or {})
    scaling = hf.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", scaling.get("rope_type", scaling.get("type", "default")))
    if rope_type != "default":
        raise NotImplementedError(f"RoPE scaling {rope_type!r} is not supported")
    if hf.get("use_sliding_window"):
        raise NotImplementedError("sliding-window attention is not supported")
    heads = hf["num_attention_heads"]
    act = hf.get("hidden_act", "silu")
    if act not in _HF_ACT:
        raise ValueError(f"config.json hidden_act {act!r} is not one of {sorted(_HF_ACT)}")
    fields: dict[str, Any] = dict(
        family=family, vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"],
        num_layers=hf["num_hidden_layers"], num_heads=heads, num_kv_heads=hf.get("num_key_value_heads") or heads,
        mlp_dim=hf["intermediate_size"], act=_HF_ACT[act], rope_theta=float(rope.get("rope_theta",
                                                                                    hf.get("rope_theta", 1e4))),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        max_len=hf.get("max_position_embeddings", 4096))
    head_dim = hf.get("head_dim")
    if head_dim and head_dim != hf["hidden_size"] // heads:
        fields["head_dim"] = head_dim
    if family == "phi":
        fields.update(norm="layernorm", norm_eps=hf.get("layer_norm_eps", 1e-5), parallel_block=True,
                      qkv_bias=True, out_bias=True, mlp_bias=True, lm_head_bias=True,
                      rotary_pct=float(rope.get("partial_rotary_factor", hf.get("partial_rotary_factor", 0.5))),
                      qk_norm="layernorm" if hf.get("qk_layernorm") else None)
    else:
        bias = family == "qwen2" or bool(hf.get("attention_bias", False))
        fields.update(norm="rmsnorm", norm_eps=hf.get("rms_norm_eps", 1e-6), qkv_bias=bias,
                      out_bias=family == "llama" and bias, mlp_bias=bool(hf.get("mlp_bias", False)))
    return LMConfig.from_dict({**fields, **overrides})


def config_to_hf(cfg: LMConfig) -> dict[str, Any]:
    """A HF config.json dict equivalent to `cfg` (refusing settings the HF class cannot express)."""
    rope = {"rope_type": "default", "rope_theta": cfg.rope_theta}
    hf: dict[str, Any] = dict(
        architectures=[_ARCH[cfg.family]], model_type=cfg.family, vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size, intermediate_size=cfg.mlp_dim, num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.kv_heads, max_position_embeddings=cfg.max_len,
        tie_word_embeddings=cfg.tie_embeddings, rope_theta=cfg.rope_theta, rope_parameters=rope)
    if cfg.head_dim:
        hf["head_dim"] = cfg.head_dim
    problems = []
    if cfg.family == "phi":
        problems += [] if cfg.parallel_block and cfg.norm == "layernorm" else ["phi needs a parallel LN block"]
        problems += [] if cfg.qk_norm in (None, "layernorm") else [f"phi qk_norm {cfg.qk_norm}"]
        rope["partial_rotary_factor"] = cfg.rotary_pct
        hf.update(hidden_act="gelu_new", layer_norm_eps=cfg.norm_eps, qk_layernorm=cfg.qk_norm is not None,
                  partial_rotary_factor=cfg.rotary_pct)
    else:
        problems += [] if cfg.norm == "rmsnorm" and not cfg.parallel_block else ["needs sequential RMSNorm"]
        problems += [] if cfg.qk_norm is None and cfg.rotary_pct == 1.0 else ["QK-norm / partial RoPE"]
        if cfg.family == "qwen2":
            problems += [] if cfg.qkv_bias and not cfg.out_bias and not cfg.mlp_bias else ["qwen2 bias layout"]
        else:
            problems += [] if cfg.qkv_bias == cfg.out_bias else ["llama attention_bias covers q, k, v and o"]
            hf.update(attention_bias=cfg.qkv_bias, mlp_bias=cfg.mlp_bias)
        hf.update(hidden_act="silu", rms_norm_eps=cfg.norm_eps)
    if cfg.act != {"phi": "gelu_tanh"}.get(cfg.family, "swiglu"):
        problems.append(f"activation {cfg.act}")
    if problems:
        raise NotImplementedError(f"{_ARCH[cfg.family]} cannot express this LMConfig: {problems}")
    return hf


def _hf_name(path: tuple[str, ...], cfg: LMConfig) -> tuple[str, str]:
    """(HF tensor name, layer kind) of the unrolled mmjax parameter at `path`."""
    *mods, leaf = path
    suffix = "bias" if leaf == "bias" else "weight"
    if mods == ["embed_tokens"]:
        return "model.embed_tokens.weight", "same"
    if mods == ["lm_head"]:
        return f"lm_head.{suffix}", "linear" if leaf == "kernel" else "same"
    if mods == ["final_norm"]:
        return f"model.{'final_layernorm' if cfg.family == 'phi' else 'norm'}.{suffix}", "same"
    layer, *names = mods
    module = names[-1]
    if cfg.family == "phi" and module in ("q_norm", "k_norm"):
        names[-1] = module[0] + "_layernorm"
    kind = "same"
    if module in ("q_proj", "k_proj", "v_proj"):
        kind = "heads_in" if leaf == "kernel" else "heads_bias"
    elif module in ("o_proj", "dense") and leaf == "kernel":
        kind = "heads_out"
    elif leaf == "kernel":
        kind = "linear"
    return f"model.layers.{layer.split('_')[1]}.{'.'.join(names)}.{suffix}", kind


def _hf_shape(kind: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    rest = lambda dims: int(np.prod(dims))
    return {"heads_in": lambda: (rest(shape[1:]), shape[0]), "heads_bias": lambda: (rest(shape),),
            "heads_out": lambda: (shape[-1], rest(shape[:-1])), "linear": lambda: shape[::-1],
            "same": lambda: shape}[kind]()


def _to_mmjax(kind: str, w: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    return w.T.reshape(shape) if kind in ("heads_in", "heads_out", "linear") else w.reshape(shape)


def _to_hf(kind: str, x: np.ndarray) -> np.ndarray:
    if kind == "heads_in":
        return x.reshape(x.shape[0], -1).T
    if kind == "heads_out":
        return x.reshape(-1, x.shape[-1]).T
    if kind == "linear":
        return x.T
    return x.reshape(-1) if kind == "heads_bias" else x


def _param_shapes(cfg: LMConfig) -> dict[tuple[str, ...], tuple[int, ...]]:
    """Unrolled mmjax parameter shapes, from an abstract init (no memory, no compute)."""
    model = LM(cfg.replace(scan_layers=False, remat_policy="none"))
    tree = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 1), jnp.int32))["params"]
    return {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(nn.unbox(tree)).items()}


def hf_to_params(tensors: dict[str, np.ndarray], cfg: LMConfig, *, prefix: str = "",
                 source: str = "checkpoint") -> dict[str, Any]:
    """mmjax params (numpy, cfg.param_dtype, scanned or unrolled per cfg.scan_layers) from HF tensors.

    Every tensor must be consumed and every shape must match, else one ValueError lists all the problems.
    Stored RoPE tables (`rotary_emb.inv_freq`) are ignored: mmjax recomputes them.
    """
    consumer = KeyConsumer(strip_prefix(tensors, prefix), source,
                           ignore=lambda k: k.endswith("rotary_emb.inv_freq"))
    dtype = jnp.dtype(cfg.param_dtype)
    flat = {}
    for path, shape in _param_shapes(cfg).items():
        name, kind = _hf_name(path, cfg)
        w = consumer.take(name, _hf_shape(kind, shape))
        if w is not None:
            flat[path] = np.asarray(_to_mmjax(kind, w, shape), dtype)
    if cfg.tie_embeddings and "lm_head.weight" in consumer:  # some tied checkpoints store the head anyway
        head = consumer.take("lm_head.weight", (cfg.vocab_size, cfg.hidden_size))
        emb = consumer.tensors.get("model.embed_tokens.weight")
        if head is not None and emb is not None and not np.array_equal(head, emb):
            raise ValueError(f"{source}: config ties the embeddings but lm_head.weight differs from them")
    consumer.finish()
    params = traverse_util.unflatten_dict(flat)
    return stack_layers(params, cfg.num_layers) if cfg.scan_layers else params


def params_to_hf(params: Any, cfg: LMConfig, dtype: Any = None) -> dict[str, np.ndarray]:
    """HF-named numpy tensors from mmjax params (boxed or not, scanned or unrolled per cfg.scan_layers)."""
    params = jax.device_get(nn.unbox(params))
    if "params" in params and len(params) == 1:
        params = params["params"]
    if cfg.scan_layers:
        params = unstack_layers(params, cfg.num_layers)
    out = {}
    for path, x in traverse_util.flatten_dict(params).items():
        name, kind = _hf_name(path, cfg)
        x = np.ascontiguousarray(_to_hf(kind, np.asarray(x)))
        out[name] = x if dtype is None else x.astype(jnp.dtype(dtype))
    return out


def load_hf_lm(path: str | os.PathLike, cfg: LMConfig | None = None, *, prefix: str = "",
               **overrides: Any) -> tuple[LMConfig, dict[str, Any]]:
    """(config, params) from a HF checkpoint: a directory (config.json + model.safetensors or shards), an
    index json, or a .safetensors file (then `cfg` is required). `overrides` change config fields, e.g.
    scan_layers=False or dtype='bfloat16'."""
    path = Path(path)
    if cfg is None:
        directory = path if path.is_dir() else path.parent
        if not (directory / "config.json").exists():
            raise FileNotFoundError(f"{directory}: no config.json; pass cfg= explicitly")
        cfg = config_from_hf(directory, **overrides)
    elif overrides:
        cfg = cfg.replace(**overrides)
    return cfg, hf_to_params(load_safetensors(path), cfg, prefix=prefix, source=str(path))


def save_hf_lm(params: Any, cfg: LMConfig, path: str | os.PathLike, *, dtype: Any = None,
               max_shard_bytes: int | None = None, write_config: bool = True) -> list[Path]:
    """Writes params as a HF checkpoint directory (safetensors, HF names, plus config.json), loadable by
    transformers' from_pretrained and by `load_hf_lm`."""
    files = save_safetensors(params_to_hf(params, cfg, dtype), path, max_shard_bytes=max_shard_bytes)
    if write_config:
        hf = config_to_hf(cfg)
        hf["dtype"] = str(jnp.dtype(dtype or cfg.param_dtype))
        (Path(path) / "config.json").write_text(json.dumps(hf, indent=2))
    return files
