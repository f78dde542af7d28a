"""Decoder-only language model: LLaMA/Vicuna, Phi-1.5, Qwen2 (and Show-o's QK-norm Phi) from one config.

The families differ only in a handful of switches, so they share one module and one frozen `LMConfig`:
- LLaMA/Vicuna: RMSNorm, full RoPE, SwiGLU, optional GQA, no biases, untied head.
- Phi-1.5: parallel block `x + attn(LN(x)) + mlp(LN(x))` with ONE shared LayerNorm, partial RoPE (32 of 64
  dims), tanh-GELU, biases everywhere (lm_head too), final LayerNorm.
- Qwen2: LLaMA plus q/k/v biases, GQA, tied embeddings for the small sizes, rope_theta 1e6.
`family` only names the layout of released checkpoints (used by mmjax.convert.hf_lm); behaviour comes from the
other fields. Layers are either scanned (`nn.scan`, params stacked on a leading 'layers' axis, compile time
independent of depth) or unrolled; each block can be rematerialised with a named policy.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mmjax.nn.attention import Attention, KVCache
from mmjax.nn.embedding import TokenEmbedding, VocabHead
from mmjax.nn.layers import Mlp, constrain, norm
from mmjax.nn.scan import REMAT_POLICIES, maybe_remat

FAMILIES = ("llama", "phi", "qwen2")


@dataclasses.dataclass(frozen=True)
class LMConfig:
    """Architecture and execution settings of a decoder-only LM; unknown fields are refused."""

    family: str = "llama"          # checkpoint naming: llama | phi | qwen2
    vocab_size: int = 32000        # Show-o's extended vocabulary (58498) is just a bigger value here
    hidden_size: int = 4096
    num_layers: int = 32
    num_heads: int = 32
    num_kv_heads: int | None = None  # None = num_heads (no GQA)
    head_dim: int | None = None      # None = hidden_size // num_heads
    mlp_dim: int = 11008
    act: str = "swiglu"            # swiglu | gelu_tanh | gelu | ...
    norm: str = "rmsnorm"          # rmsnorm | layernorm
    norm_eps: float = 1e-5
    parallel_block: bool = False   # Phi: attention and MLP read the same normed input
    qkv_bias: bool = False
    out_bias: bool = False
    mlp_bias: bool = False
    lm_head_bias: bool = False
    tie_embeddings: bool = False
    rotary_pct: float = 1.0        # fraction of head_dim rotated (Phi: 0.5)
    rope_theta: float = 10000.0
    qk_norm: str | None = None     # Show-o: 'layernorm' over head_dim, before RoPE
    max_len: int = 4096            # positions the released model was trained for (informational)
    dtype: str = "float32"         # compute dtype
    param_dtype: str = "float32"
    attention_backend: str = "auto"
    scan_layers: bool = True
    remat_policy: str = "none"     # see REMAT_POLICIES
    vocab_pad_multiple: int = 1    # logits padded to a multiple of this (128 on GPU/TPU); pads score -1e30

    def __post_init__(self):
        checks = [
            (self.family in FAMILIES, f"family {self.family!r} not in {FAMILIES}"),
            (self.norm in ("rmsnorm", "layernorm"), f"norm {self.norm!r} not in (rmsnorm, layernorm)"),
            (self.num_heads % self.kv_heads == 0,
             f"num_heads {self.num_heads} is not a multiple of num_kv_heads {self.kv_heads}"),
            (self.rotary_dim % 2 == 0, f"rotary dim {self.rotary_dim} must be even"),
            (self.remat_policy in REMAT_POLICIES,
             f"remat_policy {self.remat_policy!r} not in {sorted(REMAT_POLICIES)}"),
            (not (self.tie_embeddings and self.lm_head_bias), "tied embeddings take no lm_head_bias"),
            (self.qk_norm in (None, "layernorm", "rmsnorm"),
             f"qk_norm {self.qk_norm!r} not in (None, layernorm, rmsnorm)"),
            (self.vocab_pad_multiple >= 1, f"vocab_pad_multiple {self.vocab_pad_multiple} must be >= 1"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(f"LMConfig: {msg}")

    @property
    def kv_heads(self) -> int:
        return self.num_kv_heads or self.num_heads

    @property
    def dim_per_head(self) -> int:
        return self.head_dim or self.hidden_size // self.num_heads

    @property
    def rotary_dim(self) -> int:
        return int(self.dim_per_head * self.rotary_pct)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LMConfig:
        """Builds a config from a mapping (e.g. a ConfigDict), naming any unknown field."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"LMConfig: unknown fields {unknown}; known: {sorted(known)}")
        return cls(**d)

    def replace(self, **overrides: Any) -> LMConfig:
        return LMConfig.from_dict({**dataclasses.asdict(self), **overrides})


_LLAMA2 = dict(family="llama", vocab_size=32000, act="swiglu", norm="rmsnorm", norm_eps=1e-5, max_len=4096)
_PHI = dict(family="phi", act="gelu_tanh", norm="layernorm", norm_eps=1e-5, parallel_block=True,
            qkv_bias=True, out_bias=True, mlp_bias=True, lm_head_bias=True, rotary_pct=0.5, max_len=2048)
_QWEN2 = dict(family="qwen2", act="swiglu", norm="rmsnorm", norm_eps=1e-6, qkv_bias=True, rope_theta=1e6,
              max_len=32768)

PRESETS: dict[str, dict[str, Any]] = {
    # Vicuna v1.5 = LLaMA-2 shapes (6,738,415,616 and 13,015,864,320 parameters).
    "vicuna-7b": dict(_LLAMA2, hidden_size=4096, num_layers=32, num_heads=32, mlp_dim=11008),
    "vicuna-13b": dict(_LLAMA2, hidden_size=5120, num_layers=40, num_heads=40, mlp_dim=13824),
    # 1,418,270,720 parameters.
    "phi-1.5": dict(_PHI, vocab_size=51200, hidden_size=2048, num_layers=24, num_heads=32, mlp_dim=8192),
    # Show-o's LM: Phi-1.5 with QK LayerNorm and the text + special + 8192 image-code vocabulary.
    "phi-1.5-showo": dict(_PHI, vocab_size=58498, hidden_size=2048, num_layers=24, num_heads=32, mlp_dim=8192,
                          qk_norm="layernorm"),
    # 494,032,768 (tied) and 7,615,616,512 parameters.
    "qwen2-0.5b": dict(_QWEN2, vocab_size=151936, hidden_size=896, num_layers=24, num_heads=14,
                       num_kv_heads=2, mlp_dim=4864, tie_embeddings=True),
    "qwen2-7b": dict(_QWEN2, vocab_size=152064, hidden_size=3584, num_layers=28, num_heads=28, num_kv_heads=4,
                     mlp_dim=18944),
    # CPU-sized variants of each family for tests and demos.
    "tiny-llama": dict(_LLAMA2, vocab_size=128, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                       mlp_dim=128, max_len=128),
    "tiny-phi": dict(_PHI, vocab_size=128, hidden_size=64, num_layers=2, num_heads=4, mlp_dim=128,
                     max_len=128),
    "tiny-qwen2": dict(_QWEN2, vocab_size=128, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                       mlp_dim=128, tie_embeddings=True, max_len=128),
}


def get_config(name: str, **overrides: Any) -> LMConfig:
    """A named preset (PRESETS) with fields overridden, e.g. get_config('phi-1.5', scan_layers=False)."""
    if name not in PRESETS:
        raise ValueError(f"unknown LM preset {name!r}; known: {sorted(PRESETS)}")
    return LMConfig.from_dict({**PRESETS[name], **overrides})


def init_cache(cfg: LMConfig, batch: int, max_len: int, dtype: Any = None) -> KVCache:
    """Empty KV cache for all layers, index 0: k, v stacked (layers, batch, max_len, kv_heads, head_dim) for a
    scanned model, or tuples of per-layer (batch, max_len, kv_heads, head_dim) arrays for an unrolled one, whose
    decode steps then update each layer's buffer in place instead of re-stacking the whole cache every token."""
    dtype = dtype or jnp.dtype(cfg.dtype)
    if cfg.scan_layers:
        return KVCache.zeros(batch, max_len, cfg.kv_heads, cfg.dim_per_head, dtype, num_layers=cfg.num_layers)
    one = lambda: jnp.zeros((batch, max_len, cfg.kv_heads, cfg.dim_per_head), dtype)
    return KVCache(tuple(one() for _ in range(cfg.num_layers)), tuple(one() for _ in range(cfg.num_layers)),
                   jnp.zeros((), jnp.int32))


class DecoderBlock(nn.Module):
    """One transformer block, sequential (pre-norm attention then pre-norm MLP) or Phi's parallel form.

    The call signature is scan-friendly: (x, mask, kv_lengths, positions, is_causal, cache_index, k, v) ->
    (x, (k, v) | None), where k, v are this layer's cache slices (or None when not decoding).
    """

    cfg: LMConfig

    @nn.compact
    def __call__(self, x, mask, kv_lengths, positions, is_causal, cache_index, cache_k, cache_v):
        cfg = self.cfg
        kw = dict(dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype))
        attn = Attention(num_heads=cfg.num_heads, head_dim=cfg.dim_per_head, num_kv_heads=cfg.kv_heads,
                         qkv_bias=cfg.qkv_bias, out_bias=cfg.out_bias, qk_norm=cfg.qk_norm,
                         qk_norm_eps=cfg.norm_eps, rotary_dim=cfg.rotary_dim, rope_theta=cfg.rope_theta,
                         backend=cfg.attention_backend, out_name="dense" if cfg.family == "phi" else "o_proj",
                         name="self_attn", **kw)
        mlp = Mlp(cfg.mlp_dim, act=cfg.act, use_bias=cfg.mlp_bias, name="mlp", **kw)
        cache = None if cache_k is None else KVCache(cache_k, cache_v, cache_index)
        h = norm(cfg.norm, cfg.norm_eps, name="input_layernorm", **kw)(x)
        out = attn(h, mask=mask, is_causal=is_causal, positions=positions, kv_lengths=kv_lengths, cache=cache)
        attn_out, new_cache = out if cache is not None else (out, None)
        if cfg.parallel_block:
            x = x + attn_out + mlp(h)
        else:
            x = x + attn_out
            h = norm(cfg.norm, cfg.norm_eps, name="post_attention_layernorm", **kw)(x)
            x = x + mlp(h)
        x = constrain(x, ("act_batch", "act_length", "act_embed"))
        return x, None if new_cache is None else (new_cache.k, new_cache.v)


def _block_class(cfg: LMConfig) -> type[nn.Module]:
    # static_argnums counts `self` as 0: is_causal (argument 5) selects a code path, so it must stay static.
    return maybe_remat(DecoderBlock, cfg.remat_policy, static_argnums=(5,), prevent_cse=not cfg.scan_layers)


class LM(nn.Module):
    """Decoder-only LM; params embed_tokens, layers (scanned) or layers_{i}, final_norm, lm_head (untied)."""

    cfg: LMConfig

    def setup(self):
        cfg = self.cfg
        kw = dict(dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype), pad_to=cfg.vocab_pad_multiple)
        self.embed_tokens = TokenEmbedding(cfg.vocab_size, cfg.hidden_size, **kw)
        block = _block_class(cfg)
        if cfg.scan_layers:
            scanned = nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True},
                              in_axes=(nn.broadcast,) * 5 + (0, 0), length=cfg.num_layers,
                              metadata_params={nn.PARTITION_NAME: "layers"})
            self.layers = scanned(cfg, name="layers")
        else:
            self.layers = [block(cfg, name=f"layers_{i}") for i in range(cfg.num_layers)]
        self.final_norm = norm(cfg.norm, cfg.norm_eps, dtype=jnp.dtype(cfg.dtype),
                               param_dtype=jnp.dtype(cfg.param_dtype))
        if not cfg.tie_embeddings:
            self.lm_head = VocabHead(cfg.vocab_size, use_bias=cfg.lm_head_bias, **kw)

    def embed(self, ids: jax.Array) -> jax.Array:
        """Token embeddings (B, T, hidden) in the compute dtype, to splice image features (LLaVA, Show-o)."""
        return self.embed_tokens(ids)

    def __call__(self, ids: jax.Array | None = None, *, positions: jax.Array | None = None,
                 mask: jax.Array | None = None, is_causal: bool = True, kv_lengths: jax.Array | None = None,
                 cache: KVCache | None = None, embeds: jax.Array | None = None,
                 columns: tuple[int, int] | None = None) -> jax.Array | tuple[jax.Array, KVCache]:
        """Float32 logits (B, T, vocab) for `ids` (B, T) or precomputed `embeds` (B, T, hidden); with
        `vocab_pad_multiple` > 1 the last axis is padded and the padded columns hold -1e30.

        mask: bool, True = attend, broadcastable to (B, 1, T, S); ANDed with the causal pattern when is_causal
        (pass is_causal=False with a full mask for prefix-LM / omni-attention). positions (B, T) default to
        arange(T) (+ cache.index). kv_lengths (B,) hides right padding without a dense mask (the fused causal
        kernel stays usable). `columns` (start, stop) computes the logits of those vocabulary ids only.
        With `cache` (see `init_cache`) also returns the updated cache.
        """
        if (ids is None) == (embeds is None):
            raise ValueError("pass exactly one of ids or embeds")
        x = self.embed(ids) if embeds is None else embeds.astype(jnp.dtype(self.cfg.dtype))
        x = constrain(x, ("act_batch", "act_length", "act_embed"))
        batch, length = x.shape[:2]
        index = jnp.zeros((), jnp.int32) if cache is None else cache.index
        if positions is None:
            positions = jnp.broadcast_to(index + jnp.arange(length, dtype=jnp.int32), (batch, length))
        ck, cv = (None, None) if cache is None else (cache.k, cache.v)
        if self.cfg.scan_layers:
            x, kv = self.layers(x, mask, kv_lengths, positions, is_causal, index, ck, cv)
        else:
            kvs = []
            for i, layer in enumerate(self.layers):
                x, kv_i = layer(x, mask, kv_lengths, positions, is_causal, index,
                                None if ck is None else ck[i], None if cv is None else cv[i])
                kvs.append(kv_i)
            if cache is None:
                kv = None
            elif isinstance(ck, tuple):  # per-layer buffers stay per-layer (see init_cache)
                kv = tuple(tuple(t) for t in zip(*kvs))
            else:
                kv = tuple(jnp.stack(t) for t in zip(*kvs))
        x = self.final_norm(x)
        logits = self.embed_tokens.attend(x, columns) if self.cfg.tie_embeddings else self.lm_head(x, columns)
        logits = constrain(logits.astype(jnp.float32), ("act_batch", "act_length", "act_vocab"))
        if cache is None:
            return logits
        return logits, KVCache(kv[0], kv[1], index + length)


def stack_layers(params: dict[str, Any], num_layers: int) -> dict[str, Any]:
    """Unrolled params (layers_0 ... layers_{L-1}) -> scanned layout (one `layers` tree, leading axis L)."""
    out = {k: v for k, v in params.items() if not k.startswith("layers_")}
    stack = lambda *xs: (np.stack if isinstance(xs[0], np.ndarray) else jnp.stack)(xs)  # numpy stays on host
    out["layers"] = jax.tree.map(stack, *[params[f"layers_{i}"] for i in range(num_layers)])
    return out


def unstack_layers(params: dict[str, Any], num_layers: int) -> dict[str, Any]:
    """Scanned params (`layers` with leading axis L) -> unrolled layout (layers_0 ... layers_{L-1})."""
    out = {k: v for k, v in params.items() if k != "layers"}
    for i in range(num_layers):
        out[f"layers_{i}"] = jax.tree.map(lambda x, i=i: x[i], params["layers"])
    return out


def unrolled_for_decoding(model: nn.Module, params: dict[str, Any]) -> tuple[nn.Module, dict[str, Any]]:
    """An unrolled copy of a scanned LM-based model (`model.cfg` an LMConfig) and its params, for generation.

    A scanned stack slices every layer's weights out of the stacked arrays on each decode step: on an H200 that
    copy made Phi-1.5's batch-1 decoding 1.5x slower (334 vs 512 tokens/s, docs/benchmarks.md). Unstacking once
    per `generate` call costs one copy of the weights. Models that are already unrolled come back unchanged.
    """
    cfg = model.cfg
    if not cfg.scan_layers:
        return model, params

    def unstack(tree: Any) -> Any:
        if not isinstance(tree, dict):
            return tree
        if "layers" in tree:
            return _unstack_jit(tree, cfg.num_layers)
        return {k: unstack(v) for k, v in tree.items()}

    return model.clone(cfg=cfg.replace(scan_layers=False)), unstack(params)


# One compiled copy instead of hundreds of eager slices (those cost ~0.1 s per generate call on an H200).
_unstack_jit = jax.jit(unstack_layers, static_argnums=1)
