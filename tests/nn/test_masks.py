"""Masks: Show-o's example matrices, and random rows against plain-Python transcriptions of the rules."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.nn import masks

# Small ids for readability; the rules only compare ids, so the values do not matter.
PAD, SOI, EOI, T2I, MMU, BOS, EOS, M = 0, 1, 2, 3, 4, 5, 6, 7
WORDS = (8, 9, 10, 11)
IDS = dict(pad_id=PAD, soi_id=SOI, eoi_id=EOI)

t2i_mask = jax.jit(lambda ids: masks.showo_t2i_mask(ids, **IDS, rm_pad_in_image=True))
t2i_mask_keep_pads = jax.jit(lambda ids: masks.showo_t2i_mask(ids, **IDS, rm_pad_in_image=False))
mmu_mask = jax.jit(lambda ids: masks.showo_mmu_mask(ids, eoi_id=EOI))
omni = jax.jit(lambda ids: masks.omni_mask(ids, **IDS))
vit_mask = jax.jit(lambda ids: masks.showo_mmu_vit_mask(ids, soi_id=SOI, eoi_id=EOI))


def as_np(mask: jax.Array) -> np.ndarray:
    assert mask.dtype == jnp.bool_ and mask.ndim == 4 and mask.shape[1] == 1
    return np.asarray(mask[:, 0])


# ------------------------------------------------------------------------------------- Python transcriptions
def ref_t2i(ids: np.ndarray, rm_pad: bool) -> np.ndarray:
    """showo.md rules 1-5 (create_attention_mask_predict_next), one row and one entry at a time."""
    b, t = ids.shape
    out = np.zeros((b, t, t), bool)
    for r in range(b):
        row = [int(x) for x in ids[r]]
        in_image, n_soi, n_eoi = [], 0, 0
        for tok in row:
            n_soi += tok == SOI
            n_eoi += tok == EOI
            in_image.append(n_soi > n_eoi or tok in (SOI, EOI))
        pads = [i for i, tok in enumerate(row) if tok == PAD]
        sois = [i for i, tok in enumerate(row) if tok == SOI]
        for q in range(t):
            for k in range(t):
                if in_image[q]:
                    ok = not (rm_pad and sois and q >= sois[0] and row[k] == PAD)
                else:
                    ok = k <= q and not (rm_pad and pads and q > pads[-1] and k <= pads[-1])
                out[r, q, k] = ok
    return out


def ref_mmu(ids: np.ndarray, row0_eoi: bool = False) -> np.ndarray:
    """allowed = (k <= q) or (k <= e); e per row (mmjax) or from row 0 for every row (the reference)."""
    b, t = ids.shape
    firsts = [list(ids[r]).index(EOI) if EOI in ids[r] else -1 for r in range(b)]
    out = np.zeros((b, t, t), bool)
    for r in range(b):
        e = firsts[0] if row0_eoi else firsts[r]
        for q in range(t):
            for k in range(t):
                out[r, q, k] = k <= q or k <= e
    return out


def ref_mmu_vit(length: int, system_len: int, num_features: int) -> np.ndarray:
    """create_attention_mask_for_mmu_vit, transcribed: a lower triangle whose columns
    [1 + system_len + 1, 1 + system_len + 1 + num_features) are set for every row (by fixed offsets)."""
    out = np.tril(np.ones((length, length), bool))
    start = 1 + system_len + 1
    out[:, start:start + num_features] = True
    return out


def ref_omni(ids: np.ndarray) -> np.ndarray:
    """Causal text, full attention inside each soi..eoi span, pads invisible to non-pad rows."""
    b, t = ids.shape
    out = np.zeros((b, t, t), bool)
    for r in range(b):
        row = [int(x) for x in ids[r]]
        span, current, inside = [], 0, False
        for tok in row:
            if tok == SOI:
                current, inside = current + 1, True
                span.append(current)
            elif tok == EOI:
                span.append(current if inside else -1)
                inside = False
            else:
                span.append(current if inside else None)
        for q in range(t):
            for k in range(t):
                visible = k <= q or (span[q] is not None and span[q] == span[k])
                out[r, q, k] = visible and (row[q] == PAD or row[k] != PAD)
    return out


# ----------------------------------------------------------------------------------------------- random rows
def t2i_row(rng: np.random.Generator, s: int, n: int) -> list[int]:
    """`[PAD]*k <|t2i|> <bos> text <eos> <|soi|> img <|eoi|>` with a random text length."""
    text = list(rng.choice(WORDS, size=rng.integers(0, s - 1)))
    prefix = [T2I, BOS, *text, EOS]
    image = list(rng.choice([M, *WORDS], size=n))
    return [PAD] * (s + 1 - len(prefix)) + prefix + [SOI, *image, EOI]


def lm_row(rng: np.random.Generator, length: int) -> list[int]:
    text = list(rng.choice(WORDS, size=rng.integers(0, length - 1)))
    row = [BOS, *text, EOS]
    return row + [PAD] * (length - len(row))


def mmu_row(rng: np.random.Generator, n: int, length: int) -> list[int]:
    row = [MMU, SOI, *rng.choice(WORDS, size=n), EOI, BOS, *rng.choice(WORDS, size=rng.integers(0, 4)), EOS]
    return row + [PAD] * (length - len(row))


def mmu_vit_row(rng: np.random.Generator, system_len: int, num_features: int, length: int) -> list[int]:
    """`<|mmu|> system <|soi|> feats <|eoi|> text [PAD]...`, the CLIP-ViT variant's MMU row (feature slots hold
    any id: their embeddings are replaced by the projected features)."""
    system = list(rng.choice(WORDS, size=system_len))
    text = list(rng.choice(WORDS, size=rng.integers(1, 4)))
    row = [MMU, *system, SOI, *rng.choice([M, *WORDS], size=num_features), EOI, *text, EOS]
    return row + [PAD] * (length - len(row))


def interleaved_row(rng: np.random.Generator, length: int) -> list[int]:
    """Well-formed text / image interleaving (several spans, maybe one left open) with pads anywhere."""
    row: list[int] = []
    while len(row) < length:
        kind = rng.integers(0, 3)
        if kind == 0:
            row += [SOI, *rng.choice([M, *WORDS], size=rng.integers(0, 4)), EOI]
        elif kind == 1:
            row += list(rng.choice(WORDS, size=rng.integers(1, 4)))
        else:
            row += [PAD] * int(rng.integers(1, 3))
    return row[:length]


def soup_row(rng: np.random.Generator, length: int) -> list[int]:
    """Arbitrary tokens: pads anywhere, zero or more soi / eoi in any order."""
    return list(rng.choice([PAD, PAD, SOI, EOI, BOS, *WORDS], size=length))


# ---------------------------------------------------------------------------------------- reference examples
def test_t2i_reference_example():
    ids = jnp.array([[PAD, PAD, T2I, BOS, 8, EOS, SOI, M, M, M, EOI]])
    expected = np.zeros((11, 11), int)
    expected[0, :1] = 1  # rows 0-1: causal over the pads
    expected[1, :2] = 1
    for q in range(2, 6):  # rows 2-5: causal starting at column 2
        expected[q, 2:q + 1] = 1
    expected[6:] = [0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1]
    np.testing.assert_array_equal(as_np(t2i_mask(ids))[0].astype(int), expected)


def test_mmu_reference_example():
    ids = jnp.array([[MMU, SOI, 8, 8, EOI, BOS, 9, 9, PAD]])
    expected = np.zeros((9, 9), int)
    expected[:, :5] = 1  # every row sees columns 0-4
    for q in range(5, 9):
        expected[q, 5:q + 1] = 1  # plus causal
    np.testing.assert_array_equal(as_np(mmu_mask(ids))[0].astype(int), expected)


def test_mmu_vit_reference_example():
    """Only the feature columns open up: <|mmu|>, the system prompt, <|soi|> and <|eoi|> stay causal."""
    ids = jnp.array([[MMU, 8, 9, SOI, M, M, M, EOI, 10, 11, PAD]])  # system_len 2, 3 features at 4..6
    expected = np.tril(np.ones((11, 11), int))
    expected[:, 4:7] = 1  # every row, even <|mmu|> at 0, sees the three feature columns
    np.testing.assert_array_equal(as_np(vit_mask(ids))[0].astype(int), expected)
    m = as_np(vit_mask(ids))[0]
    assert not m[0, 1:4].any() and not m[4, 7] and not m[5, 7]  # prefix tokens are causal, eoi is not opened
    assert as_np(mmu_mask(ids))[0, 0, :8].all()  # whereas the discrete variant's rule opens 0..7 to row 0


@pytest.mark.parametrize("system_len,num_features", [(0, 4), (2, 3), (5, 1), (4, 6)])
def test_mmu_vit_rows_match_the_reference_offsets(system_len, num_features):
    rng = np.random.default_rng(system_len * 10 + num_features)
    length = 1 + system_len + 2 + num_features + 6
    ids = np.array([mmu_vit_row(rng, system_len, num_features, length) for _ in range(4)])
    got = as_np(vit_mask(jnp.asarray(ids)))
    for row in got:
        np.testing.assert_array_equal(row, ref_mmu_vit(length, system_len, num_features))


def test_mmu_vit_left_padded_prompts_hide_pads_and_match_the_unpadded_row():
    core = [MMU, 8, SOI, M, M, EOI, 9, 10]
    padded = jnp.asarray([[PAD, PAD, PAD, *core], [MMU, 8, 9, 10, SOI, M, M, EOI, 9, 10, 11]])
    got = as_np(masks.showo_mmu_vit_mask(padded, soi_id=SOI, eoi_id=EOI, pad_id=PAD))
    np.testing.assert_array_equal(got[0][3:, 3:], ref_mmu_vit(len(core), 1, 2))
    assert not got[0][3:, :3].any()
    np.testing.assert_array_equal(got[1], ref_mmu_vit(11, 3, 2))
    no_span = as_np(vit_mask(jnp.asarray([[MMU, 8, SOI, M, 9, PAD], [MMU, 8, EOI, M, SOI, 9]])))
    np.testing.assert_array_equal(no_span, np.broadcast_to(np.tril(np.ones((6, 6), bool)), (2, 6, 6)))


# ----------------------------------------------------------------------------------- random vs transcription
@pytest.mark.parametrize("s,n", [(4, 3), (6, 5), (9, 2)])
def test_t2i_random_rows_match_rules(s, n):
    rng = np.random.default_rng(s * 10 + n)
    ids = np.array([t2i_row(rng, s, n) for _ in range(6)])
    np.testing.assert_array_equal(as_np(t2i_mask(jnp.asarray(ids))), ref_t2i(ids, rm_pad=True))
    np.testing.assert_array_equal(as_np(t2i_mask_keep_pads(jnp.asarray(ids))), ref_t2i(ids, rm_pad=False))


def test_t2i_and_lm_batch_matches_rules_and_lm_rows_are_causal():
    rng = np.random.default_rng(1)
    t2i = [t2i_row(rng, 5, 4) for _ in range(3)]
    lm = [lm_row(rng, len(t2i[0])) for _ in range(3)]
    ids = np.array(t2i + lm)
    got = as_np(t2i_mask(jnp.asarray(ids)))
    np.testing.assert_array_equal(got, ref_t2i(ids, rm_pad=True))
    causal = np.tril(np.ones((ids.shape[1],) * 2, bool))
    for r in range(3, 6):  # rule 5: LM rows (no image, right pads) are plain causal, pads included as keys
        np.testing.assert_array_equal(got[r], causal)


def test_arbitrary_token_soup_matches_rules():
    rng = np.random.default_rng(2)
    ids = np.array([soup_row(rng, 12) for _ in range(16)])
    np.testing.assert_array_equal(as_np(t2i_mask(jnp.asarray(ids))), ref_t2i(ids, rm_pad=True))
    np.testing.assert_array_equal(as_np(t2i_mask_keep_pads(jnp.asarray(ids))), ref_t2i(ids, rm_pad=False))
    np.testing.assert_array_equal(as_np(mmu_mask(jnp.asarray(ids))), ref_mmu(ids))


def test_t2i_pads_never_attended_by_non_pad_rows():
    rng = np.random.default_rng(3)
    ids = np.array([t2i_row(rng, 8, 4) for _ in range(8)])
    got = as_np(t2i_mask(jnp.asarray(ids)))
    is_pad = ids == PAD
    assert is_pad.any()
    for r in range(len(ids)):
        assert not got[r][~is_pad[r]][:, is_pad[r]].any()


def test_mmu_eoi_is_taken_per_row_not_from_row_zero():
    """mmjax deliberately differs from the reference, which applies row 0's eoi position to every row."""
    rng = np.random.default_rng(4)
    length = 14
    ids = np.array([mmu_row(rng, n, length) for n in (2, 5, 3, 7)])  # eoi at 3, 6, 4, 8
    got = as_np(mmu_mask(jnp.asarray(ids)))
    np.testing.assert_array_equal(got, ref_mmu(ids))
    reference = ref_mmu(ids, row0_eoi=True)
    np.testing.assert_array_equal(got[0], reference[0])
    assert (got[1:] != reference[1:]).any()  # row 0's eoi (3) would hide row 1's eoi (6) from its image
    assert got[1, 2, 6]  # row 1: image token 2 attends its own eoi at 6
    same_layout = np.array([mmu_row(rng, 3, length) for _ in range(3)])
    same = as_np(mmu_mask(jnp.asarray(same_layout)))
    np.testing.assert_array_equal(same, ref_mmu(same_layout, row0_eoi=True))


def test_mmu_mask_with_pad_id_hides_left_pads_and_is_padding_invariant():
    rng = np.random.default_rng(5)
    core = [MMU, SOI, 8, 9, EOI, BOS, *rng.choice(WORDS, size=3)]
    padded = np.array([[PAD, PAD, *core], [MMU, SOI, 8, 8, 9, 9, 9, 9, EOI, BOS, 10]])
    got = as_np(masks.showo_mmu_mask(jnp.asarray(padded), eoi_id=EOI, pad_id=PAD))
    unpadded = as_np(masks.showo_mmu_mask(jnp.asarray([core]), eoi_id=EOI))[0]
    np.testing.assert_array_equal(got[0][2:, 2:], unpadded)
    assert not got[0][2:, :2].any()


def test_no_row_is_fully_masked():
    rng = np.random.default_rng(6)
    ids = jnp.asarray(np.array([soup_row(rng, 10) for _ in range(32)] + [[PAD] * 10]))
    valid = jnp.asarray(rng.random((33, 10)) < 0.5)
    for mask in (t2i_mask(ids), t2i_mask_keep_pads(ids), mmu_mask(ids), omni(ids),
                 masks.showo_mmu_mask(ids, eoi_id=EOI, pad_id=PAD), vit_mask(ids),
                 masks.showo_mmu_vit_mask(ids, soi_id=SOI, eoi_id=EOI, pad_id=PAD), masks.padding_mask(valid),
                 masks.causal_mask(10) & masks.padding_mask(valid)):
        assert np.asarray(mask).any(axis=-1).all()


# ------------------------------------------------------------------------------------------------- omni mask
def test_omni_equals_showo_mask_on_showo_layouts():
    rng = np.random.default_rng(7)
    t2i = [t2i_row(rng, 6, 4) for _ in range(4)]
    lm = [lm_row(rng, len(t2i[0])) for _ in range(4)]
    ids = jnp.asarray(np.array(t2i + lm))
    np.testing.assert_array_equal(as_np(omni(ids)), as_np(t2i_mask(ids)))


def test_omni_several_image_spans():
    row = [PAD, BOS, 8, SOI, M, M, EOI, 9, SOI, M, EOI, 10, EOS, PAD]
    rng = np.random.default_rng(8)
    ids = np.array([row, *[interleaved_row(rng, len(row)) for _ in range(15)]])
    got = as_np(omni(jnp.asarray(ids)))
    np.testing.assert_array_equal(got, ref_omni(ids))
    m = got[0]
    assert m[3:7, 3:7].all() and m[8:11, 8:11].all()  # full attention inside each span
    assert m[4, 1:3].all() and not m[4, 7:].any()  # image 1 sees the text before it, nothing after its span
    assert m[9, 1:11].all() and not m[9, 11:].any()  # image 2 sees text and image 1 before it
    assert not m[7, 8]  # text between images is causal
    assert not m[1:13, 0].any() and not m[1:13, 13].any()  # non-pad rows never see pads
    assert m[13, :14].all()  # the trailing pad row keeps its causal row


def test_omni_unclosed_span_extends_to_the_end():
    ids = jnp.asarray([[BOS, 8, SOI, M, M, M]])
    m = as_np(omni(ids))[0]
    assert m[2:, 2:].all() and not m[1, 2:].any()


# --------------------------------------------------------------------------------------------- generic masks
def test_causal_padding_prefix_lm():
    t = 6
    np.testing.assert_array_equal(np.asarray(masks.causal_mask(t))[0, 0], np.tril(np.ones((t, t), bool)))
    valid = masks.lengths_to_valid(jnp.array([4, 6, 1]), t)
    np.testing.assert_array_equal(np.asarray(valid).sum(1), [4, 6, 1])
    left = masks.lengths_to_valid(jnp.array([2]), t, left_padded=True)
    np.testing.assert_array_equal(np.asarray(left)[0], [0, 0, 0, 0, 1, 1])
    pm = np.asarray(masks.padding_mask(valid))
    assert pm.shape == (3, 1, t, t)
    np.testing.assert_array_equal(pm[0, 0, 0], [1, 1, 1, 1, 0, 0])
    np.testing.assert_array_equal(pm[0, 0, 5], [1, 1, 1, 1, 0, 1])  # a pad row keeps itself
    plm = np.asarray(jax.jit(masks.prefix_lm_mask, static_argnums=1)(jnp.array([3, 0]), t))[:, 0]
    for q in range(t):
        for k in range(t):
            assert plm[0, q, k] == (k <= q or k < 3)
    np.testing.assert_array_equal(plm[1], np.tril(np.ones((t, t), bool)))


def test_showo_mask_picks_the_mmu_rule_for_mmu_rows():
    rng = np.random.default_rng(9)
    length = 10  # = (5 + 1) + 2 + 2 for T2I; mmu_row needs at most 5 + 2 + 3
    rows = [t2i_row(rng, 5, 2), lm_row(rng, length), mmu_row(rng, 2, length)]
    ids = jnp.asarray(np.array(rows))
    got = as_np(masks.showo_mask(ids, **IDS, mmu_id=MMU))
    np.testing.assert_array_equal(got[:2], as_np(t2i_mask(ids))[:2])
    np.testing.assert_array_equal(got[2], as_np(mmu_mask(ids))[2])
    clip_rows = [rows[0], rows[1], mmu_vit_row(rng, 1, 2, length)]
    clip_ids = jnp.asarray(np.array(clip_rows))
    got = as_np(masks.showo_mask(clip_ids, **IDS, mmu_id=MMU, mmu_features=True))
    np.testing.assert_array_equal(got[:2], as_np(t2i_mask(clip_ids))[:2])
    np.testing.assert_array_equal(got[2], ref_mmu_vit(length, 1, 2))


def test_bias_and_boolean_masks_give_the_same_attention():
    rng = np.random.default_rng(10)
    ids = jnp.asarray(np.array([t2i_row(rng, 4, 3) for _ in range(2)]))
    mask = t2i_mask(ids)
    bias = masks.mask_to_bias(mask)
    assert bias.dtype == jnp.float32 and float(bias.max()) == 0.0 and float(bias.min()) < -1e30
    np.testing.assert_array_equal(np.asarray(bias) == 0, np.asarray(mask))
    ref_bias = masks.mask_to_bias(mask, jnp.bfloat16, masks.REFERENCE_MASK_VALUE)
    assert bool(jnp.isfinite(ref_bias).all()) and float(ref_bias.min()) < -9e18
    b, t, h, d = 2, ids.shape[1], 2, 4
    q, k, v = (jnp.asarray(rng.normal(size=(b, t, h, d)), jnp.float32) for _ in range(3))
    out_mask = jax.nn.dot_product_attention(q, k, v, mask=mask)
    out_bias = jax.nn.dot_product_attention(q, k, v, bias=bias)
    np.testing.assert_allclose(np.asarray(out_mask), np.asarray(out_bias), atol=1e-6)
