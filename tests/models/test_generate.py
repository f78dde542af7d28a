"""Generation: KV-cache decoding equals re-running the full sequence; left padding; stops; sampling."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.models.generate import generate, sample_logits
from mmjax.models.lm import LM, get_config

NEW = 6


@functools.cache
def _setup(name="tiny-llama", **overrides):
    cfg = get_config(name, **overrides)
    params = jax.jit(LM(cfg).init)(jax.random.key(3), jnp.zeros((1, 4), jnp.int32))["params"]
    return LM(cfg), jax.tree.map(lambda x: x * 4.0 if x.ndim >= 2 else x, jax.device_get(params))


def _no_cache_greedy(model, params, prompt, new, full_mask=None):
    """Reference: each step re-runs the whole sequence (a fixed causal buffer: later slots do not matter)."""
    b, p = prompt.shape
    buf = jnp.concatenate([prompt, jnp.zeros((b, new), jnp.int32)], axis=1)
    if full_mask is None:
        run = jax.jit(lambda x: model.apply({"params": params}, x))
    else:
        run = jax.jit(lambda x: model.apply({"params": params}, x, mask=full_mask, is_causal=False))
    for t in range(new):
        nxt = jnp.argmax(run(buf)[:, p + t - 1], axis=-1)
        buf = buf.at[:, p + t].set(nxt)
    return np.asarray(buf[:, p:])


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-phi"])
def test_greedy_with_cache_equals_no_cache(name):
    model, params = _setup(name)
    prompt = jax.random.randint(jax.random.key(0), (2, 5), 0, 128)
    out = generate(model, params, prompt, max_new_tokens=NEW)
    np.testing.assert_array_equal(out.tokens, _no_cache_greedy(model, params, prompt, NEW))
    np.testing.assert_array_equal(out.lengths, [NEW, NEW])


def test_left_padded_batch_rows_equal_single_rows():
    model, params = _setup("tiny-qwen2")
    rows = [np.array([5, 9, 17]), np.array([3, 1, 4, 1, 5, 92])]
    p = max(len(r) for r in rows)
    prompt = np.stack([np.pad(r, (p - len(r), 0)) for r in rows])
    valid = np.stack([np.arange(p) >= p - len(r) for r in rows])
    batched = generate(model, params, prompt, prompt_valid=valid, max_new_tokens=NEW)
    for i, r in enumerate(rows):
        single = generate(model, params, r[None], max_new_tokens=NEW)
        np.testing.assert_array_equal(batched.tokens[i], single.tokens[0])


def test_stop_tokens_end_rows_and_pad_the_rest():
    model, params = _setup()
    prompt = jax.random.randint(jax.random.key(1), (2, 4), 0, 128)
    free = np.asarray(generate(model, params, prompt, max_new_tokens=NEW).tokens)
    stop = int(free[0, 2])
    out = generate(model, params, prompt, max_new_tokens=NEW, stop_tokens=(stop,), pad_id=-1)
    first = int(np.argmax(free[0] == stop))
    np.testing.assert_array_equal(out.tokens[0, :first + 1], free[0, :first + 1])
    assert (np.asarray(out.tokens[0, first + 1:]) == -1).all() and int(out.lengths[0]) == first + 1
    row1_stops = np.flatnonzero(free[1] == stop)
    want = row1_stops[0] + 1 if len(row1_stops) else NEW
    assert int(out.lengths[1]) == want
    np.testing.assert_array_equal(out.tokens[1, :want], free[1, :want])


def test_bidirectional_prefix_in_prefill():
    model, params = _setup("tiny-phi", qk_norm="layernorm")
    prompt = jax.random.randint(jax.random.key(2), (2, 5), 0, 128)
    n_prefix = 3
    q, k = np.arange(5 + NEW)[:, None], np.arange(5 + NEW)[None, :]
    full = jnp.asarray((k <= q) | ((q < n_prefix) & (k < n_prefix)))
    out = generate(model, params, prompt, max_new_tokens=NEW, prefill_mask=full[None, None, :5, :5])
    np.testing.assert_array_equal(out.tokens, _no_cache_greedy(model, params, prompt, NEW, full_mask=full))
    causal = generate(model, params, prompt, max_new_tokens=NEW)
    assert not np.array_equal(out.tokens, causal.tokens)  # the prefix mask matters


def test_prompt_embeds_equal_prompt_ids():
    model, params = _setup()
    prompt = jax.random.randint(jax.random.key(4), (2, 5), 0, 128)
    embeds = model.apply({"params": params}, prompt, method=LM.embed)
    a = generate(model, params, prompt, max_new_tokens=4)
    b = generate(model, params, prompt, prompt_embeds=embeds, max_new_tokens=4)
    np.testing.assert_array_equal(a.tokens, b.tokens)


def test_sampling_filters():
    logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]] * 512))
    keys = jax.random.key(0)
    greedy = sample_logits(logits, keys)
    assert (greedy == 0).all()
    top2 = sample_logits(logits, keys, temperature=1.0, top_k=2)
    assert set(np.unique(top2)) == {0, 1}
    nucleus = sample_logits(logits, keys, temperature=1.0, top_p=0.7)  # 0.5 + 0.3 reaches 0.7
    assert set(np.unique(nucleus)) == {0, 1}
    assert set(np.unique(sample_logits(logits, keys, temperature=1.0, top_p=0.4))) == {0}
    everything = sample_logits(logits, keys, temperature=1.0)
    assert set(np.unique(everything)) == {0, 1, 2, 3}
    model, params = _setup()
    prompt = jax.random.randint(jax.random.key(5), (2, 4), 0, 128)
    sampled = generate(model, params, prompt, max_new_tokens=4, temperature=0.7, top_k=1,
                       rng=jax.random.key(9))
    np.testing.assert_array_equal(sampled.tokens, generate(model, params, prompt, max_new_tokens=4).tokens)
    with pytest.raises(ValueError, match="bad sampling"):
        generate(model, params, prompt, max_new_tokens=4, top_p=0.0)



def test_several_steps_per_loop_iteration_give_the_same_tokens_and_stops():
    """4 tokens per turn of the device loop over 6 new tokens (the last turn overshoots by 3): the same tokens and
    lengths as 1 per turn, with one row stopping early (on its second token) and the other not."""
    model, params = _setup()
    prompt = jax.random.randint(jax.random.key(1), (2, 4), 0, 128)
    free = np.asarray(generate(model, params, prompt, max_new_tokens=NEW).tokens)
    stop = int(free[0, 1])
    stopped = [generate(model, params, prompt, max_new_tokens=NEW, stop_tokens=(stop,), pad_id=-1,
                        steps_per_iteration=k) for k in (1, 4)]
    np.testing.assert_array_equal(stopped[0].tokens, stopped[1].tokens)
    np.testing.assert_array_equal(stopped[0].lengths, stopped[1].lengths)
    assert int(stopped[1].lengths[0]) <= 2 and (np.asarray(stopped[1].tokens[0, 2:]) == -1).all()
    with pytest.raises(ValueError, match="steps_per_iteration=0"):
        generate(model, params, prompt, max_new_tokens=NEW, steps_per_iteration=0)
