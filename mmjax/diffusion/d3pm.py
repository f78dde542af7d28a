"""D3PM: discrete denoising diffusion with structured transition matrices (Austin et al., 2021).

One token grid ``x`` of any shape ``(B, ...)`` holds ints in ``[0, K)``. The forward process is a Markov chain
of row-stochastic matrices (row = from-state) ``q(x_t | x_{t-1}) = Cat(x_{t-1} Q_t)``, so ``q(x_t | x_0) =
Cat(x_0 Qbar_t)`` with ``Qbar_t = Q_1 ... Q_t``. Time is 1-indexed, ``t in 1..T``; index 0 of the stored
stacks is the identity so ``Qbar[t]`` and ``Q[t]`` read like the paper.

The model predicts x0 logits from ``(x_t, t)`` (the x0-parameterisation); the reverse step is ``p(x_{t-1} |
x_t) ∝ (x_t Q_t^T) ⊙ (p~(x0|x_t) Qbar_{t-1})`` and at ``t = 1`` the x0 distribution itself.

Connection to MaskGIT / Show-o: the *absorbing* kind with the mutual-information schedule ``b_t = 1/(T-t+1)``
masks each token independently with probability ``t/T`` at time t, and its ``L_{t-1}`` term reduces exactly to
``(1/t) * CE(x0)`` on the masked tokens (zero on unmasked ones, see ``tests/diffusion/test_d3pm.py``). MaskGIT
and Show-o train the same x0 predictor with an unweighted masked-token CE and a mask *count* drawn from
gamma(r), and sample it with confidence-ordered unmasking instead of ancestral sampling: same process, a
different sampler (``mmjax.diffusion.maskgit``). For their codebooks (K ~ 8k) use maskgit.py: this module
stores dense ``(T+1, K, K)`` matrices, which is what makes the uniform / Gaussian / user-supplied kinds share
one code path.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
X0LogitsFn = Callable[[Array, Array], Array]  # (x_t (B, ...), t (B,)) -> x0 logits (B, ..., K)

KINDS = ("uniform", "absorbing", "gaussian", "custom")
# Finite "minus infinity": -inf would make 0 * inf = nan in KL terms and in unselected where-branches.
_NEG = -1e9
_MAX_MATRIX_BYTES = 2 << 30


# ----------------------------------------------------------------------------------------------- schedules
def linear_betas(num_steps: int, start: float = 1e-4, stop: float = 0.02) -> np.ndarray:
    """Linearly spaced betas (DDPM / D3PM-Gaussian default: 1e-4 .. 0.02 over T=1000)."""
    return np.linspace(start, stop, num_steps, dtype=np.float64)


def cosine_betas(num_steps: int, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
    """Betas whose survival ``prod(1-b)`` follows ``cos((t/T + s)/(1 + s) * pi/2)`` (D3PM-uniform default)."""
    steps = np.arange(num_steps + 1, dtype=np.float64) / num_steps
    alpha_bar = np.cos((steps + s) / (1 + s) * np.pi / 2)
    return np.minimum(1 - alpha_bar[1:] / alpha_bar[:-1], max_beta)


def mutual_info_betas(num_steps: int) -> np.ndarray:
    """``b_t = 1/(T - t + 1)`` (D3PM's "jsd"): for the absorbing kind a token is masked w.p. exactly t/T."""
    t = np.arange(1, num_steps + 1, dtype=np.float64)
    return 1.0 / (num_steps - t + 1)


SCHEDULES: dict[str, Callable[[int], np.ndarray]] = {
    "linear": linear_betas,
    "cosine": cosine_betas,
    "mutual_info": mutual_info_betas,
    "jsd": mutual_info_betas,
}
DEFAULT_SCHEDULE = {"uniform": "cosine", "absorbing": "mutual_info", "gaussian": "linear"}


# ----------------------------------------------------------------------------------- transition matrices
def uniform_matrix(beta: float, num_classes: int) -> np.ndarray:
    """``(1-b) I + b/K 11^T``: jump to any class uniformly; doubly stochastic, stationary law uniform."""
    k = num_classes
    return (1 - beta) * np.eye(k) + beta / k * np.ones((k, k))


def absorbing_matrix(beta: float, num_classes: int, mask_id: int) -> np.ndarray:
    """``(1-b) I + b 1 e_m^T``: each class jumps to the mask state m w.p. b; m stays (MaskGIT's [MASK])."""
    mat = (1 - beta) * np.eye(num_classes)
    mat[:, mask_id] += beta
    return mat


def gaussian_matrix(beta: float, num_classes: int) -> np.ndarray:
    """Discretized Gaussian for ordinal classes: nearby levels are likelier, so it suits pixel intensities.

    Off-diagonal ``(i, j)`` ∝ ``exp(-4 (i-j)^2 / ((K-1)^2 b))``, normalised over offsets ``-(K-1)..K-1``; the
    diagonal takes the remaining mass, which keeps rows stochastic and (by symmetry) columns too.
    """
    k = num_classes
    offsets = np.arange(-(k - 1), k, dtype=np.float64)
    logits = -4.0 * offsets**2 / ((k - 1) ** 2 * beta)
    weights = np.exp(logits - logits.max())
    weights /= weights.sum()
    band = weights[k - 1 :]  # band[d] = weight of offset +-d
    dist = np.abs(np.arange(k)[:, None] - np.arange(k)[None, :])
    mat = np.where(dist > 0, band[dist], 0.0)
    return mat + np.diag(1.0 - mat.sum(1))


def validate_transition_matrices(mats: Any, atol: float = 1e-6) -> np.ndarray:
    """Check a ``(T, K, K)`` stack is finite, non-negative and row-stochastic; return it as float64.

    A user matrix that leaks mass would silently bias every loss term: refuse it, naming the step and row.
    """
    mats = np.asarray(mats, dtype=np.float64)
    if mats.ndim != 3 or mats.shape[1] != mats.shape[2]:
        raise ValueError(f"transition matrices must have shape (T, K, K); got {mats.shape}")
    if not np.all(np.isfinite(mats)):
        raise ValueError("transition matrices contain non-finite entries")
    if mats.min() < -atol:
        step, row, col = np.unravel_index(np.argmin(mats), mats.shape)
        raise ValueError(f"negative transition probability {mats.min():.3g} at step {step + 1}, row {row}, "
                         f"col {col}")
    mats = np.clip(mats, 0.0, None)
    err = np.abs(mats.sum(-1) - 1.0)
    if err.max() > atol:
        step, row = np.unravel_index(np.argmax(err), err.shape)
        raise ValueError(f"transition matrix rows must sum to 1: step {step + 1}, row {row} sums to "
                         f"{mats[step, row].sum():.6g}")
    return mats / mats.sum(-1, keepdims=True)


def cumulative_matrices(mats: np.ndarray) -> np.ndarray:
    """``Qbar[t] = Q_1 ... Q_t`` for t = 0..T (``Qbar[0] = I``), accumulated in float64 to stay stochastic."""
    num_steps, k, _ = mats.shape
    out = np.empty((num_steps + 1, k, k), dtype=np.float64)
    out[0] = np.eye(k)
    for t in range(num_steps):
        out[t + 1] = out[t] @ mats[t]
    return out


# --------------------------------------------------------------------------------------------- helpers
def _safe_log(p: Array) -> Array:
    return jnp.log(jnp.maximum(p, jnp.finfo(p.dtype).tiny))


def _expand_t(t: Array, like: Array) -> Array:
    """(B,) times -> (B, 1, ..., 1) so they broadcast against a (B, ...) token grid."""
    t = jnp.asarray(t, jnp.int32)
    return t.reshape(t.shape + (1,) * (like.ndim - t.ndim))


def _mean_over_grid(x: Array) -> Array:
    return x.reshape(x.shape[0], -1).mean(-1)


def categorical_kl(q_logits: Array, p_logits: Array) -> Array:
    """``KL(q || p)`` over the last axis from (unnormalised) logits; zero-mass q entries add nothing."""
    q_logp = jax.nn.log_softmax(q_logits, -1)
    p_logp = jax.nn.log_softmax(p_logits, -1)
    return jnp.sum(jnp.exp(q_logp) * (q_logp - p_logp), -1)


# ------------------------------------------------------------------------------------------------ D3PM
@flax.struct.dataclass
class D3PM:
    """Schedule + matrices of one discrete diffusion process; a pytree (arrays leaves, the rest static).

    Build with ``D3PM.create`` or ``D3PM.from_matrices``. Close over it in ``jit`` or pass it as an argument.
    For the absorbing kind ``num_classes`` counts the mask state (data classes are ``K - 1``); the model still
    emits K logits and the mask column is ignored.
    """

    q_onestep: Array  # (T+1, K, K); [0] = I, [t] = Q_t
    q_bar: Array  # (T+1, K, K); [0] = I, [t] = Qbar_t
    betas: Array  # (T,) the schedule (NaN for user matrices)
    kind: str = flax.struct.field(pytree_node=False, default="custom")
    mask_id: int | None = flax.struct.field(pytree_node=False, default=None)
    hybrid_coeff: float = flax.struct.field(pytree_node=False, default=0.001)

    @classmethod
    def create(cls, kind: str, num_classes: int, num_steps: int, schedule: str | np.ndarray | None = None,
               *, mask_id: int | None = None, hybrid_coeff: float = 0.001, dtype: Any = jnp.float32) -> D3PM:
        """Build a uniform / absorbing / gaussian process; ``schedule`` is a name or explicit betas (T,)."""
        if kind not in KINDS[:3]:
            raise ValueError(f"kind must be one of {KINDS[:3]} (use from_matrices for custom); got {kind!r}")
        schedule = DEFAULT_SCHEDULE[kind] if schedule is None else schedule
        if isinstance(schedule, str):
            if schedule not in SCHEDULES:
                raise ValueError(f"unknown schedule {schedule!r}; choose from {sorted(SCHEDULES)}")
            betas = SCHEDULES[schedule](num_steps)
        else:
            betas = np.asarray(schedule, np.float64)
        if betas.shape != (num_steps,) or betas.min() < 0 or betas.max() > 1:
            raise ValueError(f"betas must be (T,)={num_steps} values in [0, 1]; got shape {betas.shape}")
        if kind == "absorbing":
            mask_id = num_classes - 1 if mask_id is None else mask_id
            if not 0 <= mask_id < num_classes:
                raise ValueError(f"mask_id {mask_id} outside [0, {num_classes})")
            mats = [absorbing_matrix(b, num_classes, mask_id) for b in betas]
        elif kind == "uniform":
            mats = [uniform_matrix(b, num_classes) for b in betas]
        else:
            mats = [gaussian_matrix(b, num_classes) for b in betas]
        return cls.from_matrices(np.stack(mats), kind=kind, mask_id=mask_id, hybrid_coeff=hybrid_coeff,
                                 betas=betas, dtype=dtype)

    @classmethod
    def from_matrices(cls, mats: Any, *, kind: str = "custom", mask_id: int | None = None,
                      hybrid_coeff: float = 0.001, betas: np.ndarray | None = None, dtype: Any = jnp.float32
                      ) -> D3PM:
        """Any row-stochastic ``(T, K, K)`` stack (validated). ``kind="absorbing"`` needs ``mask_id`` and
        turns on the absorbing x0 handling (``prepare_x0_logits``); "custom" uses the matrices as they are."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}; got {kind!r}")
        if kind == "absorbing" and mask_id is None:
            raise ValueError("kind='absorbing' needs the mask_id of the absorbing state")
        mats = validate_transition_matrices(mats)
        num_steps, k, _ = mats.shape
        if 2 * (num_steps + 1) * k * k * np.dtype(dtype).itemsize > _MAX_MATRIX_BYTES:
            raise ValueError(f"dense D3PM matrices for T={num_steps}, K={k} exceed 2 GiB; for large "
                             "absorbing codebooks use mmjax.diffusion.maskgit (same process, closed form)")
        onestep = np.concatenate([np.eye(k)[None], mats])
        betas = np.full(num_steps, np.nan) if betas is None else betas
        return cls(q_onestep=jnp.asarray(onestep, dtype), q_bar=jnp.asarray(cumulative_matrices(mats), dtype),
                   betas=jnp.asarray(betas, dtype), kind=kind, mask_id=mask_id, hybrid_coeff=hybrid_coeff)

    @property
    def num_steps(self) -> int:
        return self.q_onestep.shape[0] - 1

    @property
    def num_classes(self) -> int:
        return self.q_onestep.shape[-1]

    # ------------------------------------------------------------------------------- forward process
    def q_probs(self, x0: Array, t: Array) -> Array:
        """``q(x_t | x_0)`` = row x0 of Qbar_t: (B, ...) ids, (B,) times -> (B, ..., K) probabilities."""
        return self.q_bar[_expand_t(t, x0), x0]

    def q_sample(self, rng: Array, x0: Array, t: Array) -> Array:
        """Draw ``x_t ~ q(x_t | x_0)`` for each token independently."""
        return jax.random.categorical(rng, _safe_log(self.q_probs(x0, t)), axis=-1).astype(x0.dtype)

    def prior_probs(self) -> Array:
        """The sampler's ``p(x_T)``: the mean row of Qbar_T, exactly uniform for doubly-stochastic kinds and
        the mask one-hot for absorbing + mutual-info (where every row of Qbar_T is e_m)."""
        return self.q_bar[-1].mean(0)

    # ------------------------------------------------------------------------------------- posteriors
    def _posterior_logits(self, x0_probs: Array, xt: Array, t: Array) -> Array:
        """``log[(x_t Q_t^T) ⊙ (x0_probs Qbar_{t-1})]``, normalised; x0_probs (B, ..., K) may be soft."""
        te = _expand_t(t, xt)
        fact1 = self.q_onestep[te, :, xt]  # column x_t of Q_t: q(x_t | x_{t-1} = j) for every j
        qbar_prev = self.q_bar[te - 1]  # (B, 1.., K, K)
        fact2 = jnp.matmul(x0_probs[..., None, :].astype(qbar_prev.dtype), qbar_prev)[..., 0, :]
        return jax.nn.log_softmax(_safe_log(fact1) + _safe_log(fact2), -1)

    def q_posterior_logits(self, x0: Array, xt: Array, t: Array) -> Array:
        """True posterior ``log q(x_{t-1} | x_t, x_0)`` for ids x0 and t >= 1 (at t=1: the one-hot of x0)."""
        return self._posterior_logits(jax.nn.one_hot(x0, self.num_classes, dtype=self.q_bar.dtype), xt, t)

    def prepare_x0_logits(self, x0_logits: Array, xt: Array) -> Array:
        """Absorbing kind only: the mask state is never clean data, and an unmasked ``x_t`` IS ``x_0`` (the
        chain only ever jumps to the mask), so those positions are pinned to their token. This is MaskGIT /
        Show-o's "known tokens never change" and makes the CE a masked-token loss. Other kinds pass through.
        """
        x0_logits = x0_logits.astype(jnp.promote_types(x0_logits.dtype, jnp.float32))
        if self.kind != "absorbing":
            return x0_logits
        x0_logits = x0_logits.at[..., self.mask_id].set(_NEG)
        is_xt = jax.nn.one_hot(xt, self.num_classes, dtype=bool)
        pinned = jnp.where(is_xt, 0.0, _NEG).astype(x0_logits.dtype)
        return jnp.where((xt != self.mask_id)[..., None], pinned, x0_logits)

    def p_logits(self, x0_logits: Array, xt: Array, t: Array) -> Array:
        """Reverse step ``log p(x_{t-1} | x_t)`` from model x0 logits: posterior averaged over p~(x0|x_t) for
        t > 1 and the x0 distribution itself at t = 1 (the decoder)."""
        x0_logits = self.prepare_x0_logits(x0_logits, xt)
        post = self._posterior_logits(jax.nn.softmax(x0_logits, -1), xt, t)
        t1 = (_expand_t(t, xt) == 1)[..., None]
        return jnp.where(t1, jax.nn.log_softmax(x0_logits, -1), post.astype(x0_logits.dtype))

    # ------------------------------------------------------------------------------------------ losses
    def hybrid_loss(self, x0_logits: Array, x0: Array, xt: Array, t: Array) -> tuple[Array, dict[str, Array]]:
        """Per-example ``L_vb + hybrid_coeff * CE`` (nats per token), shapes (B,).

        ``L_vb`` is ``KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t))`` for t > 1 and the decoder NLL
        ``-log p(x_0|x_1)`` at t = 1; CE is ``-log p~(x_0|x_t)``, the auxiliary term that keeps the x0 head
        sharp at every t.
        """
        x0_logits = self.prepare_x0_logits(x0_logits, xt)
        x0_logp = jax.nn.log_softmax(x0_logits, -1)
        ce = -jnp.take_along_axis(x0_logp, x0[..., None], -1)[..., 0]
        kl = categorical_kl(self.q_posterior_logits(x0, xt, t), self.p_logits(x0_logits, xt, t))
        vb = jnp.where(_expand_t(t, xt) == 1, ce, kl)
        vb, ce = _mean_over_grid(vb), _mean_over_grid(ce)
        return vb + self.hybrid_coeff * ce, {"vb": vb, "ce": ce}

    def training_loss(self, x0_logits_fn: X0LogitsFn, x0: Array, rng: Array
                      ) -> tuple[Array, dict[str, Array]]:
        """The training objective: t ~ U{1..T} per example, x_t ~ q(x_t|x_0), hybrid loss of the model on x_t.

        ``x0_logits_fn(x_t, t)`` must only see x_t (feeding x_0 is the classic reimplementation bug).
        Returns (scalar loss, scalar metrics) ready for a task's ``loss_fn``.
        """
        t_rng, x_rng = jax.random.split(rng)
        t = jax.random.randint(t_rng, (x0.shape[0],), 1, self.num_steps + 1)
        xt = self.q_sample(x_rng, x0, t)
        loss, parts = self.hybrid_loss(x0_logits_fn(xt, t), x0, xt, t)
        metrics = {k: v.mean() for k, v in parts.items()}
        return loss.mean(), {"loss": loss.mean(), **metrics, "vb_bits": metrics["vb"] / math.log(2)}

    # ------------------------------------------------------------------------------------------ sampler
    def sample(self, x0_logits_fn: X0LogitsFn, rng: Array, shape: tuple[int, ...],
               x_init: Array | None = None) -> Array:
        """Ancestral sampling: x_T ~ prior, then x_{t-1} ~ p(x_{t-1}|x_t) for t = T..1 (fixed-shape loop)."""
        init_rng, loop_rng = jax.random.split(rng)
        if x_init is None:
            x_init = jax.random.categorical(init_rng, _safe_log(self.prior_probs()), shape=shape)
        x_init = x_init.astype(jnp.int32)

        def body(i, carry):
            x, key = carry
            key, sub = jax.random.split(key)
            t = jnp.full((shape[0],), self.num_steps - i, jnp.int32)
            logits = self.p_logits(x0_logits_fn(x, t), x, t)
            return jax.random.categorical(sub, logits, axis=-1).astype(jnp.int32), key

        return jax.lax.fori_loop(0, self.num_steps, body, (x_init, loop_rng))[0]
