"""MaskGIT / Show-o masked token modelling: mask schedules, training masks, iterative parallel decoding.

This is the absorbing-state D3PM (``mmjax.diffusion.d3pm`` with ``kind="absorbing"``) seen from the sampler's
side: the network is the same x0 predictor, training masks a *count* of tokens drawn from a schedule gamma(r)
instead of masking each token independently with probability t/T, and decoding unmasks the most confident
predictions first instead of ancestral sampling. Working with counts and ranks avoids the dense (K, K)
matrices, so this scales to 8k-code image tokenizers.

Decoding works in *code space*: tokens are code ids in ``[0, K)`` plus ``mask_id`` (outside that range) at
unknown positions. A model with an offset vocabulary (Show-o: image code c is token 50305 + c) translates ids
and slices the code columns inside its ``logits_fn``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array
LogitsFn = Callable[[Array], Array]  # tokens (rows, N) -> logits (rows, N, K)

IGNORE_INDEX = -100
RULES = ("showo", "maskgit")


# ----------------------------------------------------------------------------------------------- schedules
def _log_schedule(r: Array, total: float) -> Array:
    return -jnp.log2(r) / math.log2(total)


def _exp_schedule(r: Array, total: float) -> Array:
    return 1.0 - jnp.exp2(-math.log2(total) * (1.0 - r))


GAMMAS: dict[str, Callable[[Array, float], Array]] = {
    "cosine": lambda r, n: jnp.cos(r * (math.pi / 2)),
    "linear": lambda r, n: 1.0 - r,
    "square": lambda r, n: 1.0 - r**2,
    "sqrt": lambda r, n: 1.0 - jnp.sqrt(r),
    "log": _log_schedule,
    "exp": _exp_schedule,
    "arccos": lambda r, n: jnp.arccos(r) / (math.pi / 2),
}


def mask_schedule(name: str, ratio: Array | float, total: int = 256) -> Array:
    """gamma(r): the fraction of tokens still masked at progress r in [0, 1], decreasing from ~1 to ~0.

    Computed in float32 on purpose: Show-o's released schedule is float32 and its step counts depend on it
    (cos(pi/3) rounds to 0.49999997, so 127 of 256 stay masked, not 128). ``total`` (the token count) only
    matters for "log" and "exp", whose shape depends on it. Clipped to [1e-6, 1] like MaskGIT.
    """
    if name not in GAMMAS:
        raise ValueError(f"unknown mask schedule {name!r}; choose from {sorted(GAMMAS)}")
    ratio = jnp.asarray(ratio, jnp.float32)
    return jnp.clip(GAMMAS[name](ratio, float(max(total, 2))), 1e-6, 1.0).astype(jnp.float32)


def num_masked(ratio: Array, num_tokens: int, *, rule: str = "showo", schedule: str = "cosine",
               min_masking_rate: float = 0.0) -> Array:
    """Training mask count per row for r ~ U(0,1), int32 in [1, N].

    "showo": ``max(1, round(N * max(gamma(r), min_masking_rate)))`` (Show-o's training rule);
    "maskgit": ``max(1, floor(N * max(gamma(r), min_masking_rate)))`` (the paper's).
    """
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}; got {rule!r}")
    rate = jnp.maximum(mask_schedule(schedule, ratio, num_tokens), jnp.float32(min_masking_rate))
    count = rate * jnp.float32(num_tokens)
    count = jnp.round(count) if rule == "showo" else jnp.floor(count)
    return jnp.clip(count, 1, num_tokens).astype(jnp.int32)


def _lowest_k(scores: Array, k: Array) -> Array:
    """Boolean (B, N): exactly k[b] lowest-scoring positions per row (by rank, so ties cannot overshoot)."""
    rank = jnp.argsort(jnp.argsort(scores, axis=-1, stable=True), axis=-1, stable=True)
    return rank < k[:, None]


# ------------------------------------------------------------------------------------------- training masks
def training_mask(rng: Array, ids: Array, *, mask_id: int, rule: str = "showo", schedule: str = "cosine",
                  min_masking_rate: float = 0.0, ratio: Array | None = None) -> tuple[Array, Array, Array]:
    """Mask a uniformly random set of exactly k tokens per row; k from ``num_masked`` with r ~ U(0,1) per row.

    ``ids`` is (B, ...) (flattened per row internally); pass ``ratio`` (B,) to fix r. Returns
    ``(masked_ids, mask, labels)``: mask_id at masked positions, the boolean mask, and the ids as labels with
    -100 at unmasked positions (the loss is on masked tokens only, the usual reimplementation bug otherwise).
    """
    batch, shape = ids.shape[0], ids.shape
    flat = ids.reshape(batch, -1)
    n = flat.shape[1]
    r_rng, s_rng = jax.random.split(rng)
    if ratio is None:
        ratio = jax.random.uniform(r_rng, (batch,), jnp.float32)
    k = num_masked(ratio, n, rule=rule, schedule=schedule, min_masking_rate=min_masking_rate)
    mask = _lowest_k(jax.random.uniform(s_rng, (batch, n)), k).reshape(shape)
    masked_ids = jnp.where(mask, jnp.asarray(mask_id, ids.dtype), ids)
    labels = jnp.where(mask, ids, jnp.asarray(IGNORE_INDEX, ids.dtype))
    return masked_ids, mask, labels


def masked_ce_loss(logits: Array, labels: Array, label_smoothing: float = 0.0) -> Array:
    """Mean cross-entropy over positions whose label is not -100 (MaskGIT uses label smoothing 0.1)."""
    logits = logits.astype(jnp.float32)
    valid = labels != IGNORE_INDEX
    k = logits.shape[-1]
    target = jax.nn.one_hot(jnp.where(valid, labels, 0), k, dtype=jnp.float32)
    if label_smoothing:
        target = target * (1.0 - label_smoothing) + label_smoothing / k
    nll = -jnp.sum(target * jax.nn.log_softmax(logits, -1), -1)
    return jnp.sum(nll * valid) / jnp.maximum(valid.sum(), 1)


# ---------------------------------------------------------------------------------------------- decoding
class Decoded(NamedTuple):
    tokens: Array  # (B, N) the last step's prediction, every position filled
    num_masked: Array  # (B, num_steps) tokens still masked after each step


def decode(logits_fn: LogitsFn, tokens: Array, *, mask_id: int, num_steps: int, rng: Array,
           guidance_scale: float = 0.0, temperature: float = 1.0, choice_temperature: float | None = None,
           schedule: str = "cosine", rule: str = "showo", codebook_size: int | None = None) -> Decoded:
    """Iterative parallel decoding (MaskGIT / Show-o T2I sampling) in one fixed-shape ``fori_loop``.

    Args:
      logits_fn: tokens (rows, N) -> logits (rows, N, K). With ``guidance_scale > 0`` it is called ONCE per
        step on ``[tokens; tokens]`` (2B rows): the caller pairs the first B rows with the conditional prefix
        and the last B with the unconditional one; the combination is ``(1+w) c - w u``. With 0 only B rows
        are run.
      tokens: (B, N) code ids with ``mask_id`` at unknown positions; known tokens (inpainting) never change.
      guidance_scale, temperature: Python floats (static). ``temperature`` divides the sampling logits (the
        confidences then come from that tempered distribution); 0 means argmax. Both references sample from
        the plain softmax (1.0): neither has this knob.
      choice_temperature: scale of the Gumbel noise added to the log-confidences that choose which tokens
        stay. This is the references' temperature: Show-o's ``generation_temperature`` (its ``t2i_generate``
        argument ``temperature``, default 1.0, compounded: ``temp *= 1 - ratio`` each step, see
        ``mask_by_random_topk``) and MaskGIT's ``choice_temperature`` (default 4.5, annealed linearly:
        ``4.5 * (1 - ratio)``). None picks the rule's default.
      rule: "showo": ``mask_len = floor(N * gamma(ratio))`` over all N positions; "maskgit":
        ``floor(N_unknown_at_start * gamma(ratio))``. Both clamp to ``[1, #unknown - 1]`` (and never above
        #unknown, so a fully known row is left alone).
      codebook_size: if given, only the first ``codebook_size`` logit columns are used.
    Returns:
      ``Decoded(tokens, num_masked)``.
    """
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}; got {rule!r}")
    if choice_temperature is None:
        choice_temperature = 1.0 if rule == "showo" else 4.5
    batch, n = tokens.shape
    tokens = tokens.astype(jnp.int32)
    unknown0 = jnp.sum(tokens == mask_id, -1)
    base = jnp.full((batch,), n, jnp.int32) if rule == "showo" else unknown0

    def step_logits(cur: Array) -> Array:
        if guidance_scale > 0:
            both = logits_fn(jnp.concatenate([cur, cur], 0)).astype(jnp.float32)
            cond, uncond = both[:batch], both[batch:]
            logits = (1.0 + guidance_scale) * cond - guidance_scale * uncond
        else:
            logits = logits_fn(cur).astype(jnp.float32)
        if codebook_size is not None:
            logits = logits[..., :codebook_size]
        if 0 <= mask_id < logits.shape[-1]:
            raise ValueError(f"mask_id {mask_id} is a code id (K={logits.shape[-1]}); decode in code space "
                             "with mask_id >= K")
        return logits

    def body(s, carry):
        cur, _, ctemp, key, history = carry
        key, sample_key, noise_key = jax.random.split(key, 3)
        logits = step_logits(cur)
        if temperature > 0:
            logits = logits / temperature
            sampled = jax.random.categorical(sample_key, logits, axis=-1).astype(jnp.int32)
        else:
            sampled = jnp.argmax(logits, -1).astype(jnp.int32)
        unknown = cur == mask_id
        x_hat = jnp.where(unknown, sampled, cur)

        ratio = (s + 1).astype(jnp.float32) / jnp.float32(num_steps)
        n_unknown = unknown.sum(-1)
        mask_len = jnp.floor(base.astype(jnp.float32) * mask_schedule(schedule, ratio, n)).astype(jnp.int32)
        mask_len = jnp.maximum(1, jnp.minimum(n_unknown - 1, mask_len))
        mask_len = jnp.minimum(mask_len, n_unknown)
        if rule == "showo":
            ctemp = ctemp * (1.0 - ratio)
            noise_scale = ctemp
        else:
            noise_scale = jnp.float32(choice_temperature) * (1.0 - ratio)

        probs = jax.nn.softmax(logits, -1)
        p_sel = jnp.take_along_axis(probs, x_hat[..., None], -1)[..., 0]
        conf = jnp.log(jnp.maximum(p_sel, 1e-20)) + noise_scale * jax.random.gumbel(noise_key, p_sel.shape)
        conf = jnp.where(unknown, conf, jnp.inf)
        remask = _lowest_k(conf, mask_len)
        nxt = jnp.where(remask, mask_id, x_hat)
        history = history.at[:, s].set(jnp.sum(nxt == mask_id, -1).astype(jnp.int32))
        return nxt, x_hat, ctemp, key, history

    init = (tokens, tokens, jnp.float32(choice_temperature), rng, jnp.zeros((batch, num_steps), jnp.int32))
    _, x_hat, _, _, history = jax.lax.fori_loop(0, num_steps, body, init)
    return Decoded(x_hat, history)
