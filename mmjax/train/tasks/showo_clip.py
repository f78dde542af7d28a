"""The frozen CLIP vision tower of "Show-o with CLIP-ViT" (`config.model.w_clip_vit=True`, section `config.vision`).

In that variant, multimodal understanding does not read discrete image tokens: the image goes through a frozen
CLIP ViT (ViT-L/14 at 336 px for the release, 576 patch features of its second-to-last layer, class token
dropped), the trainable `mm_projector` maps the features to the LM's width, and they are spliced into the MMU
rows' embeddings between `<|soi|>` and `<|eoi|>`. T2I and LM rows are unchanged (T2I still generates discrete
tokens). The tower lives in `model_state["vision_tower"]` like the image tokenizer: never in the optimised params.

config.vision:
  tower       ViT fields (`mmjax.models.vit.ViT`); the release's is `CLIP_L14` (= `clip_vit_l14()`)
  image_size  input side: 336 for the release (24 x 24 = 576 patches)
  hf          a HF CLIP checkpoint (directory or safetensors) to load, checked against `tower`
              (`mmjax.convert.hf_clip`); empty: a random tower drawn from `seed` (the tiny CPU configs)
  seed        seed of that random tower, so every run of a config sees the same frozen features
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mmjax import configlib
from mmjax.data import images as image_ops
from mmjax.models.showo import clip_features
from mmjax.models.vit import ViT, vit_from_config

VISION_FIELDS = ("tower", "image_size", "hf", "seed")
# HF `openai/clip-vit-large-patch14-336` as ViT fields: what `clip_vit_l14()` sets.
CLIP_L14 = dict(variant="L/14", act="quick_gelu", patch_bias=False, cls_in_posemb=True, ln_pre=True,
                final_norm="pooled", ln_eps=1e-5, pool_type="tok")


class ClipTower:
    """The tower of `config.vision`: its module, feature count and width, variables, and pixels -> features."""

    def __init__(self, cfg: ml_collections.ConfigDict):
        configlib.check_known(cfg, VISION_FIELDS, "vision")
        self.cfg = cfg
        self.model: ViT = vit_from_config(configlib.to_dict(cfg.tower))
        dims = self.model.dims()
        self.image_size = int(cfg.image_size)
        patch = dims["patch_size"]
        if self.image_size % patch[0] or self.image_size % patch[1]:
            raise configlib.ConfigError(f"config.vision.image_size {self.image_size} is not a multiple of the "
                                        f"tower's patch size {patch}")
        if self.model.pool_type != "tok" or dims["depth"] < 2:
            raise configlib.ConfigError("config.vision.tower: Show-o reads the patch tokens of the second-to-last "
                                        "layer, so the tower needs a class token (pool_type 'tok') and depth >= 2")
        self.num_features = (self.image_size // patch[0]) * (self.image_size // patch[1])
        self.width = int(dims["width"])
        self._variables: Any = None

    def init(self, rng: jax.Array) -> dict[str, Any]:
        """Fresh variables (shapes for the trainer's abstract init; values replaced by `variables()`)."""
        return self.model.init(rng, jnp.zeros((1, self.image_size, self.image_size, 3), jnp.float32))

    def variables(self) -> dict[str, Any]:
        """The frozen tower's variables as numpy: the HF checkpoint `hf`, else a random tower from `seed`."""
        if self._variables is None:
            if self.cfg.hf:
                from mmjax.convert.hf_clip import load_hf_vision_tower

                loaded = load_hf_vision_tower(self.cfg.hf, self.model, image_size=self.image_size)
                self._variables = {"params": loaded.params}
            else:
                variables = nn.unbox(jax.jit(self.init)(jax.random.key(int(self.cfg.seed))))
                self._variables = jax.tree.map(np.asarray, variables)
        return self._variables

    @functools.cached_property
    def _features(self):
        return jax.jit(lambda variables, pixels: clip_features(self.model, variables, pixels))

    def features(self, variables: Any, pixels: Any) -> jax.Array:
        """CLIP-normalised pixels (B, size, size, 3) -> features (B, F, width), second-to-last layer, no cls."""
        return self._features(variables, jnp.asarray(pixels, jnp.float32))

    def pixels(self, image: np.ndarray) -> np.ndarray:
        """uint8 (H, W, 3) -> float32 (size, size, 3) as CLIP's image processor: bicubic resize of the shortest
        edge, centre crop, (x / 255 - mean) / std."""
        if image.shape[:2] != (self.image_size, self.image_size):
            image = image_ops.center_crop(image_ops.resize_shortest_edge(image, self.image_size, method="bicubic"),
                                          self.image_size, self.image_size)
        return image_ops.normalize(image)
