"""D3PM invariants, checked in float64 against brute-force probability (Bayes' rule, explicit products)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.diffusion import d3pm
from mmjax.diffusion.d3pm import D3PM

KINDS = ("uniform", "absorbing", "gaussian")


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


def _custom_matrices(rng: np.random.Generator, num_steps: int, k: int) -> np.ndarray:
    mats = rng.uniform(size=(num_steps, k, k)) + 2.0 * np.eye(k)
    return mats / mats.sum(-1, keepdims=True)


def _make(kind: str, k: int, num_steps: int, seed: int = 0) -> D3PM:
    if kind == "custom":
        mats = _custom_matrices(np.random.default_rng(seed), num_steps, k)
        return D3PM.from_matrices(mats, dtype=jnp.float64)
    return D3PM.create(kind, k, num_steps, dtype=jnp.float64)


def _perfect_logits(x0: jax.Array, k: int) -> jax.Array:
    return 1e4 * jax.nn.one_hot(x0, k, dtype=jnp.float64)


@pytest.mark.parametrize("kind", KINDS)
def test_rows_sum_to_one(x64, kind):
    proc = _make(kind, 7, 30)
    onestep, qbar = np.asarray(proc.q_onestep), np.asarray(proc.q_bar)
    assert onestep.dtype == np.float64
    for mats in (onestep, qbar):
        assert mats.min() >= 0
        np.testing.assert_allclose(mats.sum(-1), 1.0, atol=1e-12)
    if kind != "absorbing":  # uniform and discretized Gaussian are doubly stochastic
        np.testing.assert_allclose(qbar.sum(-2), 1.0, atol=1e-10)
    # Qbar_t is the explicit product Q_1 ... Q_t.
    for t in (1, 5, 30):
        np.testing.assert_allclose(qbar[t], functools.reduce(np.matmul, onestep[1 : t + 1]), atol=1e-12)


def test_gaussian_matrix_prefers_near_levels():
    mat = d3pm.gaussian_matrix(0.02, 9)
    assert mat[4, 5] > mat[4, 6] > mat[4, 8] > 0
    np.testing.assert_allclose(mat, mat.T, atol=1e-15)


def test_absorbing_mass_on_mask(x64):
    betas = np.random.default_rng(1).uniform(0.01, 0.3, size=12)
    proc = D3PM.create("absorbing", 5, 12, betas, dtype=jnp.float64)
    qbar = np.asarray(proc.q_bar)
    for t in range(13):
        expected = 1 - np.prod(1 - betas[:t])
        np.testing.assert_allclose(qbar[t, :4, 4], expected, atol=1e-12)
        np.testing.assert_allclose(qbar[t, :4, :4], (1 - expected) * np.eye(4), atol=1e-12)
    # Mutual-information schedule: masked with probability exactly t/T, all masked at T.
    mi = np.asarray(D3PM.create("absorbing", 5, 10, dtype=jnp.float64).q_bar)
    np.testing.assert_allclose(mi[:, 0, 4], np.arange(11) / 10, atol=1e-12)


@pytest.mark.parametrize("kind", [*KINDS, "custom"])
def test_posterior_matches_bayes(x64, kind):
    rng = np.random.default_rng([*KINDS, "custom"].index(kind))
    k, num_steps = int(rng.integers(3, 7)), 15
    proc = _make(kind, k, num_steps, seed=3)
    onestep, qbar = np.asarray(proc.q_onestep), np.asarray(proc.q_bar)
    x0s, xts = np.meshgrid(np.arange(k), np.arange(k), indexing="ij")
    x0s, xts = x0s.reshape(1, -1), xts.reshape(1, -1)
    for t in (2, int(rng.integers(3, num_steps)), num_steps):
        got = np.exp(np.asarray(proc.q_posterior_logits(jnp.asarray(x0s), jnp.asarray(xts), jnp.array([t]))))
        for i, (x0, xt) in enumerate(zip(x0s[0], xts[0])):
            evidence = qbar[t, x0, xt]
            if evidence < 1e-12:  # impossible pair, e.g. absorbing x_t != x_0 and != mask
                continue
            # q(x_t | x_{t-1}) q(x_{t-1} | x_0) / q(x_t | x_0)
            bayes = onestep[t][:, xt] * qbar[t - 1, x0, :] / evidence
            np.testing.assert_allclose(bayes.sum(), 1.0, atol=1e-10)
            np.testing.assert_allclose(got[0, i], bayes, atol=1e-10)


@pytest.mark.parametrize("kind", [*KINDS, "custom"])
def test_perfect_predictor_step_equals_posterior(x64, kind):
    k = 6
    proc = _make(kind, k, 10)
    x0 = jax.random.randint(jax.random.key(0), (4, 3, 5), 0, k - 1)  # never the mask id (k-1) as clean data
    p_logits, posterior = jax.jit(proc.p_logits), jax.jit(proc.q_posterior_logits)
    for t_val in (1, 2, 6, 10):
        t = jnp.full((4,), t_val)
        xt = proc.q_sample(jax.random.key(t_val), x0, t)
        step = np.exp(np.asarray(p_logits(_perfect_logits(x0, k), xt, t)))
        if t_val == 1:  # the decoder outputs x0 directly
            np.testing.assert_allclose(step, np.asarray(jax.nn.one_hot(x0, k)), atol=1e-10)
        else:
            np.testing.assert_allclose(step, np.exp(np.asarray(posterior(x0, xt, t))), atol=1e-10)


@pytest.mark.parametrize("kind", KINDS)
def test_forward_sample_frequencies(kind):
    k, num_steps = 5, 20
    proc = D3PM.create(kind, k, num_steps)
    x0 = jnp.full((4, 50, 50), 2, jnp.int32)
    t = jnp.full((4,), 7)
    samples = np.asarray(proc.q_sample(jax.random.key(0), x0, t))
    freq = np.bincount(samples.ravel(), minlength=k) / samples.size
    np.testing.assert_allclose(freq, np.asarray(proc.q_probs(x0[:1, :1, :1], t[:1]))[0, 0, 0], atol=0.02)


@pytest.mark.parametrize("kind", [*KINDS, "custom"])
def test_hybrid_loss_nonnegative_and_zero_for_perfect_predictor(x64, kind):
    k = 6
    proc = _make(kind, k, 10)
    x0 = jax.random.randint(jax.random.key(1), (8, 4, 4), 0, k - 1)
    t = jnp.arange(1, 9) % 10 + 1  # covers t = 1 (decoder term) and t > 1
    xt = proc.q_sample(jax.random.key(2), x0, t)
    random_logits = 3.0 * jax.random.normal(jax.random.key(3), (*x0.shape, k), jnp.float64)
    hybrid = jax.jit(proc.hybrid_loss)
    loss, parts = hybrid(random_logits, x0, xt, t)
    assert np.all(np.asarray(parts["vb"]) >= -1e-9) and np.all(np.asarray(parts["ce"]) >= 0)
    assert np.all(np.asarray(loss) > 1e-3)
    loss, parts = hybrid(_perfect_logits(x0, k), x0, xt, t)
    np.testing.assert_allclose(np.asarray(loss), 0.0, atol=1e-8)


def test_absorbing_vb_is_masked_ce_over_t(x64):
    """The MaskGIT connection: with b_t = 1/(T-t+1), L_{t-1} = CE(x0)/t on masked tokens and 0 elsewhere."""
    k, num_steps = 6, 10
    proc = D3PM.create("absorbing", k, num_steps, dtype=jnp.float64)
    x0 = jax.random.randint(jax.random.key(4), (6, 32), 0, k - 1)
    t = jnp.array([2, 3, 5, 7, 9, 10])
    xt = proc.q_sample(jax.random.key(5), x0, t)
    logits = jax.random.normal(jax.random.key(6), (*x0.shape, k), jnp.float64)
    kl_fn = lambda lg, xt: d3pm.categorical_kl(proc.q_posterior_logits(x0, xt, t), proc.p_logits(lg, xt, t))
    kl = np.asarray(jax.jit(kl_fn)(logits, xt))
    logp = jax.nn.log_softmax(logits.at[..., k - 1].set(-jnp.inf), -1)
    ce = -np.asarray(jnp.take_along_axis(logp, x0[..., None], -1)[..., 0])
    masked = np.asarray(xt == k - 1)
    assert masked.any() and (~masked).any()
    np.testing.assert_allclose(kl, np.where(masked, ce / np.asarray(t)[:, None], 0.0), atol=1e-9)


def test_validation_rejects_bad_matrices():
    good = _custom_matrices(np.random.default_rng(0), 3, 4)
    D3PM.from_matrices(good)
    leaky = good.copy()
    leaky[1, 2, 0] += 0.1
    with pytest.raises(ValueError, match="step 2, row 2"):
        D3PM.from_matrices(leaky)
    negative = good.copy()
    negative[0, 1, 1] = -0.5
    with pytest.raises(ValueError, match="negative"):
        D3PM.from_matrices(negative)
    with pytest.raises(ValueError, match="mask_id"):
        D3PM.from_matrices(good, kind="absorbing")
    with pytest.raises(ValueError, match="shape"):
        D3PM.from_matrices(good[0])
    with pytest.raises(ValueError, match="kind"):
        D3PM.create("poisson", 4, 3)
    with pytest.raises(ValueError, match="schedule"):
        D3PM.create("uniform", 4, 3, "quadratic")


def test_schedules():
    np.testing.assert_allclose(d3pm.mutual_info_betas(4), [1 / 4, 1 / 3, 1 / 2, 1])
    lin = d3pm.linear_betas(1000)
    assert lin[0] == pytest.approx(1e-4) and lin[-1] == pytest.approx(0.02)
    cos = d3pm.cosine_betas(50)
    assert np.all((cos > 0) & (cos < 1)) and np.all(np.diff(cos) > 0)


@pytest.mark.parametrize("kind", ["uniform", "absorbing"])  # gaussian shares uniform's code path
def test_training_loss_jits_with_finite_grads(kind):
    k = 5
    proc = D3PM.create(kind, k, 8)
    x0 = jax.random.randint(jax.random.key(7), (3, 4, 4), 0, k - 1)

    def loss_fn(w, rng):
        fn = lambda xt, t: w[xt] + 0.1 * t[:, None, None, None]  # a tiny "model" seeing only x_t and t
        return proc.training_loss(fn, x0, rng)

    (loss, metrics), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(jnp.eye(k), jax.random.key(8))
    assert np.isfinite(float(loss)) and set(metrics) >= {"loss", "vb", "ce"}
    assert np.all(np.isfinite(np.asarray(grads))) and np.abs(np.asarray(grads)).sum() > 0


@pytest.mark.parametrize("kind", KINDS)
def test_sampler_with_oracle_recovers_target(kind):
    """An x0 predictor that always names the target makes the ancestral chain end on the target exactly."""
    k = 5
    proc = D3PM.create(kind, k, 12)
    target = jax.random.randint(jax.random.key(9), (2, 3, 4), 0, k - 1)
    oracle = lambda xt, t: 50.0 * jax.nn.one_hot(target, k)
    out = jax.jit(lambda rng: proc.sample(oracle, rng, target.shape))(jax.random.key(10))
    np.testing.assert_array_equal(np.asarray(out), np.asarray(target))
    if kind == "absorbing":  # the prior is all-mask: the chain starts from nothing
        np.testing.assert_allclose(np.asarray(proc.prior_probs()), np.eye(k)[k - 1], atol=1e-6)


def test_is_a_pytree_usable_as_jit_argument():
    proc = D3PM.create("absorbing", 4, 5)
    leaves, treedef = jax.tree_util.tree_flatten(proc)
    assert len(leaves) == 3  # q_onestep, q_bar, betas; kind / mask_id / hybrid_coeff are static
    rebuilt = jax.tree_util.tree_unflatten(treedef, leaves)
    assert rebuilt.kind == "absorbing" and rebuilt.mask_id == 3
    probs = jax.jit(lambda p, x, t: p.q_probs(x, t))(proc, jnp.zeros((2, 3), jnp.int32), jnp.array([1, 5]))
    np.testing.assert_allclose(np.asarray(probs)[:, 0], [[0.8, 0, 0, 0.2], [0, 0, 0, 1]], atol=1e-6)
