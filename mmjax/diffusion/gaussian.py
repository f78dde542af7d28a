"""Continuous Gaussian diffusion (DDPM forward process): the reference point the discrete kinds generalise.

``q(x_t | x_{t-1}) = N(sqrt(1-b_t) x_{t-1}, b_t I)`` composes to the closed form ``q(x_t | x_0) =
N(sqrt(abar_t) x_0, (1-abar_t) I)`` with ``abar_t = prod_{s<=t} (1-b_s)``, which is what makes training cheap
(sample any t directly). Time is 1-indexed like ``d3pm``; betas come from ``d3pm.linear_betas`` /
``cosine_betas`` (numpy float64) or any (T,) array.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def alpha_bars(betas: Array | np.ndarray) -> Array:
    """``abar[t]`` for t = 0..T (``abar[0] = 1``), shape (T+1,)."""
    betas = jnp.asarray(betas)
    return jnp.concatenate([jnp.ones((1,), betas.dtype), jnp.cumprod(1.0 - betas)])


def _expand(v: Array, like: Array) -> Array:
    return v.reshape(v.shape + (1,) * (like.ndim - v.ndim))


def q_mean_std(x0: Array, t: Array, betas: Array | np.ndarray) -> tuple[Array, Array]:
    """Mean ``sqrt(abar_t) x0`` and std ``sqrt(1-abar_t)`` of ``q(x_t | x_0)``; t is (B,) ints in 0..T."""
    abar = _expand(alpha_bars(betas)[t], x0)
    return jnp.sqrt(abar) * x0, jnp.sqrt(1.0 - abar)


def q_sample(rng: Array, x0: Array, t: Array, betas: Array | np.ndarray) -> Array:
    """Closed-form draw ``x_t = sqrt(abar_t) x0 + sqrt(1-abar_t) eps``."""
    mean, std = q_mean_std(x0, t, betas)
    return mean + std * jax.random.normal(rng, x0.shape, mean.dtype)


def q_step(rng: Array, x_prev: Array, beta: Array | float) -> Array:
    """One forward step ``x_t = sqrt(1-b) x_{t-1} + sqrt(b) eps``."""
    beta = jnp.asarray(beta, x_prev.dtype)
    return jnp.sqrt(1.0 - beta) * x_prev + jnp.sqrt(beta) * jax.random.normal(rng, x_prev.shape, x_prev.dtype)


def q_iterate(rng: Array, x0: Array, t: int, betas: Array | np.ndarray) -> Array:
    """Run ``q_step`` t times (a scan; the slow path the closed form replaces, kept to check it)."""
    betas = jnp.asarray(betas, x0.dtype)[:t]
    keys = jax.random.split(rng, t)

    def body(x, inputs):
        key, beta = inputs
        return q_step(key, x, beta), None

    return jax.lax.scan(body, x0, (keys, betas))[0]


def q_posterior_mean_var(x0: Array, xt: Array, t: Array, betas: Array | np.ndarray) -> tuple[Array, Array]:
    """``q(x_{t-1} | x_t, x_0) = N(c0 x0 + ct x_t, b_t (1-abar_{t-1}) / (1-abar_t))`` for t >= 1."""
    betas = jnp.asarray(betas)
    abar = alpha_bars(betas)
    beta_t = _expand(betas[t - 1], xt)
    ab_t, ab_prev = _expand(abar[t], xt), _expand(abar[t - 1], xt)
    c0 = jnp.sqrt(ab_prev) * beta_t / (1.0 - ab_t)
    ct = jnp.sqrt(1.0 - beta_t) * (1.0 - ab_prev) / (1.0 - ab_t)
    return c0 * x0 + ct * xt, beta_t * (1.0 - ab_prev) / (1.0 - ab_t)
