"""LFQ and EMA-VQ: bit orders, entropy terms against a dense float64 computation, gradients, EMA updates."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from mmjax.models.quantizers import (
    LFQ,
    VectorQuantizerEMA,
    bits_to_indices,
    code_usage,
    indices_to_bits,
    indices_to_codes,
    lfq_entropy,
)


@pytest.mark.parametrize("msb_first", [True, False])
@pytest.mark.parametrize("num_bits", [1, 4, 13])
def test_indices_bits_round_trip(msb_first, num_bits):
    ids = jnp.arange(2 ** num_bits)
    bits = indices_to_bits(ids, num_bits, msb_first)
    assert bits.shape == (2 ** num_bits, num_bits)
    np.testing.assert_array_equal(bits_to_indices(bits, msb_first), ids)
    np.testing.assert_array_equal(indices_to_codes(ids, num_bits, msb_first), bits * 2.0 - 1.0)


def test_bit_orders():
    # Show-o: index = sum_c 2^(K-1-c) [z_c > 0]; Open-MAGVIT2: index = sum_c 2^c [z_c > 0].
    z = jnp.array([[0.3, -1.0, -0.2, 2.0]])
    assert int(bits_to_indices(z > 0, msb_first=True)[0]) == 8 + 1
    assert int(bits_to_indices(z > 0, msb_first=False)[0]) == 1 + 8
    z = jnp.array([[0.3, 1.0, -0.2, -2.0]])
    assert int(bits_to_indices(z > 0, msb_first=True)[0]) == 8 + 4
    assert int(bits_to_indices(z > 0, msb_first=False)[0]) == 1 + 2
    np.testing.assert_array_equal(indices_to_bits(jnp.array(1), 3, msb_first=True), [0, 0, 1])
    np.testing.assert_array_equal(indices_to_bits(jnp.array(1), 3, msb_first=False), [1, 0, 0])


def _dense_entropies(z: np.ndarray, temperature: float) -> tuple[float, float]:
    """The definition, densely in float64: p = softmax(2 z.C^T / T) over all 2^K +-1 codes."""
    k = z.shape[-1]
    codes = np.array(list(itertools.product([-1.0, 1.0], repeat=k)))
    logits = 2.0 * z.astype(np.float64) @ codes.T / temperature
    logits -= logits.max(-1, keepdims=True)
    p = np.exp(logits)
    p /= p.sum(-1, keepdims=True)
    ent = lambda q: -np.sum(np.where(q > 0, q * np.log(np.where(q > 0, q, 1.0)), 0.0), axis=-1)
    return float(ent(p).mean()), float(ent(p.mean(0)))


@pytest.mark.parametrize("num_bits", [4, 6, 8])
def test_entropy_matches_dense(num_bits):
    rng = np.random.default_rng(num_bits)
    # Scale so that softmax(2 z.C / 0.01) is neither one-hot nor uniform.
    z = (0.004 * rng.standard_normal((48, num_bits)) + 0.002).astype(np.float32)
    per_ref, cb_ref = _dense_entropies(z, 0.01)
    assert 0.1 < per_ref < num_bits * np.log(2) - 0.1  # a non-degenerate case
    entropy = jax.jit(lfq_entropy, static_argnums=(1, 2, 3))
    per, cb = entropy(jnp.asarray(z), 0.01, num_bits, 0)  # one group: exact
    np.testing.assert_allclose(per, per_ref, rtol=1e-4)
    np.testing.assert_allclose(cb, cb_ref, rtol=1e-4)
    per, cb = entropy(jnp.asarray(z), 0.01, num_bits, 4)  # chunked over codes: exact
    np.testing.assert_allclose(per, per_ref, rtol=1e-4)
    np.testing.assert_allclose(cb, cb_ref, rtol=1e-4)
    # Factorised over groups of <= 2 bits: the per-position term is still exact, the batch term is an upper
    # bound of the full-codebook one (subadditivity of entropy).
    per, cb = entropy(jnp.asarray(z), 0.01, 2, 0)
    np.testing.assert_allclose(per, per_ref, rtol=1e-4)
    assert float(cb) >= cb_ref - 1e-4
    assert float(cb) > cb_ref + 1e-3  # and strictly looser here (bits correlated through the shared offset)


def test_factorised_entropy_exact_for_one_position():
    # With one position the batch-mean distribution is a product over bits, so every grouping is exact.
    z = 0.005 * jax.random.normal(jax.random.key(0), (1, 7))
    per_ref, cb_ref = _dense_entropies(np.asarray(z), 0.01)
    for group_bits in (1, 3, 7):
        per, cb = jax.jit(lfq_entropy, static_argnums=(1, 2))(z, 0.01, group_bits)
        np.testing.assert_allclose([per, cb], [per_ref, cb_ref], rtol=1e-4)


def test_entropy_chunk_must_be_power_of_two():
    with pytest.raises(ValueError, match="power of two"):
        lfq_entropy(jnp.zeros((2, 4)), chunk_codes=3)


def test_lfq_outputs_and_losses():
    z = jax.random.normal(jax.random.key(1), (2, 3, 3, 5))
    q, ids, aux = jax.tree.map(np.asarray, jax.jit(LFQ(5).apply)({}, z))
    z = np.asarray(z)
    np.testing.assert_array_equal(q, np.where(z > 0, 1.0, -1.0))
    np.testing.assert_array_equal(ids, bits_to_indices(z > 0, True))
    np.testing.assert_allclose(aux["commit_loss"], 0.25 * np.mean((z - np.sign(z)) ** 2), rtol=1e-6)
    np.testing.assert_allclose(aux["entropy_loss"], aux["per_sample_entropy"] - aux["codebook_entropy"])
    np.testing.assert_allclose(aux["loss"], aux["commit_loss"] + 0.1 * aux["entropy_loss"], rtol=1e-6)
    np.testing.assert_array_equal(indices_to_codes(ids, 5), q)


def test_lfq_straight_through_gradient():
    z = jax.random.normal(jax.random.key(2), (4, 6))
    w = jax.random.normal(jax.random.key(3), (4, 6))
    grad = jax.jit(jax.grad(lambda z: jnp.sum(LFQ(6).apply({}, z)[0] * w)))(z)
    np.testing.assert_allclose(grad, w, rtol=1e-6)  # identity through the sign
    grad = jax.jit(jax.grad(lambda z: LFQ(6).apply({}, z)[2]["loss"]))(z)
    assert jnp.all(jnp.isfinite(grad)) and jnp.any(grad != 0)


def test_code_usage():
    usage, perplexity = code_usage(jnp.array([0, 0, 1, 1]), 8)
    np.testing.assert_allclose([usage, perplexity], [2 / 8, 2.0], rtol=1e-6)


def _init_vq(z, **kw):
    vq = VectorQuantizerEMA(codebook_size=8, dim=z.shape[-1], **kw)
    return vq, jax.jit(vq.init)(jax.random.key(0), z)


def _stats(variables):
    return nn.meta.unbox(variables["vq_stats"])


def test_vq_ema_moves_codes_towards_assigned_outputs():
    z = jax.random.normal(jax.random.key(4), (64, 4)) + 3.0
    vq, variables = _init_vq(z, dead_code_threshold=0.0)
    before = _stats(variables)["codebook"]
    (q, ids, _), updated = jax.jit(lambda v, z: vq.apply(v, z, mutable=["vq_stats"]))(variables, z)
    z, ids = np.asarray(z), np.asarray(ids)
    after = _stats(updated)["codebook"]
    np.testing.assert_allclose(q, before[ids], rtol=1e-6)  # forward value = the (pre-update) code
    for code in np.unique(ids):
        target = z[ids == code].mean(0)
        assert np.linalg.norm(after[code] - target) < np.linalg.norm(before[code] - target)
    unused = np.setdiff1d(np.arange(8), ids)
    np.testing.assert_allclose(after[unused], before[unused], rtol=1e-4)  # eps-smoothed: barely moved
    assert int(_stats(updated)["updates"]) == 1
    # The same apply without a mutable collection is a pure forward: nothing changes.
    _, ids2, aux2 = jax.jit(vq.apply)(variables, jnp.asarray(z))
    np.testing.assert_array_equal(ids2, ids)
    assert "restarted_codes" not in aux2


def test_vq_dead_codes_restarted_from_batch():
    z = jax.random.normal(jax.random.key(5), (32, 4)) + 10.0  # far from every initial code
    vq, variables = _init_vq(z, dead_code_threshold=1.0)
    step = jax.jit(lambda v, z, rng: vq.apply(v, z, mutable=["vq_stats"], rngs={"vq": rng}))
    (_, ids, aux), updated = step(variables, z, jax.random.key(7))
    stats = _stats(updated)
    used = np.unique(np.asarray(ids))
    assert len(used) < 8 and aux["restarted_codes"] >= 8 - len(used)
    dead = np.setdiff1d(np.arange(8), used)
    for code in dead:  # each dead code is now one of the batch's encoder outputs
        assert np.min(np.linalg.norm(np.asarray(z) - stats["codebook"][code], axis=-1)) < 1e-5
    _, ids_after, _ = jax.jit(vq.apply)(updated, z)
    assert len(np.unique(np.asarray(ids_after))) > len(used)  # restarted codes now get used


def test_vq_gradient_is_straight_through_and_init_does_not_update():
    z = jax.random.normal(jax.random.key(6), (16, 4))
    vq, variables = _init_vq(z)
    assert int(_stats(variables)["updates"]) == 0
    grad = jax.jit(jax.grad(lambda z: jnp.sum(vq.apply(variables, z)[0])))(z)
    np.testing.assert_allclose(grad, jnp.ones_like(z))
