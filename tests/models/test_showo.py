"""Show-o model: the 1.3B parameter count, omni-attention by default, T2I / inpainting / extrapolation sampling
with batched CFG, and KV-cache MMU answers equal to the reference's re-run-everything loop."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.models import showo as so
from mmjax.models import showo_layout as sl
from mmjax.nn import masks

VOCAB = sl.ShowoVocab(text_vocab_size=40, codebook_size=16, bos_id=1, eos_id=2)
S, N = 8, 9  # text length, 3x3 image tokens


@functools.cache
def _tiny(w_clip_vit=False):
    cfg = so.showo_lm_config(VOCAB, "tiny-phi", scan_layers=False)
    model = so.Showo(cfg, VOCAB, w_clip_vit=w_clip_vit, clip_hidden_size=16)
    params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
    # Larger weights than the init's make the argmax / samples depend visibly on the inputs.
    return model, jax.tree.map(lambda x: x * 3.0 if x.ndim >= 2 else x, nn.unbox(params))


def _prompts():
    return jnp.array([[5, 6, 7, 0], [9, 10, 0, 0]]), jnp.array([3, 2])


def test_showo_13b_parameter_count():
    """Phi-1.5 (1,418,270,720) + 7,298 new rows of embedding, lm_head and its bias + 24 layers of q/k LayerNorm."""
    vocab = sl.ShowoVocab()
    cfg = so.showo_lm_config(vocab)
    assert cfg.vocab_size == 58498 and cfg.qk_norm == "layernorm"
    shapes = jax.eval_shape(so.Showo(cfg, vocab).init, jax.random.key(0), jnp.zeros((1, 8), jnp.int32))
    count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nn.unbox(shapes["params"])))
    expected = 1_418_270_720 + (58_498 - 51_200) * (2048 + 2048 + 1) + 24 * 2 * 2 * 64
    assert expected == 1_448_176_770
    assert count == expected
    clip = jax.eval_shape(so.Showo(cfg, vocab, w_clip_vit=True).init, jax.random.key(0), jnp.zeros((1, 8), jnp.int32))
    extra = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nn.unbox(clip["params"]["mm_projector"])))
    assert extra == 1024 * 2048 + 2048 + 2048 * 2048 + 2048


def test_vocab_size_must_match():
    with pytest.raises(ValueError, match="vocab_size"):
        so.Showo(so.showo_lm_config(VOCAB, "tiny-phi").replace(vocab_size=99), VOCAB).init(
            jax.random.key(0), jnp.zeros((1, 4), jnp.int32))


def test_default_mask_is_showo_omni_attention():
    model, params = _tiny()
    text, lens = _prompts()
    codes = jax.random.randint(jax.random.key(1), (2, N), 0, 16)

    @jax.jit
    def run(params):
        ids, _ = sl.t2i_layout(text, lens, VOCAB.image_token(codes), VOCAB, S)
        mask = masks.showo_mask(ids, pad_id=VOCAB.pad_id, soi_id=VOCAB.soi_id, eoi_id=VOCAB.eoi_id,
                                mmu_id=VOCAB.mmu_id)
        apply = functools.partial(model.apply, {"params": params}, ids)
        return apply(), apply(mask=mask, is_causal=False), apply(mask=masks.causal_mask(ids.shape[1]))

    default, explicit, causal = run(params)
    assert default.dtype == jnp.float32 and default.shape == (2, S + N + 3, VOCAB.vocab_size)
    np.testing.assert_allclose(default, explicit, atol=1e-6)
    assert np.abs(np.asarray(default - causal))[:, S + 1:].max() > 1e-3  # image rows see the whole image


def test_cfg_closure_pairs_rows_with_cond_and_uncond_prefixes():
    model, params = _tiny()
    text, lens = _prompts()
    codes = jnp.array([[3, 16, 5, 16, 16, 0, 1, 2, 16]] * 2)  # 16 = mask in code space

    @jax.jit
    def run(params):
        empty = jnp.zeros((2, 0), jnp.int32)
        cond = sl.t2i_layout(text, lens, empty, VOCAB, S)[0][:, :S + 1]
        uncond = sl.t2i_uncond_layout(empty, VOCAB, S)[:, :S + 1]
        fn = so.t2i_logits_fn(model, params, cond, uncond)
        full_uncond = sl.t2i_uncond_layout(so._token_space(codes, VOCAB), VOCAB, S)
        ref = model.apply({"params": params}, full_uncond)[:, S + 2:S + 2 + N, VOCAB.image_offset:VOCAB.mask_id]
        return fn(jnp.concatenate([codes, codes])), fn(codes), ref

    both, cond_only, ref = run(params)
    assert both.shape == (4, N, 16)
    np.testing.assert_allclose(both[:2], cond_only, atol=1e-5)
    np.testing.assert_allclose(both[2:], ref, atol=1e-5)
    assert np.abs(np.asarray(both[:2] - both[2:])).max() > 1e-3


@pytest.mark.parametrize("guidance", [0.0, 3.0])
def test_t2i_generation_fills_every_token(guidance):
    model, params = _tiny()
    text, lens = _prompts()
    out = so.t2i_generate(model, params, text, lens, so.blank_canvas(2, N, VOCAB), jax.random.key(0),
                          max_text_len=S, num_steps=4, guidance_scale=guidance)
    tokens = np.asarray(out.tokens)
    assert tokens.shape == (2, N) and tokens.min() >= 0 and tokens.max() < 16
    # floor(9 cos(pi/2 r)) for r = 1/4, 2/4, 3/4, clamped to [1, #unknown - 1]; the last step leaves 1.
    np.testing.assert_array_equal(out.num_masked, [[8, 6, 3, 1]] * 2)
    again = so.t2i_generate(model, params, text, lens, so.blank_canvas(2, N, VOCAB), jax.random.key(0),
                            max_text_len=S, num_steps=4, guidance_scale=guidance)
    np.testing.assert_array_equal(again.tokens, tokens)


def test_inpainting_keeps_known_tokens_and_extrapolation_keeps_the_original():
    model, params = _tiny()
    text, lens = _prompts()
    codes = jax.random.randint(jax.random.key(2), (2, N), 0, 16)
    repaint = jnp.zeros((2, N), bool).at[:, 4:7].set(True)
    new = np.asarray(so.inpaint(model, params, text, lens, codes, repaint, jax.random.key(3), max_text_len=S,
                                num_steps=3, guidance_scale=1.75))
    np.testing.assert_array_equal(new[:, ~np.asarray(repaint[0])], np.asarray(codes)[:, ~np.asarray(repaint[0])])
    grid = codes.reshape(2, 3, 3)
    wide = np.asarray(so.extrapolate(model, params, text, lens, grid, "right", jax.random.key(4), max_text_len=S,
                                     num_steps=3))
    assert wide.shape == (2, 3, 5)
    np.testing.assert_array_equal(wide[:, :, :3], grid)
    tall = np.asarray(so.extrapolate(model, params, text, lens, grid, "up", jax.random.key(4), max_text_len=S,
                                     num_steps=3))
    assert tall.shape == (2, 5, 3)
    np.testing.assert_array_equal(tall[:, 2:], grid)


def _reference_mmu(model, params, codes, question, new):
    """The reference's loop: no cache, batch 1, the whole sequence re-run with the MMU mask every step."""
    prompt = sl.mmu_prompt_layout(VOCAB.image_token(codes[None]), jnp.asarray([question]),
                                  jnp.asarray([len(question)]), VOCAB)
    buf = jnp.concatenate([prompt, jnp.zeros((1, new), jnp.int32)], axis=1)
    run = jax.jit(lambda x: model.apply({"params": params}, x, mask=masks.showo_mmu_mask(x, eoi_id=VOCAB.eoi_id),
                                        is_causal=False))
    p = prompt.shape[1]
    for t in range(new):
        buf = buf.at[:, p + t].set(jnp.argmax(run(buf)[:, p + t - 1], axis=-1))
    return np.asarray(buf[0, p:])


def test_mmu_generation_with_cache_equals_the_reference_loop():
    model, params = _tiny()
    codes = jax.random.randint(jax.random.key(5), (2, N), 0, 16)
    questions = [[11, 12, 13, 14, 15], [20, 21]]  # different lengths: the batch is left-padded
    qids = jnp.asarray([q + [0] * (5 - len(q)) for q in questions])
    out = so.mmu_generate(model, params, codes, qids, jnp.asarray([5, 2]), max_new_tokens=5,
                          stop_tokens=(VOCAB.vocab_size + 1,))
    for row, q in enumerate(questions):
        np.testing.assert_array_equal(out.tokens[row], _reference_mmu(model, params, codes[row], q, 5))


def test_clip_variant_splices_projected_features_under_the_reference_mask():
    model, params = _tiny(w_clip_vit=True)
    assert set(params["mm_projector"]) == {"fc1", "fc2"}
    feats = jax.random.normal(jax.random.key(6), (2, 3, 16))
    system, question = (7, 8), jnp.array([[9, 10, 11, 12], [9, 10, 0, 0]])

    @jax.jit
    def run(params):
        ids, valid, embeds, mask = so.mmu_vit_prompt(model, params, feats, system, question, jnp.array([4, 2]))
        projected = model.apply({"params": params}, feats, method=so.Showo.project_features)
        token_embeds = model.apply({"params": params}, ids, method=so.Showo.embed)
        return ids, valid, embeds, mask, projected, token_embeds

    ids, valid, embeds, mask, projected, token_embeds = run(params)
    v = VOCAB
    np.testing.assert_array_equal(ids[0], [v.mmu_id, 7, 8, v.soi_id, *[v.mask_id] * 3, v.eoi_id, 9, 10, 11, 12])
    np.testing.assert_array_equal(ids[1, :2], [v.pad_id] * 2)  # left-padded: row 1's prompt is 2 shorter
    np.testing.assert_array_equal(valid, ids != v.pad_id)
    np.testing.assert_allclose(embeds[0, 4:7], projected[0], atol=1e-6)
    np.testing.assert_allclose(embeds[1, 6:9], projected[1], atol=1e-6)
    np.testing.assert_allclose(embeds[0, 7:], token_embeds[0, 7:], atol=1e-6)
    # create_attention_mask_for_mmu_vit for system_len 2 and 3 features: causal + columns 4..6 for every row.
    expected = np.tril(np.ones((12, 12), bool))
    expected[:, 4:7] = True
    np.testing.assert_array_equal(mask[0, 0], expected)
    np.testing.assert_array_equal(mask[1, 0, 2:, 2:], expected[:10, :10] | np.eye(10, dtype=bool))
    assert not np.asarray(mask[1, 0, 2:, :2]).any()


def _reference_mmu_vit(model, params, feats, system, question, new):
    """The reference's CLIP loop: batch 1, no cache; every step re-runs the whole embedding sequence (the new
    token's embedding appended) under create_attention_mask_for_mmu_vit grown by one causal row."""
    v, f = VOCAB, feats.shape[0]
    ids = jnp.asarray([[v.mmu_id, *system, v.soi_id, v.eoi_id, *question]])
    variables = {"params": params}
    tok = model.apply(variables, ids, method=so.Showo.embed)
    proj = model.apply(variables, feats[None], method=so.Showo.project_features)
    split = 2 + len(system)
    embeds = jnp.concatenate([tok[:, :split], proj, tok[:, split:]], axis=1)
    run = jax.jit(lambda e, m: model.apply(variables, None, embeds=e, mask=m, is_causal=False))
    out = []
    for _ in range(new):
        length = embeds.shape[1]
        mask = np.tril(np.ones((length, length), bool))
        mask[:, split:split + f] = True
        nxt = int(jnp.argmax(run(embeds, jnp.asarray(mask)[None, None])[0, -1]))
        out.append(nxt)
        embeds = jnp.concatenate([embeds, model.apply(variables, jnp.asarray([[nxt]]), method=so.Showo.embed)], 1)
    return out


def test_clip_variant_generation_with_cache_equals_the_reference_loop():
    model, params = _tiny(w_clip_vit=True)
    feats = jax.random.normal(jax.random.key(7), (2, 3, 16)) * 3.0
    system = (7, 8, 9)
    questions = [[11, 12, 13, 14, 15], [20, 21]]
    qids = jnp.asarray([q + [0] * (5 - len(q)) for q in questions])
    out = so.mmu_vit_generate(model, params, feats, system, qids, jnp.asarray([5, 2]), max_new_tokens=5,
                              stop_tokens=(VOCAB.vocab_size + 1,))
    for row, q in enumerate(questions):
        np.testing.assert_array_equal(out.tokens[row], _reference_mmu_vit(model, params, feats[row], system, q, 5))
