"""The padded vocabulary head."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.models.lm import LM, get_config
from mmjax.nn.embedding import PAD_LOGIT, padded_size


def test_padded_size():
    assert [padded_size(n, 128) for n in (1, 128, 129, 58498)] == [128, 128, 256, 58624]
    assert padded_size(58498, 1) == 58498


@pytest.mark.parametrize("tie", [False, True])
def test_padded_vocab_head_keeps_logits_and_loss(tie):
    """Padding the vocabulary to 128 changes neither the real logits nor the cross-entropy nor the argmax."""
    base = get_config("tiny-qwen2" if tie else "tiny-phi", vocab_size=100, scan_layers=False)
    padded = base.replace(vocab_pad_multiple=128)
    ids = jax.random.randint(jax.random.key(1), (2, 9), 0, 100)
    params = LM(base).init(jax.random.key(0), ids)["params"]
    ref = LM(base).apply({"params": params}, ids)
    out = LM(padded).apply({"params": params}, ids)  # same parameters: shapes unchanged by padding
    assert out.shape == (2, 9, 128)
    np.testing.assert_allclose(out[..., :100], ref, rtol=1e-5, atol=1e-5)
    assert np.all(np.asarray(out[..., 100:]) == np.float32(PAD_LOGIT))
    lse = lambda x: jax.nn.logsumexp(x, axis=-1)
    np.testing.assert_allclose(lse(out), lse(ref), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(jnp.argmax(out, -1), jnp.argmax(ref, -1))

    def loss(p, cfg):
        logits = LM(cfg).apply({"params": p}, ids)
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), ids[..., None], -1))

    g_ref, g_pad = jax.grad(loss)(params, base), jax.grad(loss)(params, padded)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), g_ref, g_pad)
