"""The splash backend (Pallas TPU splash attention, run here in interpret mode) against XLA attention, and the
`BlockMask` it takes: Show-o's omni-attention as a static pattern per row type equals `masks.showo_mask` exactly.

Interpret mode runs the real kernels' numerics on the CPU, slowly: sequences stay short (one 128 tile) and the
batches small.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.models import showo_layout as sl
from mmjax.nn import masks, splash
from mmjax.nn.attention import attention_op, select_backend
from mmjax.nn.block_mask import CAUSAL, BlockMask, MaskPattern, showo_block_mask

VOCAB = sl.ShowoVocab(text_vocab_size=40, codebook_size=16, bos_id=1, eos_id=2)
S, N = 12, 9  # text length, image tokens: rows of S + N + 3 = 24


def showo_rows(rng: np.random.Generator, bundles: int = 1) -> tuple[jax.Array, dict[str, int]]:
    """Bundles of [t2i; lm; mmu] rows (bundle-major, as the Show-o task orders them) through the real layouts:
    T2I rows with short, empty (dropped) and overlong captions, LM rows short and full, MMU rows with
    conversations of several lengths."""
    t = S + N + 3
    rows = []
    for _ in range(bundles):
        text = jnp.asarray(rng.integers(3, 40, (3, S)), jnp.int32)
        codes = jnp.asarray(rng.integers(0, 16, (3, N)), jnp.int32)
        t2i, _ = sl.t2i_layout(text, jnp.asarray([3, 0, 40]), VOCAB.image_token(codes), VOCAB, S,
                               image_mask=jnp.asarray(rng.random((3, N)) < 0.5),
                               drop=jnp.asarray([False, True, False]))
        lm_text = jnp.asarray(rng.integers(3, 40, (2, t)), jnp.int32)
        lm, _ = sl.lm_layout(lm_text, jnp.asarray([5, t]), VOCAB, t)
        conv = jnp.asarray(rng.integers(3, 40, (3, S)), jnp.int32)
        mmu, _ = sl.mmu_instruct_layout(VOCAB.image_token(codes), conv, jnp.ones((3, S), bool),
                                        jnp.asarray([4, 0, S]), VOCAB, S)
        rows += [t2i, lm, mmu]
    return jnp.concatenate(rows), {"t2i": 3, "lm": 2, "mmu": 3}


def block_mask_of(ids: jax.Array, rows: dict[str, int]) -> BlockMask:
    return showo_block_mask(ids, rows, max_text_len=S, num_image_tokens=N, pad_id=VOCAB.pad_id)


def test_showo_block_mask_is_the_omni_attention_mask():
    ids, rows = showo_rows(np.random.default_rng(0), bundles=2)
    expected = masks.showo_mask(ids, pad_id=VOCAB.pad_id, soi_id=VOCAB.soi_id, eoi_id=VOCAB.eoi_id,
                                mmu_id=VOCAB.mmu_id)
    got = block_mask_of(ids, rows).dense(ids.shape[0], ids.shape[1], ids.shape[1])
    np.testing.assert_array_equal(np.asarray(got), np.asarray(expected))
    assert (np.asarray(ids[0]) == VOCAB.pad_id).sum() > 0  # the left pads really are in the test
    assert int(ids[8, 0]) != VOCAB.mmu_id and int(ids[15, 0]) == VOCAB.mmu_id  # bundle 2 starts again with T2I


def test_block_mask_rejects_groups_that_do_not_cover_the_batch():
    with pytest.raises(ValueError, match="do not cover"):
        BlockMask(None, ((CAUSAL, 3),)).period_groups(4)
    with pytest.raises(ValueError, match="do not tile"):
        BlockMask(None, ((CAUSAL, 3), (CAUSAL, 2)), periodic=True).period_groups(12)
    with pytest.raises(ValueError, match="full_rows_from=0"):
        MaskPattern(causal=False, full_rows_from=5)


def random_qkv(b: int, t: int, heads: int, kv_heads: int, dtype, seed: int = 0) -> tuple[jax.Array, ...]:
    rng = np.random.default_rng(seed)
    shape = lambda h: (b, t, h, 16)
    return tuple(jnp.asarray(rng.normal(size=shape(h)), dtype) for h in (heads, kv_heads, kv_heads))


def output_and_grads(fn, q, k, v, cotangent):
    """fn's output and the gradients of <output, cotangent> with respect to q, k, v (one forward pass)."""
    out, vjp = jax.vjp(fn, q, k, v)
    return out, vjp(cotangent.astype(out.dtype))


@pytest.mark.parametrize("dtype, tol", [(jnp.float32, 2e-5), pytest.param(jnp.bfloat16, 3e-2, marks=pytest.mark.slow)])
def test_splash_matches_xla_on_every_showo_row_type(dtype, tol):
    """T2I, LM and MMU rows of one mixed batch (each type one static-mask kernel), forward and gradients."""
    ids, rows = showo_rows(np.random.default_rng(1))
    mask = block_mask_of(ids, rows)
    q, k, v = random_qkv(ids.shape[0], ids.shape[1], 4, 2, dtype)
    cotangent = jnp.asarray(np.random.default_rng(2).normal(size=q.shape), jnp.float32)
    out, grads = output_and_grads(lambda q, k, v: attention_op(q, k, v, mask=mask, backend="splash"), q, k, v,
                                  cotangent)
    ref, ref_grads = output_and_grads(lambda q, k, v: attention_op(q, k, v, mask=mask, backend="xla"), q, k, v,
                                      cotangent)
    f32 = lambda x: np.asarray(x, np.float32)
    for part, (first, stop) in {"t2i": (0, 3), "lm": (3, 5), "mmu": (5, 8)}.items():
        np.testing.assert_allclose(f32(out[first:stop]), f32(ref[first:stop]), atol=tol, rtol=tol, err_msg=part)
        for name, g, r in zip("qkv", grads, ref_grads):
            np.testing.assert_allclose(f32(g[first:stop]), f32(r[first:stop]), atol=tol * 4, rtol=tol,
                                       err_msg=f"{part} d{name}")


def test_splash_groups_rows_across_shards(monkeypatch):
    """Batch shards that do not hold whole periods: each row group is cut from the global batch instead."""
    ids, rows = showo_rows(np.random.default_rng(4), bundles=2)
    mask = block_mask_of(ids, rows)
    q, k, v = random_qkv(ids.shape[0], ids.shape[1], 2, 1, jnp.float32, seed=5)
    monkeypatch.setattr(splash, "_batch_shards", lambda: 4)  # 2 bundles over 4 shards
    out = splash.splash_attention(q, k, v, mask)
    ref = attention_op(q, k, v, mask=mask, backend="xla")
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=2e-5, rtol=2e-5)


def test_splash_causal_with_packing_and_lengths():
    """The LM cases: segment ids of packed documents, and right padding given as kv_lengths (GQA, f32)."""
    q, k, v = random_qkv(2, 40, 4, 1, jnp.float32, seed=3)
    segments = jnp.asarray([[1] * 15 + [2] * 20 + [0] * 5, [1] * 40], jnp.int32)
    packed = BlockMask.uniform(CAUSAL, segments)
    out = attention_op(q, k, v, mask=packed, backend="splash")
    ref = attention_op(q, k, v, mask=packed.dense(2, 40, 40), backend="xla")
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=2e-5, rtol=2e-5)
    lengths = jnp.asarray([25, 40])
    out = attention_op(q, k, v, is_causal=True, kv_lengths=lengths, backend="splash")
    ref = attention_op(q, k, v, is_causal=True, kv_lengths=lengths, backend="xla")
    np.testing.assert_allclose(np.asarray(out[0, :25]), np.asarray(ref[0, :25]), atol=2e-5, rtol=2e-5)  # real rows
    np.testing.assert_allclose(np.asarray(out[1]), np.asarray(ref[1]), atol=2e-5, rtol=2e-5)


def test_backend_selection():
    """auto takes splash only when compiling for TPU with a static mask; an explicit splash given a dense mask
    or a decode step falls back to XLA."""
    assert splash.target_platform() == "cpu"
    assert select_backend("auto", jnp.bfloat16, 64, 128, 128) == "xla"
    assert select_backend("splash", jnp.float32, 64, 128, 128) == "splash"
    assert select_backend("splash", jnp.float32, 64, 128, 128, dense_mask=True) == "xla"
    assert select_backend("splash", jnp.float32, 64, 1, 128) == "xla"
    pytest.importorskip("libtpu")
    from mmjax.train.preflight import topology_devices
    from mmjax.train.sharding import make_mesh

    mesh = make_mesh({"data": 1, "fsdp": -1, "tensor": 1}, topology_devices("v5e:2x2"))
    with jax.set_mesh(mesh):
        assert splash.target_platform() == "tpu"
        assert select_backend("auto", jnp.bfloat16, 64, 387, 387) == "splash"
        assert select_backend("auto", jnp.bfloat16, 64, 387, 387, dense_mask=True) == "xla"
        assert select_backend("auto", jnp.bfloat16, 64, 1, 387) == "xla"
