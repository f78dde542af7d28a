"""MaskGIT / Show-o: schedules, training masks and the decode loop, against the reference's numbers."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.diffusion import maskgit

K = 16  # codebook size used by the decode tests; mask_id = K
SHOWO_COUNTS = {
    (256, 12): [253, 247, 236, 221, 203, 181, 155, 127, 97, 66, 33, 1],
    (256, 18): [255, 252, 247, 240, 232, 221, 209, 196, 181, 164, 146, 127, 108, 87, 66, 44, 22, 1],
    (1024, 12): [1015, 989, 946, 886, 812, 724, 623, 511, 391, 265, 133, 1],
}


def _random_logits_fn(batch: int, n: int, seed: int = 0):
    table = jax.random.normal(jax.random.key(seed), (batch, n, K)) * 2.0
    return lambda tokens: table[: tokens.shape[0]] + 0.01 * (tokens[..., None] == K)


@pytest.mark.parametrize(("n", "steps"), list(SHOWO_COUNTS))
def test_showo_masked_counts_per_step(n, steps):
    fn = _random_logits_fn(2, n)
    run = jax.jit(lambda tokens, rng: maskgit.decode(fn, tokens, mask_id=K, num_steps=steps, rng=rng))
    out = run(jnp.full((2, n), K), jax.random.key(1))
    np.testing.assert_array_equal(np.asarray(out.num_masked), np.array([SHOWO_COUNTS[(n, steps)]] * 2))
    tokens = np.asarray(out.tokens)
    assert tokens.shape == (2, n) and tokens.min() >= 0 and tokens.max() < K  # every position filled


def test_maskgit_rule_counts_from_unknown_at_start():
    n, steps = 64, 8
    tokens = jnp.full((2, n), K).at[1, :24].set(3)  # row 1: 40 unknown at start
    out = maskgit.decode(_random_logits_fn(2, n), tokens, mask_id=K, num_steps=steps, rng=jax.random.key(2),
                         rule="maskgit")
    for row, unknown0 in enumerate((64, 40)):
        left = unknown0
        for s in range(steps):
            gamma = max(np.float32(np.cos(np.float32((s + 1) / steps) * np.float32(math.pi / 2))), 1e-6)
            left = max(1, min(left - 1, math.floor(unknown0 * gamma)))
            assert int(out.num_masked[row, s]) == left
    assert np.all(np.asarray(out.tokens[1, :24]) == 3)


@pytest.mark.parametrize("rule", maskgit.RULES)
def test_known_tokens_never_change(rule):
    n, batch = 64, 3
    known = jax.random.bernoulli(jax.random.key(3), 0.5, (batch, n)).at[2].set(True)  # row 2 fully known
    values = jax.random.randint(jax.random.key(4), (batch, n), 0, K)
    tokens = jnp.where(known, values, K)
    seen = []

    def fn(tok):  # records every step's input on the host, so intermediate states are checked too
        jax.debug.callback(lambda t: seen.append(np.asarray(t)), tok, ordered=True)
        return _random_logits_fn(batch, n)(tok)

    out = maskgit.decode(fn, tokens, mask_id=K, num_steps=6, rng=jax.random.key(5), rule=rule,
                         guidance_scale=0.0)
    known_np, values_np = np.asarray(known), np.asarray(values)
    assert len(seen) == 6
    for step_tokens in [*seen, np.asarray(out.tokens)]:
        np.testing.assert_array_equal(step_tokens[known_np], values_np[known_np])
    assert np.asarray(out.tokens).max() < K
    np.testing.assert_array_equal(np.asarray(out.num_masked[2]), 0)


@pytest.mark.parametrize("guidance", [0.0, 2.5])
def test_guidance_rows(guidance):
    """w = 0 never computes the unconditional branch; w > 0 runs cond and uncond in one call of 2B rows."""
    rows = []

    def fn(tok):
        rows.append(tok.shape[0])
        return jnp.zeros((*tok.shape, K))

    maskgit.decode(fn, jnp.full((3, 16), K), mask_id=K, num_steps=4, rng=jax.random.key(0),
                   guidance_scale=guidance)
    assert rows == ([6] if guidance else [3])  # traced once: the loop compiles a single step


@pytest.mark.parametrize("steps", [1, 4])
def test_guidance_combination_argmax(steps):
    batch, n, w = 2, 32, 1.5
    cond = jax.random.normal(jax.random.key(6), (batch, n, K))
    uncond = jax.random.normal(jax.random.key(7), (batch, n, K))
    fn = lambda tok: jnp.concatenate([cond, uncond]) if tok.shape[0] == 2 * batch else cond
    out = maskgit.decode(fn, jnp.full((batch, n), K), mask_id=K, num_steps=steps, rng=jax.random.key(8),
                         guidance_scale=w, temperature=0.0, choice_temperature=0.0)
    expected = np.argmax((1 + w) * np.asarray(cond) - w * np.asarray(uncond), -1)
    np.testing.assert_array_equal(np.asarray(out.tokens), expected)
    assert np.any(expected != np.argmax(np.asarray(cond), -1))  # the guidance actually changed something


def test_most_confident_tokens_are_kept_first():
    n = 8
    logits = jnp.log(jnp.full((1, n, K), 1e-3).at[0, jnp.arange(n), jnp.arange(n)].set(
        jnp.linspace(0.2, 0.9, n)))  # position i predicts code i with confidence increasing in i
    seen = []

    def fn(tok):
        jax.debug.callback(lambda t: seen.append(np.asarray(t)), tok, ordered=True)
        return logits

    maskgit.decode(fn, jnp.full((1, n), K), mask_id=K, num_steps=2, rng=jax.random.key(9), temperature=0.0,
                   choice_temperature=0.0)
    # step 1: mask_len = floor(8 cos(pi/4)) = 5, so the 3 most confident positions (5, 6, 7) are kept.
    np.testing.assert_array_equal(seen[1][0], [K] * 5 + [5, 6, 7])


def _hand_decode(logits: np.ndarray, steps: int, rng: jax.Array, generation_temperature: float,
                 logit_temperature: float) -> list[np.ndarray]:
    """Show-o's t2i_generate loop written out for one row from a blank canvas, numpy for every formula; only the
    random draws come from jax, with the keys `decode` splits (key, sample, noise = split(key, 3) per step)."""
    n = logits.shape[0]
    cur, temp, key, states = np.full(n, K), generation_temperature, rng, []
    for s in range(steps):
        key, sample_key, noise_key = jax.random.split(key, 3)
        scaled = logits / logit_temperature
        sampled = np.asarray(jax.random.categorical(sample_key, jnp.asarray(scaled)[None], axis=-1))[0]
        probs = np.exp(scaled - scaled.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        unknown = cur == K
        x_hat = np.where(unknown, sampled, cur)
        ratio = (s + 1) / steps
        mask_len = math.floor(n * np.float32(np.cos(np.float32(ratio) * np.float32(math.pi / 2))))
        mask_len = max(1, min(int(unknown.sum()) - 1, mask_len))
        temp = temp * (1.0 - ratio)  # compounds: step s uses g * prod_{i <= s} (1 - r_i)
        gumbel = np.asarray(jax.random.gumbel(noise_key, (1, n)))[0]
        conf = np.log(np.maximum(probs[np.arange(n), x_hat], 1e-20)) + temp * gumbel
        conf = np.where(unknown, conf, np.inf)
        cur = np.where(np.isin(np.arange(n), np.argsort(conf, kind="stable")[:mask_len]), K, x_hat)
        states.append(cur.copy())
    return states


@pytest.mark.parametrize("generation_temperature,logit_temperature", [(1.0, 1.0), (3.0, 1.0), (0.0, 0.5),
                                                                      (2.0, 2.0)])
def test_decode_steps_equal_the_hand_computed_reference(generation_temperature, logit_temperature):
    """`choice_temperature` is Show-o's generation_temperature (Gumbel noise on the confidences, compounded),
    `temperature` divides the sampling logits; the default pair (1, 1) is the reference's sampler."""
    n, steps = 12, 4
    logits = np.asarray(jax.random.normal(jax.random.key(11), (n, K))) * 2.0
    seen = []

    def fn(tok):
        jax.debug.callback(lambda t: seen.append(np.asarray(t)), tok, ordered=True)
        return jnp.asarray(logits)[None]

    rng = jax.random.key(12)
    out = maskgit.decode(fn, jnp.full((1, n), K), mask_id=K, num_steps=steps, rng=rng,
                         temperature=logit_temperature, choice_temperature=generation_temperature)
    hand = _hand_decode(logits, steps, rng, generation_temperature, logit_temperature)
    for s in range(steps - 1):
        np.testing.assert_array_equal(seen[s + 1][0], hand[s])
    np.testing.assert_array_equal(np.asarray(out.num_masked[0]), [(h == K).sum() for h in hand])


def test_generation_temperature_only_reorders_which_tokens_stay():
    """The Gumbel temperature never changes the sampled tokens (same keys), only which of them are kept; the
    logit temperature changes the samples themselves."""
    n = 64
    logits = jax.random.normal(jax.random.key(13), (1, n, K)) * 2.0
    fn = lambda tok: logits
    run = lambda **kw: maskgit.decode(fn, jnp.full((1, n), K), mask_id=K, num_steps=1, rng=jax.random.key(14), **kw)
    base, noisy, sharp = run(), run(choice_temperature=50.0), run(temperature=0.0)
    np.testing.assert_array_equal(base.tokens, noisy.tokens)  # one step: every sample is returned
    np.testing.assert_array_equal(sharp.tokens, jnp.argmax(logits, -1))
    assert (np.asarray(base.tokens) != np.asarray(sharp.tokens)).any()


@pytest.mark.parametrize("rule", maskgit.RULES)
def test_training_mask_exact_counts(rule):
    batch, n = 64, 256
    ids = jax.random.randint(jax.random.key(10), (batch, n), 0, 8192)
    ratio = jax.random.uniform(jax.random.key(11), (batch,)).at[0].set(0.0).at[1].set(0.9999)
    masked_ids, mask, labels = maskgit.training_mask(jax.random.key(12), ids, mask_id=8192, rule=rule,
                                                     ratio=ratio)
    rate = np.cos(np.pi * np.asarray(ratio, np.float64) / 2) * n
    expected = np.maximum(1, np.round(rate) if rule == "showo" else np.floor(rate + 1e-9)).astype(int)
    mask, ids, labels, masked_ids = (np.asarray(a) for a in (mask, ids, labels, masked_ids))
    np.testing.assert_array_equal(mask.sum(-1), expected)
    assert expected[0] == n and expected[1] == 1
    np.testing.assert_array_equal(labels, np.where(mask, ids, -100))
    np.testing.assert_array_equal(masked_ids, np.where(mask, 8192, ids))


def test_training_mask_is_uniform_and_shaped():
    ids = jnp.zeros((4000, 4, 4), jnp.int32)
    _, mask, _ = maskgit.training_mask(jax.random.key(13), ids, mask_id=99, ratio=jnp.full((4000,), 2 / 3))
    mask = np.asarray(mask)
    assert mask.shape == (4000, 4, 4)
    np.testing.assert_array_equal(mask.sum((1, 2)), 8)  # round(16 * cos(pi/3)) = 8
    np.testing.assert_allclose(mask.mean(0), 0.5, atol=0.04)  # every position equally likely
    # random r: counts always in [1, N]; min_masking_rate floors the rate
    _, mask, _ = maskgit.training_mask(jax.random.key(14), ids, mask_id=99, min_masking_rate=0.5)
    counts = np.asarray(mask).sum((1, 2))
    assert counts.min() >= 8 and counts.max() <= 16 and len(np.unique(counts)) > 3


@pytest.mark.parametrize("name", sorted(maskgit.GAMMAS))
def test_mask_schedules(name):
    r = jnp.linspace(0.0, 1.0, 101)
    g = np.asarray(maskgit.mask_schedule(name, r, total=256))
    assert g.dtype == np.float32 and g.min() >= 1e-6 and g.max() <= 1.0
    assert np.all(np.diff(g) <= 1e-7) and g[0] > 0.99 and g[-1] < 1e-3
    assert float(maskgit.mask_schedule("cosine", 2 / 3)) * 256 < 128  # Show-o's float32 parity trap
    with pytest.raises(ValueError, match="unknown mask schedule"):
        maskgit.mask_schedule("zigzag", r)


def test_masked_ce_loss_ignores_unmasked():
    logits = jax.random.normal(jax.random.key(15), (2, 5, 7))
    labels = jnp.array([[1, -100, 3, -100, -100], [-100, -100, -100, -100, 6]])
    logp = np.asarray(jax.nn.log_softmax(logits, -1))
    expected = -(logp[0, 0, 1] + logp[0, 2, 3] + logp[1, 4, 6]) / 3
    assert float(maskgit.masked_ce_loss(logits, labels)) == pytest.approx(expected, rel=1e-5)
