import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mmjax.train import optim


def params():
    return {"dense": {"kernel": jnp.ones((3, 2)), "bias": jnp.ones((2,))}, "ln": {"scale": jnp.ones((2,))},
            "head": {"kernel": jnp.ones((2, 2))}}


def paths(tree):
    return [optim.path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def step(cfg, p, grads, n=1):
    tx, _ = optim.make_optimizer(cfg, paths(p), total_steps=100)
    state = tx.init(p)
    for _ in range(n):
        updates, state = tx.update(grads, state, p)
        p = optax.apply_updates(p, updates)
    return p


def test_weight_decay_skips_biases_and_norms():
    cfg = optim.default_config(name="sgd", lr=0.1, momentum=0.0, weight_decay=0.5, clip_norm=0.0)
    p = params()
    out = step(cfg, p, jax.tree.map(jnp.zeros_like, p))
    np.testing.assert_allclose(out["dense"]["kernel"], 1 - 0.1 * 0.5)
    np.testing.assert_allclose(out["dense"]["bias"], 1.0)
    np.testing.assert_allclose(out["ln"]["scale"], 1.0)


def test_frozen_groups_never_move_and_do_not_count_for_clipping():
    cfg = optim.default_config(name="sgd", lr=1.0, momentum=0.0, weight_decay=0.0, clip_norm=1.0,
                               frozen=(r"^dense/",))
    p = params()
    grads = jax.tree.map(jnp.ones_like, p)
    grads["dense"]["kernel"] = 1e6 * grads["dense"]["kernel"]   # huge, but frozen: must not shrink the others
    out = step(cfg, p, grads)
    np.testing.assert_array_equal(out["dense"]["kernel"], p["dense"]["kernel"])
    np.testing.assert_array_equal(out["dense"]["bias"], p["dense"]["bias"])
    unfrozen_norm = np.sqrt(2 + 4)  # ln/scale (2) + head/kernel (4) ones
    np.testing.assert_allclose(out["head"]["kernel"], 1 - 1 / unfrozen_norm, rtol=1e-6)


def test_frozen_pattern_matching_nothing_is_refused():
    with pytest.raises(ValueError, match="matches no parameter"):
        optim.make_optimizer(optim.default_config(frozen=("projector",)), paths(params()), 10)


def test_lr_multiplier_groups():
    cfg = optim.default_config(name="sgd", lr=1.0, momentum=0.0, weight_decay=0.0, clip_norm=0.0,
                               lr_mult={"^head/": 0.1})
    p = params()
    out = step(cfg, p, jax.tree.map(jnp.ones_like, p))
    np.testing.assert_allclose(out["head"]["kernel"], 0.9, rtol=1e-6)
    np.testing.assert_allclose(out["dense"]["kernel"], 0.0, atol=1e-6)


def test_gradient_accumulation_equals_the_mean_gradient():
    p = params()
    g1 = jax.tree.map(lambda x: jnp.full_like(x, 1.0), p)
    g2 = jax.tree.map(lambda x: jnp.full_like(x, 3.0), p)
    base = dict(name="adamw", lr=0.1, weight_decay=0.0, clip_norm=0.0)
    tx, _ = optim.make_optimizer(optim.default_config(**base, grad_accum=2), paths(p), 100)
    state = tx.init(p)
    q = p
    for g in (g1, g2):
        u, state = tx.update(g, state, q)
        q = optax.apply_updates(q, u)
    ref = step(optim.default_config(**base), p, jax.tree.map(lambda a, b: (a + b) / 2, g1, g2))
    for a, b in zip(jax.tree.leaves(q), jax.tree.leaves(ref), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_schedule_warmup_then_cosine_to_zero():
    sched = optim.schedule(optim.default_config(lr=1.0, warmup_steps=10, schedule="cosine"), 110)
    assert float(sched(0)) == 0.0 and abs(float(sched(10)) - 1.0) < 1e-6 and abs(float(sched(110))) < 1e-6
    assert 0.45 < float(sched(60)) < 0.55


def test_gradient_accumulation_schedule_spans_real_updates():
    cfg = optim.default_config(lr=1.0, warmup_steps=0, schedule="linear", grad_accum=4)
    _, lr = optim.make_optimizer(cfg, paths(params()), total_steps=400)
    assert float(lr(0)) == 1.0 and abs(float(lr(200)) - 0.5) < 1e-6 and abs(float(lr(399))) < 0.01
