"""LLaVA family: vision tower + projector + LM, with image features spliced into the token sequence.

    pixels (B, S, N, H, W, 3) --tower--> per-tile patch features --projector--> (B, S*N*P, D) --+
    ids (B, T) with image_token_id at image positions --embed------------------------------------+--splice--> LM

S image slots per sample (several images, or none: a sample's image count is just how many of its slots its
token map uses), N tiles per slot (1 for LLaVA-1/1.5; 1 + grid tiles for AnyRes; frames for video), P patches
per tile. Each image position of `ids` takes its embedding from the projected features through a token map
(`mmjax.layout.token_maps`, applied by `mmjax.models.llava_packing.splice`): identity order for LLaVA-1/1.5,
unpad + newline (+ bilinear reduction) for LLaVA-NeXT / OneVision. Shapes are static, so one jit-compiled
program serves every batch.

Vision tower: a `mmjax.models.vit.ViT` configured as CLIP or SigLIP (`VISION_PRESETS`). LLaVA reads an inner
layer (`feature_layer`, HF numbering: -2 = output of the second-to-last block for CLIP; -1 for OneVision's SigLIP,
whose released tower already has its last block removed), so the tower is built with only the blocks that layer
needs: the rest (and the post-LayerNorm / pooling head) would never influence the output. CLIP's class token is
dropped (`drop_cls`); SigLIP has none. Pixels arrive as uint8 and are normalised here with the tower's mean/std.

Param tree: vision_tower/..., projector/linear_{k}, lm/... (mmjax.models.lm), image_newline (NeXT / OneVision).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mmjax.layout.anyres import CLIP_MEAN, CLIP_STD
from mmjax.models.llava_packing import splice
from mmjax.models.lm import LM, LMConfig, get_config
from mmjax.models.projector import Projector, projector_depth
from mmjax.models.vit import ViT, decode_variant, vit_from_config
from mmjax.nn.layers import partitioned

# ViT fields that make the mmjax ViT exactly HF's CLIPVisionModel / SiglipVisionModel (minus unused heads).
VISION_PRESETS: dict[str, dict[str, Any]] = {
    "clip": dict(act="quick_gelu", patch_bias=False, cls_in_posemb=True, ln_pre=True, ln_eps=1e-5,
                 pool_type="tok", posemb="learned"),
    "siglip": dict(act="gelu_tanh", patch_bias=True, cls_in_posemb=False, ln_pre=False, ln_eps=1e-6,
                   pool_type="none", posemb="learned"),
}


def vision_fields(preset: str = "", **fields: Any) -> dict[str, Any]:
    """ViT fields of a tower: a preset's quirks plus explicit dims; a `variant` ("L/14") is expanded to dims."""
    if preset and preset not in VISION_PRESETS:
        raise ValueError(f"unknown vision preset {preset!r}; known: {sorted(VISION_PRESETS)}")
    out = dict(VISION_PRESETS.get(preset, {}))
    variant = fields.pop("variant", None)
    if variant:
        out.update(decode_variant(variant))
    out.update(fields)
    if isinstance(out.get("patch_size"), int):
        out["patch_size"] = (out["patch_size"], out["patch_size"])
    return out


@dataclasses.dataclass(frozen=True)
class LlavaConfig:
    """A LLaVA model. `vision` holds ViT fields of the full released tower (its `depth` as released)."""

    lm: LMConfig
    vision: tuple[tuple[str, Any], ...]
    feature_layer: int = -2          # HF hidden_states numbering: 0 = embeddings, i = output of block i
    drop_cls: bool = True            # reference select_feature 'patch' (HF 'default'); False for SigLIP
    projector: str = "mlp2x_gelu"
    image_newline: bool = False      # learned newline vector (LLaVA-NeXT, OneVision)
    image_token_id: int = -200       # id marking image positions in `ids` (need not be in the LM vocabulary)
    image_mean: tuple[float, float, float] = CLIP_MEAN
    image_std: tuple[float, float, float] = CLIP_STD

    def __post_init__(self):
        projector_depth(self.projector)
        depth = self.vision_dict["depth"]
        if not -depth <= self.feature_layer <= depth or self.feature_layer == 0:
            raise ValueError(f"LlavaConfig: feature_layer {self.feature_layer} is not a block output of a "
                             f"{depth}-block tower")
        if self.drop_cls and self.vision_dict.get("pool_type") != "tok":
            raise ValueError("LlavaConfig: drop_cls needs a tower with a class token (pool_type='tok')")

    @property
    def vision_dict(self) -> dict[str, Any]:
        return dict(self.vision)

    @property
    def tower_depth(self) -> int:
        """Blocks actually run: those up to `feature_layer`."""
        depth = self.vision_dict["depth"]
        return self.feature_layer if self.feature_layer > 0 else depth + 1 + self.feature_layer

    @property
    def patch_size(self) -> int:
        return int(self.vision_dict["patch_size"][0])

    def tower(self) -> ViT:
        fields = self.vision_dict | dict(depth=self.tower_depth, final_norm="none", num_classes=0)
        fields.setdefault("dtype", self.lm.dtype)
        fields.setdefault("param_dtype", self.lm.param_dtype)
        return vit_from_config(fields)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LlavaConfig:
        """From `config.model`: {lm: {preset?, ...}, vision: {preset?, variant?, ...}, feature_layer, ...}."""
        d = dict(d)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown config.model field(s) {unknown}; known: {sorted(known)}")
        lm = dict(d.pop("lm"))
        preset = lm.pop("preset", "")
        lm_cfg = get_config(preset, **lm) if preset else LMConfig.from_dict(lm)
        vision = vision_fields(**dict(d.pop("vision")))
        vision = {k: tuple(v) if isinstance(v, list) else v for k, v in vision.items()}
        for key in ("image_mean", "image_std"):
            if key in d:
                d[key] = tuple(float(x) for x in d[key])
        return cls(lm=lm_cfg, vision=tuple(sorted(vision.items())), **d)

    def replace(self, **overrides: Any) -> LlavaConfig:
        return dataclasses.replace(self, **overrides)


class Llava(nn.Module):
    """ids (B, T) + pixels (B, S, N, H, W, 3) uint8 -> float32 logits (B, T, vocab)."""

    cfg: LlavaConfig

    def setup(self):
        cfg = self.cfg
        dtype, param_dtype = jnp.dtype(cfg.lm.dtype), jnp.dtype(cfg.lm.param_dtype)
        self.vision_tower = cfg.tower()
        self.projector = Projector(cfg.projector, cfg.lm.hidden_size, dtype=dtype, param_dtype=param_dtype)
        self.lm = LM(cfg.lm)
        if cfg.image_newline:
            init = nn.initializers.normal(cfg.lm.hidden_size ** -0.5)
            self.image_newline = self.param("image_newline", partitioned(init, ("embed",)), (cfg.lm.hidden_size,),
                                            param_dtype)

    def encode_images(self, pixels: jax.Array) -> jax.Array:
        """(B, S, N, H, W, 3) uint8 (or float 0..255) -> projected features (B, S*N*P, D), tile-major."""
        cfg = self.cfg
        b, s, n, h, w, c = pixels.shape
        x = pixels.reshape(b * s * n, h, w, c).astype(jnp.float32) * np.float32(1.0 / 255.0)
        x = (x - jnp.asarray(cfg.image_mean, jnp.float32)) / jnp.asarray(cfg.image_std, jnp.float32)
        _, extras = self.vision_tower(x)
        feats = extras["encoded"]  # output of the last block run = hidden_states[feature_layer]
        if cfg.drop_cls:
            feats = feats[:, 1:]
        feats = self.projector(feats)
        return feats.reshape(b, s * n * feats.shape[1], feats.shape[-1])

    def embed(self, ids: jax.Array, pixels: jax.Array | None = None, image_index: jax.Array | None = None,
              image_weight: jax.Array | None = None) -> jax.Array:
        """The LM's input embeddings (B, T, D) with image features at image positions (see llava_packing)."""
        is_image = ids == self.cfg.image_token_id
        text = self.lm.embed(jnp.where(is_image, 0, ids))
        if pixels is None:
            return text
        feats = self.encode_images(pixels)
        newline = self.image_newline if self.cfg.image_newline else jnp.zeros((feats.shape[-1],), feats.dtype)
        return splice(text, feats, newline, is_image, image_index, image_weight)

    def __call__(self, ids: jax.Array, pixels: jax.Array | None = None, *, image_index: jax.Array | None = None,
                 image_weight: jax.Array | None = None, mask: jax.Array | None = None,
                 positions: jax.Array | None = None) -> jax.Array:
        """Logits; `mask` (B, T) bool marks real tokens, which the processor right-pads: they reach attention as
        lengths, so the causal kernel runs without a dense (B, 1, T, T) padding bias (see mmjax.nn.attention)."""
        embeds = self.embed(ids, pixels, image_index, image_weight)
        lengths = None if mask is None else jnp.sum(mask, axis=-1, dtype=jnp.int32)
        return self.lm(embeds=embeds, kv_lengths=lengths, positions=positions)
