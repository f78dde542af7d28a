"""Position embeddings: rotary (rotate-half, partial), sincos2d and learned."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.nn.posemb import apply_rotary, get_posemb, rotary_inv_freq, sincos2d


def test_rotary_matches_complex_rotation_of_half_pairs():
    """Rotate-half pairs dim i with dim i + D/2 and rotates it by pos * theta^(-2i/D)."""
    d = 8
    x = np.random.default_rng(0).normal(size=(1, 3, 2, d)).astype(np.float32)
    pos = np.array([[0, 1, 7]])
    y = np.asarray(apply_rotary(jnp.asarray(x), jnp.asarray(pos)))
    freq = 1.0 / 10000.0 ** (np.arange(0, d, 2) / d)
    z = (x[..., : d // 2] + 1j * x[..., d // 2:]) * np.exp(1j * pos[..., None, None] * freq)
    np.testing.assert_allclose(y, np.concatenate([z.real, z.imag], -1), atol=1e-5)
    np.testing.assert_allclose(y[:, 0], x[:, 0])  # position 0 is the identity


def test_rotary_preserves_relative_dot_products():
    q = jax.random.normal(jax.random.key(0), (1, 1, 1, 16))
    k = jax.random.normal(jax.random.key(1), (1, 1, 1, 16))
    dot = lambda a, b: float(jnp.sum(apply_rotary(q, jnp.array([[a]])) * apply_rotary(k, jnp.array([[b]]))))
    assert dot(5, 2) == pytest.approx(dot(13, 10), abs=1e-4)


def test_partial_rotary_leaves_tail():
    x = jax.random.normal(jax.random.key(0), (2, 4, 3, 8))
    y = apply_rotary(x, jnp.ones((2, 4), jnp.int32) * 5, rotary_dim=4)
    np.testing.assert_array_equal(y[..., 4:], x[..., 4:])
    with pytest.raises(ValueError):
        apply_rotary(x, jnp.zeros((2, 4), jnp.int32), rotary_dim=10)


def test_inv_freq_theta():
    np.testing.assert_allclose(rotary_inv_freq(4, 100.0), [1.0, 0.1], rtol=1e-6)


def test_sincos2d_layout():
    pe = np.asarray(sincos2d(2, 3, 16))
    assert pe.shape == (1, 6, 16)
    # Token 0 is (y=0, x=0): sin parts 0, cos parts 1.
    np.testing.assert_allclose(pe[0, 0], [0] * 4 + [1] * 4 + [0] * 4 + [1] * 4, atol=1e-7)
    # Token 1 is (y=0, x=1): the x quarter has sin(omega), the y quarters are unchanged.
    omega = 1.0 / 10000.0 ** (np.arange(4) / 3)
    np.testing.assert_allclose(pe[0, 1, :4], np.sin(omega), atol=1e-6)
    np.testing.assert_allclose(pe[0, 1, 8:], pe[0, 0, 8:])
    # Token 3 is (y=1, x=0).
    np.testing.assert_allclose(pe[0, 3, 8:12], np.sin(omega), atol=1e-6)


class _Holder(nn.Module):
    kind: str

    @nn.compact
    def __call__(self, x):
        return x + get_posemb(self, self.kind, (2, 2), x.shape[-1])


def test_get_posemb_learned_is_a_named_param():
    x = jnp.zeros((1, 4, 8))
    variables = _Holder("learned").init(jax.random.key(0), x)
    boxed = variables["params"]["pos_embedding"]
    assert boxed.names == (None, None, "embed") and boxed.value.shape == (1, 4, 8)
    assert "params" not in _Holder("sincos2d").init(jax.random.key(0), x)
    with pytest.raises(ValueError, match="unknown position embedding"):
        _Holder("rope").init(jax.random.key(0), x)
