"""The fused (chunked) head + cross-entropy equals the plain float32 logits + optax loss, values and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mmjax.nn.cross_entropy import fused_head_cross_entropy


def _plain(h, kernel, labels, weights):
    logits = jnp.dot(h, kernel.astype(h.dtype), preferred_element_type=jnp.float32)
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return jnp.sum(nll * weights), jnp.sum((jnp.argmax(logits, -1) == labels) * weights)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_fused_equals_plain_loss_and_gradients(dtype):
    """37 tokens (chunks of 16: the last one padded), vocab 100 (padded to 128 columns), a third of the positions
    weighted 0; fresh random inputs."""
    keys = jax.random.split(jax.random.key(7), 4)
    h = jax.random.normal(keys[0], (37, 24), jnp.float32).astype(dtype)
    kernel = jax.random.normal(keys[1], (24, 100), jnp.float32)
    labels = jax.random.randint(keys[2], (37,), 0, 100)
    weights = (jax.random.uniform(keys[3], (37,)) > 0.33).astype(jnp.float32)
    fused = lambda h, k: fused_head_cross_entropy(h, k, labels, weights, chunk=16)
    plain = lambda h, k: _plain(h, k, labels, weights)
    (a_nll, a_ok), (b_nll, b_ok) = fused(h, kernel), plain(h, kernel)
    tol = 1e-5 if dtype == jnp.float32 else 2e-2
    np.testing.assert_allclose(a_nll, b_nll, rtol=tol)
    assert float(a_ok) == float(b_ok) and float(a_ok) > 0
    ga = jax.grad(lambda h, k: 3.0 * fused(h, k)[0], argnums=(0, 1))(h, kernel)
    gb = jax.grad(lambda h, k: 3.0 * plain(h, k)[0], argnums=(0, 1))(h, kernel)
    for x, y in zip(ga, gb):
        assert x.dtype == y.dtype
        x, y = np.asarray(x, np.float32), np.asarray(y, np.float32)
        assert np.linalg.norm(x - y) / np.linalg.norm(y) < tol
    # positions with weight 0 get no gradient
    assert not np.asarray(ga[0], np.float32)[np.asarray(weights) == 0].any()
