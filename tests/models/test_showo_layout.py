"""Show-o vocabulary and prompt layouts, against the numbers in showo.md and a list-based transcription of the
reference's per-example prompting."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.models import showo_layout as sl
from mmjax.models import showo_vit_layout as vl
from mmjax.nn import masks

V = sl.ShowoVocab()
IGN = -100

# Jitted once per shape: one XLA compile per builder instead of one per eager op keeps the file fast on CPU.
t2i_layout = jax.jit(sl.t2i_layout, static_argnums=(3, 4))
mmu_layout = jax.jit(sl.mmu_layout, static_argnums=(3, 4))
lm_layout = jax.jit(sl.lm_layout, static_argnums=(2, 3))
showo_mask = jax.jit(functools.partial(masks.showo_mask, pad_id=V.pad_id, soi_id=V.soi_id, eoi_id=V.eoi_id,
                                       mmu_id=V.mmu_id))


def test_vocab_numbers_equal_showo():
    assert (V.pad_id, V.soi_id, V.eoi_id, V.t2i_id, V.mmu_id) == (50295, 50296, 50297, 50300, 50301)
    assert [V.token_id(t) for t in ("<|sov|>", "<|eov|>", "<|t2v|>", "<|v2v|>", "<|lvg|>")] == [
        50298, 50299, 50302, 50303, 50304]
    assert (V.image_offset, V.mask_id, V.vocab_size) == (50305, 58497, 58498)
    assert V.bos_id == V.eos_id == 50256
    assert int(V.image_token(jnp.array(8191))) == 58496 and int(V.image_code(jnp.array(50305))) == 0
    np.testing.assert_array_equal(V.is_image_token(jnp.array([50304, 50305, 58496, 58497])), [0, 1, 1, 0])


def test_vocab_derives_from_config_and_refuses_bad_configs():
    v = sl.ShowoVocab(text_vocab_size=100, codebook_size=16, bos_id=1, eos_id=2)
    assert (v.pad_id, v.soi_id, v.image_offset, v.mask_id, v.vocab_size) == (100, 101, 110, 126, 127)
    shorter = sl.ShowoVocab(special_tokens=("[PAD]", "<|soi|>", "<|eoi|>", "<|t2i|>", "<|mmu|>"))
    assert (shorter.t2i_id, shorter.image_offset, shorter.vocab_size) == (50298, 50300, 58493)
    with pytest.raises(ValueError, match="lacks"):
        sl.ShowoVocab(special_tokens=("<|soi|>", "<|eoi|>", "<|t2i|>", "<|mmu|>"))
    with pytest.raises(ValueError, match="bos_id"):
        sl.ShowoVocab(text_vocab_size=100)
    with pytest.raises(KeyError):
        V.token_id("<|nope|>")


# ------------------------------------------------------------------------ list transcription of the reference
def ref_t2i(text, image, img_labels, s, drop):
    temp = [V.t2i_id, V.bos_id, *text, V.eos_id] if not drop else [V.t2i_id, V.bos_id, V.eos_id]
    if s + 1 >= len(temp):
        temp = [V.pad_id] * (s + 1 - len(temp)) + temp
    else:
        temp = [*temp[:s], V.eos_id]
    labels = [IGN if x == V.pad_id else x for x in [*temp, V.soi_id, *img_labels, V.eoi_id]]
    return [*temp, V.soi_id, *image, V.eoi_id], labels


def ref_mmu(image, text, s):
    temp = [V.bos_id, *text, V.eos_id]
    if s >= len(temp):
        temp = temp + [V.pad_id] * (s - len(temp))
    else:
        temp = [*temp[:s - 1], V.eos_id]
    labels = [IGN] * (len(image) + 3) + [IGN if x == V.pad_id else x for x in temp]
    return [V.mmu_id, V.soi_id, *image, V.eoi_id, *temp], labels


def ref_lm(text, length):
    temp = [V.bos_id, *text, V.eos_id]
    if length >= len(temp):
        return temp + [V.pad_id] * (length - len(temp)), temp + [IGN] * (length - len(temp))
    return temp[:length], temp[:length]


def random_text(rng, batch, max_len):
    lengths = rng.integers(0, max_len + 1, size=batch)
    ids = rng.integers(0, 50000, size=(batch, max_len))
    ids[np.arange(max_len)[None, :] >= lengths[:, None]] = 7  # junk after the length must be ignored
    return ids, lengths


@pytest.mark.parametrize("s,n,lt", [(6, 4, 9), (8, 9, 3), (5, 2, 5)])
def test_t2i_matches_reference_transcription(s, n, lt):
    rng = np.random.default_rng(s + n + lt)
    b = 6
    text, lens = random_text(rng, b, lt)
    image = V.image_token(rng.integers(0, V.codebook_size, size=(b, n)))
    mask = rng.random((b, n)) < 0.5
    drop = rng.random(b) < 0.3
    text, lens, mask, drop = map(jnp.asarray, (text, lens, mask, drop))
    ids, labels = t2i_layout(text, lens, image, V, s, mask, drop)
    assert ids.shape == labels.shape == (b, s + n + 3)
    for r in range(b):
        img = np.asarray(image[r])
        want_ids, want_labels = ref_t2i(list(text[r, :int(lens[r])]), np.where(mask[r], V.mask_id, img),
                                        np.where(mask[r], img, IGN), s, bool(drop[r]))
        np.testing.assert_array_equal(ids[r], want_ids)
        np.testing.assert_array_equal(labels[r], want_labels)
    assert (ids[:, s + 1] == V.soi_id).all() and (ids[:, -1] == V.eoi_id).all()
    assert (labels[:, s + 1] == V.soi_id).all() and (labels[:, -1] == V.eoi_id).all()


def test_t2i_truncation_and_padding():
    s, n = 6, 2
    text = jnp.arange(1, 11)[None].repeat(3, 0)
    lens = jnp.array([10, 4, 0])
    image = V.image_token(jnp.zeros((3, n), jnp.int32))
    ids, labels = t2i_layout(text, lens, image, V, s)
    t2i, bos, eos, pad, soi = V.t2i_id, V.bos_id, V.eos_id, V.pad_id, V.soi_id
    np.testing.assert_array_equal(ids[0, :s + 2], [t2i, bos, 1, 2, 3, 4, eos, soi])  # S tokens + eos
    np.testing.assert_array_equal(ids[1, :s + 2], [t2i, bos, 1, 2, 3, 4, eos, soi])  # fits exactly: no pad
    np.testing.assert_array_equal(ids[2, :s + 2], [pad] * 4 + [t2i, bos, eos, soi])
    assert (labels[2, :4] == IGN).all()
    assert (labels[:, s + 2:-1] == IGN).all()  # no image mask: the image part is unlabelled


def test_condition_dropout_p1_gives_the_unconditional_prompt():
    s, n, b = 8, 4, 3
    rng = np.random.default_rng(0)
    text, lens = random_text(rng, b, 6)
    lens[:] = 5
    image = V.image_token(jnp.asarray(rng.integers(0, 8192, size=(b, n))))
    drop = sl.sample_condition_dropout(jax.random.key(0), b, 1.0)
    dropped, _ = t2i_layout(jnp.asarray(text), jnp.asarray(lens), image, V, s, drop=drop)
    uncond = sl.t2i_uncond_layout(image, V, s)
    np.testing.assert_array_equal(dropped, uncond)
    want = [V.pad_id] * (s - 2) + [V.t2i_id, V.bos_id, V.eos_id, V.soi_id]
    np.testing.assert_array_equal(uncond[0, :s + 2], want)
    kept = sl.sample_condition_dropout(jax.random.key(0), b, 0.0)
    conditioned, _ = t2i_layout(jnp.asarray(text), jnp.asarray(lens), image, V, s, drop=kept)
    assert (conditioned != uncond).any()


@pytest.mark.parametrize("s,n,lt", [(6, 4, 9), (9, 3, 4)])
def test_mmu_matches_reference_transcription(s, n, lt):
    rng = np.random.default_rng(s * n)
    b = 6
    text, lens = random_text(rng, b, lt)
    image = np.asarray(V.image_token(rng.integers(0, 8192, size=(b, n))))
    ids, labels = mmu_layout(image, text, lens, V, s)
    assert ids.shape == (b, n + 3 + s)
    for r in range(b):
        want_ids, want_labels = ref_mmu(list(image[r]), list(text[r, :lens[r]]), s)
        np.testing.assert_array_equal(ids[r], want_ids)
        np.testing.assert_array_equal(labels[r], want_labels)


@pytest.mark.parametrize("length,lt", [(8, 10), (12, 14)])
def test_lm_matches_reference_transcription(length, lt):
    rng = np.random.default_rng(length)
    text, lens = random_text(rng, 8, lt)
    lens[0], lens[1] = length - 1, length - 2  # the edges: eos just dropped / just kept
    ids, labels = lm_layout(text, lens, V, length)
    for r in range(8):
        want_ids, want_labels = ref_lm(list(text[r, :lens[r]]), length)
        np.testing.assert_array_equal(ids[r], want_ids)
        np.testing.assert_array_equal(labels[r], want_labels)


def test_pretraining_rows_share_length_387():
    s, n, b = 128, 256, 2
    rng = np.random.default_rng(1)
    text, lens = random_text(rng, b, 200)
    image = V.image_token(jnp.asarray(rng.integers(0, 8192, size=(b, n))))
    t2i, _ = t2i_layout(jnp.asarray(text), jnp.asarray(lens), image, V, s)
    mmu, _ = mmu_layout(image, jnp.asarray(text), jnp.asarray(lens), V, s)
    lm, _ = lm_layout(jnp.asarray(text), jnp.asarray(lens), V, t2i.shape[1])
    assert t2i.shape == mmu.shape == lm.shape == (b, 387)
    assert (t2i[:, 129] == V.soi_id).all() and (t2i[:, -1] == V.eoi_id).all()
    assert (mmu[:, 1] == V.soi_id).all() and (mmu[:, 258] == V.eoi_id).all()
    assert (mmu[:, 259] == V.bos_id).all()
    batch = jnp.concatenate([t2i, lm, mmu])
    mask = showo_mask(batch)
    assert mask.shape == (3 * b, 1, 387, 387)


def test_t2i_layout_rows_never_let_pads_be_seen():
    s, n, b = 10, 4, 5
    rng = np.random.default_rng(2)
    text, lens = random_text(rng, b, 8)
    image = V.image_token(jnp.asarray(rng.integers(0, 8192, size=(b, n))))
    image_mask = jnp.asarray(rng.random((b, n)) < 0.5)
    ids, _ = t2i_layout(jnp.asarray(text), jnp.asarray(lens), image, V, s, image_mask)
    mask = np.asarray(masks.showo_t2i_mask(ids, pad_id=V.pad_id, soi_id=V.soi_id, eoi_id=V.eoi_id))[:, 0]
    is_pad = np.asarray(ids == V.pad_id)
    assert is_pad.any()
    for r in range(b):
        assert not mask[r][~is_pad[r]][:, is_pad[r]].any()
        assert mask[r].any(axis=-1).all()


def test_mmu_instruct_labels_and_truncation():
    s, n = 6, 2
    conv = jnp.array([[11, 12, 13, 14, 15, 0, 0, 0], [21, 22, 23, 24, 25, 26, 27, 28]])
    target = jnp.array([[0, 0, 1, 1, 1, 0, 0, 0], [0, 1, 0, 1, 1, 1, 1, 1]], bool)
    image = V.image_token(jnp.array([[3, 4], [5, 6]]))
    ids, labels = sl.mmu_instruct_layout(image, conv, target, jnp.array([5, 8]), V, s)
    assert ids.shape == labels.shape == (2, n + 3 + s)
    np.testing.assert_array_equal(ids[0, :4], [V.mmu_id, V.soi_id, 50308, 50309])
    np.testing.assert_array_equal(ids[0, n + 2:], [V.eoi_id, 11, 12, 13, 14, 15, V.pad_id])
    np.testing.assert_array_equal(labels[0], [IGN] * (n + 2) + [IGN, IGN, IGN, 13, 14, 15, IGN])
    np.testing.assert_array_equal(ids[1, n + 3:], [21, 22, 23, 24, 25, 26])  # cut at S, no eos added
    np.testing.assert_array_equal(labels[1, n + 3:], [IGN, 22, IGN, 24, 25, 26])


@pytest.mark.parametrize("system", [(), (7, 8, 9)])
def test_mmu_vit_rows_labels_slots_and_truncation(system):
    """`<|mmu|> system <|soi|> F slots <|eoi|> conv` (train_w_clip_vit.py), only targets labelled, cut at the budget."""
    f, text_len = 4, 6
    conv = jnp.array([[11, 12, 13, 14, 15, 0, 0, 0], [21, 22, 23, 24, 25, 26, 27, 28]])
    target = jnp.array([[0, 0, 1, 1, 1, 0, 0, 0], [0, 1, 0, 1, 1, 1, 1, 1]], bool)
    ids, labels, slots = vl.mmu_vit_layout(conv, target, jnp.array([5, 8]), system, f, V, text_len)
    k = len(system)
    assert ids.shape == labels.shape == slots.shape == (2, 1 + k + 1 + f + 1 + text_len)
    head = [V.mmu_id, *system, V.soi_id, *[V.mask_id] * f, V.eoi_id]
    np.testing.assert_array_equal(ids[0], [*head, 11, 12, 13, 14, 15, V.pad_id])
    np.testing.assert_array_equal(ids[1, len(head):], [21, 22, 23, 24, 25, 26])  # cut at text_len, no eos added
    np.testing.assert_array_equal(labels[0], [IGN] * len(head) + [IGN, IGN, 13, 14, 15, IGN])
    np.testing.assert_array_equal(labels[1, len(head):], [IGN, 22, IGN, 24, 25, 26])
    np.testing.assert_array_equal(np.nonzero(np.asarray(slots[0]))[0], np.arange(k + 2, k + 2 + f))
    np.testing.assert_array_equal(slots[0], slots[1])


def test_mmu_vit_prompt_is_left_padded_with_slots_per_row():
    question = jnp.array([[31, 32, 33], [41, 0, 0]])
    ids, slots = vl.mmu_vit_prompt_layout((7,), 2, question, jnp.array([3, 1]), V)
    head = [V.mmu_id, 7, V.soi_id, V.mask_id, V.mask_id, V.eoi_id]
    np.testing.assert_array_equal(ids[0], [*head, 31, 32, 33])
    np.testing.assert_array_equal(ids[1], [V.pad_id, V.pad_id, *head, 41])
    np.testing.assert_array_equal(np.nonzero(np.asarray(slots[1]))[0], [5, 6])
    assert vl.mmu_vit_question_text("What is it?") == "USER: What is it? ASSISTANT:"


def test_mmu_prompt_is_left_padded_and_mask_is_padding_invariant():
    n = 3
    image = V.image_token(jnp.array([[1, 2, 3], [4, 5, 6]]))
    question = jnp.array([[31, 32, 33, 34], [41, 42, 0, 0]])
    prompt = sl.mmu_prompt_layout(image, question, jnp.array([4, 2]), V)
    assert prompt.shape == (2, n + 4 + 4)
    head = [V.mmu_id, V.soi_id]
    tail = [V.eoi_id, V.bos_id]
    np.testing.assert_array_equal(prompt[0], [*head, *image[0], *tail, 31, 32, 33, 34])
    np.testing.assert_array_equal(prompt[1], [V.pad_id, V.pad_id, *head, *image[1], *tail, 41, 42])
    assert sl.mmu_question_text("What is it?") == "USER: \nWhat is it? ASSISTANT:"
    mask = np.asarray(masks.showo_mmu_mask(prompt, eoi_id=V.eoi_id, pad_id=V.pad_id))[:, 0]
    alone = np.asarray(masks.showo_mmu_mask(prompt[1:, 2:], eoi_id=V.eoi_id))[0, 0]
    np.testing.assert_array_equal(mask[1, 2:, 2:], alone)
    assert not mask[1, 2:, :2].any()


def test_inpainting():
    grid = 4
    pixels = np.zeros((2, 64, 64), np.float32)
    pixels[0, 16:48, 0:32] = 1.0  # token rows 1-2, columns 0-1
    token_mask = sl.inpainting_token_mask(jnp.asarray(pixels), grid)
    want = np.zeros((2, grid, grid), bool)
    want[0, 1:3, 0:2] = True
    np.testing.assert_array_equal(token_mask, want.reshape(2, -1))
    image = V.image_token(jnp.arange(32).reshape(2, 16))
    canvas = sl.inpainting_image_ids(image, token_mask, V)
    np.testing.assert_array_equal(canvas, np.where(want.reshape(2, -1), V.mask_id, image))
    ids, _ = t2i_layout(jnp.zeros((2, 1), jnp.int32), jnp.zeros(2, jnp.int32), canvas, V, 4)
    np.testing.assert_array_equal(ids[:, 6:-1], canvas)


@pytest.mark.parametrize("direction,offset",
                         [("left", 0), ("right", 0), ("up", 1), ("down", 0), ("right", 1)])
def test_extrapolation_shift_mask_and_stitch(direction, offset):
    h = w = 4
    original = V.image_token(jnp.arange(2 * h * w).reshape(2, h, w))
    canvas = sl.extrapolation_canvas(original, direction, V, offset).reshape(2, h, w)
    kept, new = w // 2 - offset, w // 2 + offset
    horizontal = direction in ("left", "right")
    view = canvas if horizontal else canvas.transpose(0, 2, 1)
    orig = original if horizontal else original.transpose(0, 2, 1)
    if direction in ("left", "up"):
        assert (view[:, :, :new] == V.mask_id).all()
        np.testing.assert_array_equal(view[:, :, new:], orig[:, :, :kept])
    else:
        np.testing.assert_array_equal(view[:, :, :kept], orig[:, :, w - kept:])
        assert (view[:, :, kept:] == V.mask_id).all()
    generated = jnp.where(canvas == V.mask_id, -1, canvas).reshape(2, h * w)  # "fill" new tokens with -1
    out = sl.extrapolation_stitch(generated, original, direction, offset)
    out_view = out if horizontal else out.transpose(0, 2, 1)
    assert out_view.shape == (2, h, w + new)
    if direction in ("left", "up"):
        assert (out_view[:, :, :new] == -1).all()
        np.testing.assert_array_equal(out_view[:, :, new:], orig)
    else:
        np.testing.assert_array_equal(out_view[:, :, :w], orig)
        assert (out_view[:, :, w:] == -1).all()


def test_extrapolation_refuses_bad_arguments():
    grid = jnp.zeros((1, 4, 4), jnp.int32)
    with pytest.raises(ValueError, match="direction"):
        sl.extrapolation_canvas(grid, "diagonal", V)
    with pytest.raises(ValueError, match="offset"):
        sl.extrapolation_canvas(grid, "left", V, offset=2)
    assert sl.image_grid(256) == 16 and sl.image_grid(1024) == 32
    with pytest.raises(ValueError):
        sl.image_grid(255)


def test_layouts_trace_once_under_jit():
    traces = []

    @functools.partial(jax.jit, static_argnums=(3,))
    def build(text, lens, image, s):
        traces.append(1)
        return sl.t2i_layout(text, lens, image, V, s)

    image = V.image_token(jnp.zeros((2, 4), jnp.int32))
    for length in ([1, 3], [5, 0]):
        build(jnp.ones((2, 5), jnp.int32), jnp.array(length), image, 6)
    assert len(traces) == 1
