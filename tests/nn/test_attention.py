"""Attention: GQA, masks, the XLA kernel against a hand einsum, QK-norm, partial RoPE and the KV cache."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.nn.attention import Attention, KVCache, attention_op, select_backend
from mmjax.nn.posemb import apply_rotary

B, T, E = 2, 6, 32


def _x(seed=0, t=T):
    return jax.random.normal(jax.random.key(seed), (B, t, E), jnp.float32)


def _reference(q, k, v, mask):
    """Plain einsum attention in float64 numpy, kv heads repeated to the query heads."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    rep = q.shape[2] // k.shape[2]
    k, v = np.repeat(k, rep, axis=2), np.repeat(v, rep, axis=2)
    logits = np.einsum("bthd,bshd->bhts", q, k) / np.sqrt(q.shape[-1])
    if mask is not None:
        logits = np.where(np.broadcast_to(mask, logits.shape), logits, -1e30)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.einsum("bhts,bshd->bthd", p, v)


def test_param_shapes_and_names():
    m = Attention(num_heads=4, head_dim=8, num_kv_heads=2, out_name="dense", qk_norm="layernorm")
    params = nn.unbox(m.init(jax.random.key(0), _x())["params"])
    shapes = jax.tree.map(jnp.shape, params)
    assert shapes["q_proj"]["kernel"] == (E, 4, 8)
    assert shapes["k_proj"]["kernel"] == (E, 2, 8)
    assert shapes["v_proj"]["bias"] == (2, 8)
    assert shapes["dense"]["kernel"] == (4, 8, E)
    assert shapes["q_norm"]["scale"] == (8,)
    boxed = m.init(jax.random.key(0), _x())["params"]
    assert boxed["q_proj"]["kernel"].names == ("embed", "heads", "head_dim")
    assert boxed["k_proj"]["kernel"].names == ("embed", "kv_heads", "head_dim")
    assert boxed["dense"]["kernel"].names == ("heads", "head_dim", "embed")


@pytest.mark.parametrize("kv_heads", [4, 2, 1])
def test_xla_kernel_matches_einsum_reference(kv_heads):
    ks = jax.random.split(jax.random.key(1), 4)
    q = jax.random.normal(ks[0], (B, T, 4, 8))
    k = jax.random.normal(ks[1], (B, T, kv_heads, 8))
    v = jax.random.normal(ks[2], (B, T, kv_heads, 8))
    mask = jax.random.bernoulli(ks[3], 0.6, (B, 1, T, T)) | jnp.eye(T, dtype=bool)
    for m in (None, mask):
        out = attention_op(q, k, v, mask=m, backend="xla")
        np.testing.assert_allclose(out, _reference(q, k, v, m), atol=1e-5)


def test_gqa_equals_mha_with_repeated_kv_heads():
    x = _x()
    gqa = Attention(num_heads=4, head_dim=8, num_kv_heads=2, rotary_dim=8)
    p = nn.unbox(gqa.init(jax.random.key(0), x)["params"])
    mha_p = jax.tree.map(lambda a: a, p)
    for name in ("k_proj", "v_proj"):
        mha_p[name] = {"kernel": jnp.repeat(p[name]["kernel"], 2, axis=1),
                       "bias": jnp.repeat(p[name]["bias"], 2, axis=0)}
    mha = Attention(num_heads=4, head_dim=8, rotary_dim=8)
    y1 = gqa.apply({"params": p}, x, is_causal=True)
    y2 = mha.apply({"params": mha_p}, x, is_causal=True)
    np.testing.assert_allclose(y1, y2, atol=1e-6)


def test_full_causal_mask_equals_is_causal_and_no_mask_is_bidirectional():
    x = _x()
    m = Attention(num_heads=4, head_dim=8, rotary_dim=4)
    p = m.init(jax.random.key(0), x)
    causal = jnp.tril(jnp.ones((T, T), bool))
    y_flag = m.apply(p, x, is_causal=True)
    np.testing.assert_allclose(m.apply(p, x, mask=causal), y_flag, atol=1e-6)
    np.testing.assert_allclose(m.apply(p, x, mask=jnp.broadcast_to(causal, (B, 1, T, T))), y_flag, atol=1e-6)
    # No mask: the last token's change reaches the first position (bidirectional); causal: it does not.
    x2 = x.at[:, -1].add(1.0)
    assert not np.allclose(m.apply(p, x)[:, 0], m.apply(p, x2)[:, 0])
    np.testing.assert_allclose(m.apply(p, x, is_causal=True)[:, 0], m.apply(p, x2, is_causal=True)[:, 0],
                               atol=1e-6)


def test_module_matches_hand_reference_with_partial_rope_and_qk_norm():
    x = _x()
    m = Attention(num_heads=4, head_dim=8, num_kv_heads=2, qk_norm="layernorm", rotary_dim=4)
    p = nn.unbox(m.init(jax.random.key(0), x)["params"])
    p["q_norm"]["scale"] = p["q_norm"]["scale"] + jnp.arange(8) * 0.1
    p["k_norm"]["bias"] = p["k_norm"]["bias"] + 0.3
    mask = jnp.tril(jnp.ones((T, T), bool))
    y = m.apply({"params": p}, x, mask=mask)

    def proj(name):
        return jnp.einsum("bte,ehd->bthd", x, p[name]["kernel"]) + p[name]["bias"]

    def ln(a, s):
        mu = a.mean(-1, keepdims=True)
        var = ((a - mu) ** 2).mean(-1, keepdims=True)
        return (a - mu) / jnp.sqrt(var + 1e-5) * s["scale"] + s["bias"]

    pos = jnp.broadcast_to(jnp.arange(T), (B, T))
    q = apply_rotary(ln(proj("q_proj"), p["q_norm"]), pos, 4)
    k = apply_rotary(ln(proj("k_proj"), p["k_norm"]), pos, 4)
    out = _reference(q, k, proj("v_proj"), mask)
    ref = np.einsum("bthd,hde->bte", out, p["o_proj"]["kernel"]) + p["o_proj"]["bias"]
    np.testing.assert_allclose(y, ref, atol=1e-5)


def test_qk_norm_is_per_head():
    """Scaling one head's q projection must not change what the norm does to the other heads."""
    x = _x()
    m = Attention(num_heads=4, head_dim=8, qk_norm="rmsnorm", rotary_dim=0)
    p = nn.unbox(m.init(jax.random.key(0), x)["params"])
    p2 = jax.tree.map(lambda a: a, p)
    p2["q_proj"] = dict(p["q_proj"], kernel=p["q_proj"]["kernel"].at[:, 0].multiply(5.0),
                        bias=p["q_proj"]["bias"].at[0].multiply(5.0))
    cap = {}

    def run(params):
        _, state = m.apply({"params": params}, x, capture_intermediates=True, mutable=["intermediates"])
        return state["intermediates"]["q_norm"]["__call__"][0]

    cap["a"], cap["b"] = run(p), run(p2)
    np.testing.assert_array_equal(cap["a"][:, :, 1:], cap["b"][:, :, 1:])  # other heads: untouched
    np.testing.assert_allclose(cap["a"][:, :, 0], cap["b"][:, :, 0], rtol=1e-3, atol=1e-4)  # scale removed


def test_rotary_dims_beyond_rotary_dim_untouched():
    x = jax.random.normal(jax.random.key(0), (B, T, 4, 16))
    pos = jnp.broadcast_to(jnp.arange(T) * 3, (B, T))
    y = apply_rotary(x, pos, rotary_dim=8)
    np.testing.assert_array_equal(y[..., 8:], x[..., 8:])
    assert not np.allclose(y[..., :8], x[..., :8])


def test_kv_cache_decoding_matches_full_pass():
    x = _x(t=T)
    m = Attention(num_heads=4, head_dim=8, num_kv_heads=2, rotary_dim=8)
    p = m.init(jax.random.key(0), x)
    full = m.apply(p, x, is_causal=True)
    cache = KVCache.zeros(B, 10, 2, 8)
    y0, cache = m.apply(p, x[:, :4], is_causal=True, cache=cache)
    outs = [y0]
    for t in range(4, T):
        y, cache = m.apply(p, x[:, t:t + 1], is_causal=True, cache=cache)
        outs.append(y)
    assert int(cache.index) == T
    np.testing.assert_allclose(jnp.concatenate(outs, 1), full, atol=1e-5)


def test_backend_selection_on_cpu_is_xla():
    assert select_backend("auto", jnp.bfloat16, 64, 8, 8) == "xla"
    assert select_backend("cudnn", jnp.bfloat16, 64, 8, 8) == "cudnn"
    with pytest.raises(ValueError, match="unknown attention backend"):
        select_backend("flash", jnp.float32, 64, 8, 8)


def _ref_attention(q, k, v, allowed):
    logits = jnp.einsum("bthd,bshd->bhts", q, k) / np.sqrt(q.shape[-1])
    return jnp.einsum("bhts,bshd->bthd", jax.nn.softmax(jnp.where(allowed, logits, -1e30), -1), v)


@pytest.mark.parametrize("case", ["mask", "causal", "lengths", "plain"])
def test_even_padding_for_cudnn_keeps_values_and_gradients(case):
    """cuDNN trains only on even lengths: the padding `attention_op` applies must not change any real output
    or gradient (checked through the XLA kernel on the padded arrays, the exact inputs cuDNN would get)."""
    from mmjax.nn.attention import _pad_to_even

    b, t, h, d = 2, 7, 2, 8
    q, k, v = (jax.random.normal(jax.random.key(i), (b, t, h, d)) for i in range(3))
    causal = jnp.tril(jnp.ones((t, t), bool))
    mask = jax.random.bernoulli(jax.random.key(9), 0.6, (b, 1, t, t)) | jnp.eye(t, dtype=bool)
    lengths = jnp.array([7, 4], jnp.int32)
    allowed = {"mask": mask, "causal": causal, "plain": jnp.ones((t, t), bool),
               "lengths": causal & (jnp.arange(t) < lengths[:, None, None, None])}[case]
    m = mask if case == "mask" else None
    kv = lengths if case == "lengths" else None
    is_causal = case in ("causal", "lengths")

    def padded(q, k, v):
        qp, kp, vp, mp, lp = _pad_to_even(q, k, v, m, kv)
        assert qp.shape[1] % 2 == 0 and kp.shape[1] % 2 == 0
        out = jax.nn.dot_product_attention(qp, kp, vp, mask=mp, is_causal=is_causal, key_value_seq_lengths=lp,
                                           implementation="xla")
        return out[:, :t]

    ref = lambda q, k, v: _ref_attention(q, k, v, allowed)
    np.testing.assert_allclose(padded(q, k, v), ref(q, k, v), atol=1e-5)
    loss = lambda f: lambda *a: jnp.sum(f(*a) ** 2)
    for g1, g2 in zip(jax.grad(loss(padded), (0, 1, 2))(q, k, v), jax.grad(loss(ref), (0, 1, 2))(q, k, v)):
        np.testing.assert_allclose(g1, g2, atol=1e-4)


def test_kv_lengths_equal_a_padding_mask():
    x = _x(t=T)
    m = Attention(num_heads=4, head_dim=8, num_kv_heads=2, rotary_dim=8)
    p = m.init(jax.random.key(0), x)
    lengths = jnp.array([T, 3], jnp.int32)
    pad_mask = (jnp.arange(T)[None, :] < lengths[:, None])[:, None, None, :]
    with_lengths = m.apply(p, x, is_causal=True, kv_lengths=lengths)
    with_mask = m.apply(p, x, is_causal=True, mask=pad_mask)
    np.testing.assert_allclose(with_lengths[1, :3], with_mask[1, :3], atol=1e-6)
    np.testing.assert_allclose(with_lengths[0], with_mask[0], atol=1e-6)


def test_bf16_compute_runs_and_is_close():
    x = _x()
    m32 = Attention(num_heads=4, head_dim=8, rotary_dim=8)
    m16 = Attention(num_heads=4, head_dim=8, rotary_dim=8, dtype=jnp.bfloat16)
    p = m32.init(jax.random.key(0), x)
    y16 = m16.apply(p, x, is_causal=True)
    assert y16.dtype == jnp.bfloat16
    np.testing.assert_allclose(y16.astype(jnp.float32), m32.apply(p, x, is_causal=True), atol=5e-2)
