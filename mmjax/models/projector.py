"""Vision-to-language projectors of the LLaVA family, chosen by name.

`linear`        Linear(vision_dim -> llm_dim)                               (LLaVA-1)
`mlp{N}x_gelu`  Linear(vision_dim -> llm_dim), then (GELU, Linear(llm_dim -> llm_dim)) x (N-1), with biases
                (`mlp2x_gelu`: LLaVA-1.5, LLaVA-NeXT, LLaVA-OneVision)

Layers are named `linear_1 ... linear_N` like the released checkpoints (`multi_modal_projector.linear_k`), so the
converter is a rename. The GELU is the exact (erf) one, as in the reference and transformers' `"gelu"`.
"""

from __future__ import annotations

import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.nn.layers import Dense, activation, constrain

_MLP = re.compile(r"^mlp(\d+)x_gelu$")


def projector_depth(kind: str) -> int:
    """Number of Linear layers of a projector name; refuses unknown names (listing the known forms)."""
    if kind == "linear":
        return 1
    m = _MLP.match(kind)
    if m and int(m.group(1)) >= 1:
        return int(m.group(1))
    raise ValueError(f"unknown projector {kind!r}; known: 'linear' and 'mlp<N>x_gelu' (e.g. 'mlp2x_gelu')")


class Projector(nn.Module):
    """(..., vision_dim) -> (..., features): the named projector (see the module docstring)."""

    kind: str
    features: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        depth = projector_depth(self.kind)
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        # First layer maps vision width -> LM width; later ones LM -> LM. Axis names alternate so that no kernel
        # names the same mesh axis twice.
        x = Dense(self.features, ("embed", "mlp"), name="linear_1", **kw)(x)
        for i in range(2, depth + 1):
            x = constrain(activation("gelu")(x), ("act_batch", "act_length", "act_mlp"))
            axes = ("mlp", "embed") if i % 2 == 0 else ("embed", "mlp")
            x = Dense(self.features, axes, name=f"linear_{i}", **kw)(x)
        return x
