"""Continuous forward process: the closed form agrees with iterating the one-step kernel."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.diffusion import d3pm, gaussian

BETAS = d3pm.linear_betas(100, 1e-3, 0.05)


def test_alpha_bars():
    abar = np.asarray(gaussian.alpha_bars(jnp.asarray(BETAS, jnp.float32)))
    np.testing.assert_allclose(abar, np.concatenate([[1.0], np.cumprod(1 - BETAS)]), rtol=1e-5)


@pytest.mark.parametrize("t", [1, 30, 100])
def test_closed_form_matches_iterated_moments(t):
    n = 40000
    x0 = jnp.tile(jnp.array([-1.5, 0.0, 0.7, 2.0]), n // 4)
    iterated = np.asarray(jax.jit(gaussian.q_iterate, static_argnums=2)(jax.random.key(0), x0, t, BETAS))
    closed = np.asarray(gaussian.q_sample(jax.random.key(1), x0[None], jnp.array([t]), BETAS))[0]
    mean, std = (np.asarray(a)[0] for a in gaussian.q_mean_std(x0[None], jnp.array([t]), BETAS))
    abar = np.prod(1 - BETAS[:t])
    np.testing.assert_allclose(mean, np.sqrt(abar) * np.asarray(x0), rtol=1e-5)
    np.testing.assert_allclose(std, np.sqrt(1 - abar), rtol=1e-5)
    for samples in (iterated, closed):
        for v in np.unique(np.asarray(x0)):  # per starting value: mean sqrt(abar) x0, variance 1 - abar
            s = samples[np.asarray(x0) == v]
            assert abs(s.mean() - np.sqrt(abar) * v) < 4 * np.sqrt((1 - abar) / s.size) + 1e-6
            np.testing.assert_allclose(s.var(), 1 - abar, rtol=0.06, atol=1e-6)
    # both samplers regress on x0 with slope sqrt(abar)
    for samples in (iterated, closed):
        slope = np.polyfit(np.asarray(x0), samples, 1)[0]
        np.testing.assert_allclose(slope, np.sqrt(abar), atol=0.02)


def test_posterior_is_gaussian_conditioning():
    """q(x_{t-1}|x_t,x_0) from the joint Gaussian (x_{t-1}, x_t) | x_0 by the conditioning formula."""
    with jax.enable_x64(True):
        betas = jnp.asarray(BETAS)
        abar = np.concatenate([[1.0], np.cumprod(1 - BETAS)])
        x0 = jnp.array([[0.3, -1.2, 2.0]])
        xt = jnp.array([[0.1, 0.5, -0.4]])
        for t in (1, 2, 50, 100):
            mean, var = (np.asarray(a) for a in gaussian.q_posterior_mean_var(x0, xt, jnp.array([t]), betas))
            b = BETAS[t - 1]
            m_prev, v_prev = np.sqrt(abar[t - 1]) * np.asarray(x0), 1 - abar[t - 1]
            cov = np.sqrt(1 - b) * v_prev  # Cov(x_{t-1}, x_t | x_0)
            v_t = 1 - abar[t]
            np.testing.assert_allclose(mean, m_prev + cov / v_t * (np.asarray(xt) - np.sqrt(abar[t]) * x0),
                                       atol=1e-12)
            np.testing.assert_allclose(var, np.full_like(var, v_prev - cov**2 / v_t), atol=1e-12)
