"""Dense, MLP and norm layers whose parameters carry logical axis names.

Every parameter in mmjax is created through these helpers (or with the same `partitioned` initialiser), so that one
rule table in the config (`mmjax/train/sharding.py`) decides how each model is laid out over the device mesh. The
names below are the project's vocabulary of logical axes:

params:      embed, mlp, heads, kv_heads, head_dim, vocab, norm, layers, conv_in, conv_out
activations: act_batch, act_length, act_embed, act_heads, act_mlp, act_vocab
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any
Axes = tuple[str | None, ...]

default_kernel_init = nn.initializers.lecun_normal()
zeros = nn.initializers.zeros_init()
ones = nn.initializers.ones_init()


def partitioned(init: Callable, axes: Axes) -> Callable:
    """Wraps an initialiser so the created parameter is boxed with its logical axis names."""
    return nn.with_logical_partitioning(init, axes)


def constrain(x: jax.Array, axes: Axes) -> jax.Array:
    """Logical sharding constraint on an activation; a no-op outside a mesh with rules."""
    return nn.with_logical_constraint(x, axes)


def quick_gelu(x: jax.Array) -> jax.Array:
    """CLIP's GELU approximation x * sigmoid(1.702 x)."""
    return x * jax.nn.sigmoid(1.702 * x)


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu": lambda x: nn.gelu(x, approximate=False),
    "gelu_tanh": lambda x: nn.gelu(x, approximate=True),  # HF "gelu_new" / "gelu_pytorch_tanh"
    "quick_gelu": quick_gelu,
    "silu": nn.silu,
    "relu": nn.relu,
}


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
    """Looks an activation up by its config name, refusing unknown names with the list of known ones."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; known: {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


class Dense(nn.Module):
    """A linear map over the trailing `axis` dims with logical axis names on kernel and bias.

    `features` may be a tuple (e.g. (heads, head_dim)) and `axis` several dims (e.g. (-2, -1) for an attention output
    projection), so projections keep their head structure in the parameter and the rule table can shard heads over
    the `tensor` mesh axis. Parameters are `kernel` (in..., out...) and `bias` (out...), like `nn.DenseGeneral`.
    """

    features: int | Sequence[int]
    kernel_axes: Axes
    use_bias: bool = True
    axis: int | Sequence[int] = -1
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    kernel_init: Callable = default_kernel_init
    bias_init: Callable = zeros

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        features = (self.features,) if isinstance(self.features, int) else tuple(self.features)
        axes = (self.axis,) if isinstance(self.axis, int) else tuple(self.axis)
        axes = tuple(a % x.ndim for a in axes)
        in_shape = tuple(x.shape[a] for a in axes)
        if len(self.kernel_axes) != len(in_shape) + len(features):
            raise ValueError(f"{self.name}: kernel_axes {self.kernel_axes} do not match in {in_shape} x out {features}")
        # Initialise as a 2-D (fan_in, fan_out) matrix so fan-in/fan-out scaling ignores the head structure.
        flat_init = lambda key, shape, dtype: self.kernel_init(
            key, (_prod(in_shape), _prod(features)), dtype).reshape(shape)
        kernel = self.param("kernel", partitioned(flat_init, self.kernel_axes), in_shape + features,
                            self.param_dtype)
        x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
        y = jax.lax.dot_general(x, kernel, ((axes, tuple(range(len(axes)))), ((), ())))
        if self.use_bias:
            bias = self.param("bias", partitioned(self.bias_init, self.kernel_axes[len(in_shape):]), features,
                              self.param_dtype)
            y = y + jnp.asarray(bias, y.dtype)
        return y


def _prod(shape: Sequence[int]) -> int:
    out = 1
    for d in shape:
        out *= d
    return out


def norm(kind: str, eps: float, *, dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32,
         use_bias: bool = True, name: str | None = None) -> nn.Module:
    """LayerNorm or RMSNorm with a logically named scale (and bias); statistics always in float32."""
    if kind == "layernorm":
        return nn.LayerNorm(epsilon=eps, dtype=dtype, param_dtype=param_dtype, use_bias=use_bias,
                            scale_init=partitioned(ones, ("norm",)), bias_init=partitioned(zeros, ("norm",)),
                            force_float32_reductions=True, name=name)
    if kind == "rmsnorm":
        return nn.RMSNorm(epsilon=eps, dtype=dtype, param_dtype=param_dtype,
                          scale_init=partitioned(ones, ("norm",)), name=name)
    raise ValueError(f"unknown norm {kind!r}; known: layernorm, rmsnorm")


class Mlp(nn.Module):
    """Transformer feed-forward block: fc1 -> act -> fc2, or SwiGLU (gate_proj, up_proj, down_proj) for LLaMA/Qwen2."""

    hidden: int
    act: str = "gelu"
    use_bias: bool = True
    out_features: int | None = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        out = self.out_features or x.shape[-1]
        kw = dict(use_bias=self.use_bias, dtype=self.dtype, param_dtype=self.param_dtype)
        if self.act == "swiglu":
            gate = Dense(self.hidden, ("embed", "mlp"), name="gate_proj", **kw)(x)
            up = Dense(self.hidden, ("embed", "mlp"), name="up_proj", **kw)(x)
            h = constrain(nn.silu(gate) * up, ("act_batch", "act_length", "act_mlp"))
            return Dense(out, ("mlp", "embed"), name="down_proj", **kw)(h)
        h = Dense(self.hidden, ("embed", "mlp"), name="fc1", **kw)(x)
        h = constrain(activation(self.act)(h), ("act_batch", "act_length", "act_mlp"))
        return Dense(out, ("mlp", "embed"), name="fc2", **kw)(h)
