"""Show-o: one transformer for text (next-token prediction) and images (masked-token diffusion), and its sampling.

The network is the decoder LM of `mmjax.models.lm` (Phi-1.5 with QK LayerNorm for the released 1.3B model) whose
vocabulary is extended by Show-o's special tokens, one id per image code and a mask token (`ShowoVocab`: 58498 ids
for the release). What makes it "unified" is not the network but the attention mask, built from the token ids
(`mmjax.nn.masks.showo_mask`): text is causal, an image span attends to itself fully. So one forward pass scores
text with next-token logits and masked image positions with their own logits (MTP: no shift).

The optional "Show-o with CLIP-ViT" variant understands images from continuous CLIP ViT-L/14 features (576 per
336px image, second-to-last layer, class token dropped) through `mm_projector` (Linear(1024, 2048) - GELU -
Linear(2048, 2048)); the frozen CLIP tower itself is not part of this module (build it with
`mmjax.models.vit.clip_vit_l14` and keep its weights frozen, like the image tokenizer).

Generation, all jit-compiled with fixed shapes:
- `t2i_generate`: MaskGIT decoding (`mmjax.diffusion.maskgit.decode`) with classifier-free guidance as ONE forward
  per step over 2B rows [cond; uncond]; `inpaint` and `extrapolate` are the same decoder on a partly known canvas.
- `mmu_generate`: answers with the KV cache (`mmjax.models.generate`); the bidirectional image prefix is part of
  the prefill mask, so the outputs equal the reference's re-run-everything loop, batched.
- `mmu_vit_generate`: the same for the CLIP-ViT variant, whose prompt carries projected CLIP features in the
  embeddings (`Showo.embed_with_features`) and whose prefill mask opens only the feature columns.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.diffusion import maskgit
from mmjax.models import showo_layout as layout
from mmjax.models import showo_vit_layout as vit_layout
from mmjax.models.generate import GenerateOutput, generate
from mmjax.models.lm import LM, LMConfig, get_config, init_cache, unrolled_for_decoding
from mmjax.models.showo_layout import ShowoVocab
from mmjax.nn import masks
from mmjax.nn.attention import KVCache
from mmjax.nn.layers import Dense

Array = jax.Array


def showo_lm_config(vocab: ShowoVocab | None = None, preset: str = "phi-1.5", **overrides: Any) -> LMConfig:
    """The LM of a Show-o model: `preset` with QK LayerNorm and the vocabulary size `vocab` derives."""
    vocab = vocab or ShowoVocab()
    return get_config(preset, **{"qk_norm": "layernorm", **overrides, "vocab_size": vocab.vocab_size})


class MlpProjector(nn.Module):
    """Show-o-with-CLIP's `mm_projector`: Linear(in, out) - exact GELU - Linear(out, out)."""

    out_features: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = Dense(self.out_features, (None, "mlp"), name="fc1", **kw)(x)
        return Dense(self.out_features, ("mlp", "embed"), name="fc2", **kw)(nn.gelu(h, approximate=False))


class Showo(nn.Module):
    """The unified transformer. Params: `lm` (embed_tokens, layers, final_norm, lm_head) [+ `mm_projector`].

    `cfg` is the LM's config (its vocab_size must be `vocab.vocab_size`); the name `cfg` and the call signature
    match `mmjax.models.lm.LM`, so `mmjax.models.generate.generate` drives this module directly.
    """

    cfg: LMConfig
    vocab: ShowoVocab = ShowoVocab()
    w_clip_vit: bool = False
    clip_hidden_size: int = 1024

    def setup(self):
        if self.cfg.vocab_size != self.vocab.vocab_size:
            raise ValueError(f"Showo: LM vocab_size {self.cfg.vocab_size} != ShowoVocab.vocab_size "
                             f"{self.vocab.vocab_size} (text {self.vocab.text_vocab_size} + "
                             f"{len(self.vocab.special_tokens)} specials + {self.vocab.codebook_size} codes + mask)")
        self.lm = LM(self.cfg)
        if self.w_clip_vit:
            self.mm_projector = MlpProjector(self.cfg.hidden_size, dtype=jnp.dtype(self.cfg.dtype),
                                             param_dtype=jnp.dtype(self.cfg.param_dtype))

    def attention_mask(self, ids: Array) -> Array:
        """The omni-attention mask of any mix of T2I / LM / MMU rows, from the ids (True = may attend); with
        `w_clip_vit` the MMU rows are the CLIP-ViT variant's (only the feature span opened up)."""
        v = self.vocab
        return masks.showo_mask(ids, pad_id=v.pad_id, soi_id=v.soi_id, eoi_id=v.eoi_id, mmu_id=v.mmu_id,
                                mmu_features=self.w_clip_vit)

    def embed(self, ids: Array) -> Array:
        return self.lm.embed(ids)

    def project_features(self, features: Array) -> Array:
        """CLIP features (B, F, clip_hidden_size) -> LM embeddings (B, F, hidden)."""
        if not self.w_clip_vit:
            raise ValueError("this Showo has no mm_projector (w_clip_vit=False)")
        return self.mm_projector(features)

    def embed_with_features(self, ids: Array, features: Array, slots: Array) -> Array:
        """Token embeddings of `ids` (B, T) with projected CLIP features (B, F, clip_hidden_size) in the `slots`
        (B, T) positions (F per row): the input of an MMU row of the CLIP-ViT variant."""
        return splice_features(self.embed(ids), self.project_features(features), slots)

    def __call__(self, ids: Array | None = None, *, positions: Array | None = None, mask: Array | None = None,
                 is_causal: bool | None = None, cache: KVCache | None = None, embeds: Array | None = None,
                 columns: tuple[int, int] | None = None) -> Array | tuple[Array, KVCache]:
        """Float32 logits (B, T, vocab). Without `mask` (and without a cache) the Show-o mask is built from `ids`;
        a given mask is used as is (ANDed with causal when `is_causal`), which is what generation passes.
        `is_causal` defaults to False with a mask and to True without one (spliced `embeds`, no mask)."""
        if mask is None and cache is None and ids is not None:
            mask, is_causal = self.attention_mask(ids), False
        if is_causal is None:
            is_causal = mask is None
        if self.w_clip_vit and self.is_initializing():
            self.project_features(jnp.zeros((1, 1, self.clip_hidden_size), jnp.dtype(self.cfg.dtype)))
        return self.lm(ids, positions=positions, mask=mask, is_causal=is_causal, cache=cache, embeds=embeds,
                       columns=columns)


def splice_features(embeds: Array, features: Array, slots: Array) -> Array:
    """Puts features (B, F, E) in order into the positions where `slots` (B, T) is True (F per row)."""
    index = jnp.clip(jnp.cumsum(slots, axis=1) - 1, 0, features.shape[1] - 1)
    placed = jnp.take_along_axis(features, index[..., None], axis=1).astype(embeds.dtype)
    return jnp.where(slots[..., None], placed, embeds)


# ------------------------------------------------------------------------------------------------ T2I sampling
def _code_space(ids: Array, vocab: ShowoVocab) -> Array:
    """Vocabulary image ids (mask id allowed) -> codes, with the mask as code `codebook_size` (MaskGIT's mask)."""
    return jnp.where(ids == vocab.mask_id, vocab.codebook_size, ids - vocab.image_offset).astype(jnp.int32)


def _token_space(codes: Array, vocab: ShowoVocab) -> Array:
    return jnp.where(codes >= vocab.codebook_size, vocab.mask_id, codes + vocab.image_offset).astype(jnp.int32)


def t2i_logits_fn(model: Showo, params: Any, prefix: Array, num_image_tokens: int) -> maskgit.LogitsFn:
    """The closure MaskGIT decoding calls: codes (rows, N) -> code logits (rows, N, K), for `prefix` (rows, S+1)
    rows (the conditional prompts, followed by the unconditional ones when guidance is on).

    Text rows are causal and never see the image, so the prefix's keys and values are the same at every step:
    they are computed once here, and each step runs only `<|soi|> img <|eoi|>` (N + 2 tokens instead of the
    reference's S + N + 3) against that cache, with the omni-attention rows of the full sequence, and computes
    the head for the K code columns only. The logits equal the reference's full re-run (tests compare them).
    """
    vocab = model.vocab
    rows, s1 = prefix.shape
    n, length = num_image_tokens, prefix.shape[1] + num_image_tokens + 2
    dec_model, dec_params = unrolled_for_decoding(model, params)
    variables = {"params": dec_params}
    tok = lambda t: jnp.full((rows, 1), t, jnp.int32)
    dummy = jnp.concatenate([prefix, tok(vocab.soi_id), jnp.full((rows, n), vocab.mask_id, jnp.int32),
                             tok(vocab.eoi_id)], axis=1)
    mask = model.attention_mask(dummy)  # depends on the pad / soi / eoi positions only, not on the image tokens
    prefix_mask = jnp.pad(mask[:, :, :s1, :s1], ((0, 0), (0, 0), (0, 0), (0, length - s1)))
    _, cache = dec_model.apply(variables, prefix, positions=jnp.broadcast_to(jnp.arange(s1), (rows, s1)),
                               mask=prefix_mask, is_causal=False, cache=init_cache(dec_model.cfg, rows, length),
                               columns=(0, 0))
    image_mask, image_positions = mask[:, :, s1:, :], jnp.broadcast_to(jnp.arange(s1, length), (rows, n + 2))
    columns = (vocab.image_offset, vocab.image_offset + vocab.codebook_size)

    def logits_fn(codes: Array) -> Array:
        ids = jnp.concatenate([tok(vocab.soi_id), _token_space(codes, vocab), tok(vocab.eoi_id)], axis=1)
        logits, _ = dec_model.apply(variables, ids, positions=image_positions, mask=image_mask, is_causal=False,
                                    cache=cache, columns=columns)
        return logits[:, 1:n + 1]

    return logits_fn


def t2i_forward_flops(stack: Any, rows: int, max_text_len: int, num_image_tokens: int, codebook: int,
                      steps: int) -> float:
    """Forward FLOPs `t2i_generate` runs (mmjax.bench.flops conventions): the prefix once, then per step the
    image tokens against all keys and the head over the code columns. `stack.head` must be 0."""
    s1, n2 = max_text_len + 1, num_image_tokens + 2
    prefix = 2.0 * stack.matmul_params * rows * s1 + 4.0 * stack.layers * s1 * s1 * stack.width * rows
    step = (2.0 * (stack.matmul_params + stack.width * codebook) * rows * n2
            + 4.0 * stack.layers * n2 * (s1 + n2) * stack.width * rows)
    return prefix + steps * step


@functools.partial(jax.jit, static_argnames=("model", "max_text_len", "num_steps", "guidance_scale",
                                             "generation_temperature", "logit_temperature", "schedule"))
def t2i_generate(model: Showo, params: Any, text_ids: Array, text_len: Array, canvas: Array, rng: Array, *,
                 max_text_len: int, num_steps: int = 18, guidance_scale: float = 0.0,
                 generation_temperature: float = 1.0, logit_temperature: float = 1.0,
                 schedule: str = "cosine") -> maskgit.Decoded:
    """Image codes for prompts by MaskGIT decoding; known canvas tokens (inpainting) are kept.

    text_ids (B, Lt) / text_len (B,): tokenized prompts (no bos/eos); canvas (B, N) codes with
    `vocab.codebook_size` at unknown positions (`blank_canvas`). Returns `Decoded(tokens (B, N) codes,
    num_masked (B, num_steps))`. Prompt layout, CFG prompt and schedule follow showo.md (guidance
    `(1+w) c - w u`, float32 cosine schedule).

    Two temperatures, because the reference has one and users ask for the other:
      generation_temperature: Show-o's knob (`training.generation_temperature`, the `temperature` argument of
        its `t2i_generate`): the scale of the Gumbel noise added to the log-confidences that choose which
        tokens stay, compounded every step (`temp *= 1 - ratio`). 0 keeps the most confident tokens exactly.
      logit_temperature: divides the code logits before sampling (and the confidences come from that tempered
        distribution); 1.0 is the reference's plain softmax, 0 is argmax decoding.
    """
    vocab = model.vocab
    params = nn.unbox(params)
    dummy = jnp.zeros((canvas.shape[0], 0), jnp.int32)
    cond, _ = layout.t2i_layout(text_ids, text_len, dummy, vocab, max_text_len)
    uncond = layout.t2i_uncond_layout(dummy, vocab, max_text_len)
    prefix = cond[:, :max_text_len + 1]  # drop the soi/eoi around no image
    if guidance_scale:  # cond and uncond rows in one forward per step
        prefix = jnp.concatenate([prefix, uncond[:, :max_text_len + 1]], axis=0)
    fn = t2i_logits_fn(model, params, prefix, canvas.shape[1])
    return maskgit.decode(fn, canvas.astype(jnp.int32), mask_id=vocab.codebook_size, num_steps=num_steps, rng=rng,
                          guidance_scale=guidance_scale, temperature=logit_temperature,
                          choice_temperature=generation_temperature, schedule=schedule, rule="showo")


def blank_canvas(batch: int, num_image_tokens: int, vocab: ShowoVocab) -> Array:
    """An all-unknown canvas in code space (every position = `codebook_size`)."""
    return jnp.full((batch, num_image_tokens), vocab.codebook_size, jnp.int32)


def inpaint(model: Showo, params: Any, text_ids: Array, text_len: Array, codes: Array, token_mask: Array,
            rng: Array, *, max_text_len: int, **kw: Any) -> Array:
    """Repaints the tokens where `token_mask` (B, N) is True, keeping every other code of `codes` (B, N)."""
    canvas = jnp.where(token_mask, model.vocab.codebook_size, codes)
    return t2i_generate(model, params, text_ids, text_len, canvas, rng, max_text_len=max_text_len, **kw).tokens


def extrapolate(model: Showo, params: Any, text_ids: Array, text_len: Array, codes: Array, direction: str,
                rng: Array, *, max_text_len: int, offset: int = 0, **kw: Any) -> Array:
    """Grows a (B, h, w) code grid by w//2 + offset columns (or rows) towards `direction`; originals are kept."""
    vocab = model.vocab
    canvas_ids = layout.extrapolation_canvas(vocab.image_token(codes), direction, vocab, offset)
    canvas = _code_space(canvas_ids, vocab)
    new = t2i_generate(model, params, text_ids, text_len, canvas, rng, max_text_len=max_text_len, **kw).tokens
    return layout.extrapolation_stitch(new, codes, direction, offset)


# ------------------------------------------------------------------------------------------------ MMU answers
def mmu_prompt(image_codes: Array, question_ids: Array, question_len: Array, vocab: ShowoVocab
               ) -> tuple[Array, Array, Array]:
    """(prompt ids, valid, prefill mask) of `<|mmu|><|soi|> img <|eoi|> <bos> question`, left-padded."""
    prompt = layout.mmu_prompt_layout(vocab.image_token(image_codes), question_ids, question_len, vocab)
    valid = prompt != vocab.pad_id
    prefill = masks.showo_mmu_mask(prompt, eoi_id=vocab.eoi_id, pad_id=vocab.pad_id)
    return prompt, valid, prefill


_mmu_prompt = jax.jit(mmu_prompt, static_argnums=3)


def mmu_generate(model: Showo, params: Any, image_codes: Array, question_ids: Array, question_len: Array, *,
                 max_new_tokens: int, stop_tokens: tuple[int, ...] = (), temperature: float = 0.0, top_k: int = 0,
                 rng: Array | None = None) -> GenerateOutput:
    """Answers (B, max_new_tokens) to questions about tokenized images, greedy by default, with the KV cache;
    temperature > 0 samples among the `top_k` most likely (the reference's top_k=1 at temperature 1 samples
    among tokens tied at the maximum).

    question_ids hold the tokens of `mmu_question_text(q)` (see showo_layout) for Show-o's inference format.
    The image prefix attends bidirectionally inside the prefill; pads (left) are hidden from every real token.
    """
    vocab = model.vocab
    prompt, valid, prefill = _mmu_prompt(image_codes, question_ids, question_len, vocab)
    return generate(model, params, prompt, prompt_valid=valid, prefill_mask=prefill, max_new_tokens=max_new_tokens,
                    stop_tokens=stop_tokens or (vocab.eos_id,), pad_id=vocab.pad_id, temperature=temperature,
                    top_k=top_k, rng=rng)


def clip_features(vision_tower: nn.Module, variables: Any, pixels: Array) -> Array:
    """CLIP patch features for the projector: the second-to-last layer's hidden states without the class token
    (LLaVA's and Show-o's `select_layer=-2`, `select_feature='patch'`), computed by the frozen tower."""
    _, extras = vision_tower.apply(variables, pixels)
    return jax.lax.stop_gradient(extras["hidden_states"][-2][:, 1:])


def mmu_vit_prompt(model: Showo, params: Any, features: Array, system_ids: tuple[int, ...], question_ids: Array,
                   question_len: Array) -> tuple[Array, Array, Array, Array]:
    """(ids, valid, embeds, prefill mask) of Show-o-with-CLIP's prompt `<|mmu|> system <|soi|> feats <|eoi|>
    question`, left-padded (see `showo_vit_layout.mmu_vit_prompt_layout`).

    features (B, F, clip_hidden) are the frozen CLIP tower's (`clip_features`). Only the feature columns are
    visible to every row (`masks.showo_mmu_vit_mask`, the reference's `create_attention_mask_for_mmu_vit`);
    pads are hidden; everything else is causal.
    """
    vocab = model.vocab
    ids, slots = vit_layout.mmu_vit_prompt_layout(system_ids, features.shape[1], question_ids, question_len, vocab)
    embeds = model.apply({"params": nn.unbox(params)}, ids, features, slots, method=Showo.embed_with_features)
    prefill = masks.showo_mmu_vit_mask(ids, soi_id=vocab.soi_id, eoi_id=vocab.eoi_id, pad_id=vocab.pad_id)
    return ids, ids != vocab.pad_id, embeds, prefill


_mmu_vit_prompt = jax.jit(mmu_vit_prompt, static_argnums=(0, 3))


def mmu_vit_generate(model: Showo, params: Any, features: Array, system_ids: tuple[int, ...], question_ids: Array,
                     question_len: Array, *, max_new_tokens: int, stop_tokens: tuple[int, ...] = (),
                     temperature: float = 0.0, top_k: int = 0, rng: Array | None = None) -> GenerateOutput:
    """Answers (B, max_new_tokens) of the CLIP-ViT variant with the KV cache: the prompt's embeddings (features
    spliced in) and its mask go into the prefill, then decoding is causal. question_ids hold the tokens of
    `showo_vit_layout.mmu_vit_question_text(q)`. Greedy by default; stops at eos."""
    vocab = model.vocab
    ids, valid, embeds, prefill = _mmu_vit_prompt(model, params, features, tuple(system_ids), question_ids,
                                                  question_len)
    return generate(model, params, ids, prompt_valid=valid, prefill_mask=prefill, prompt_embeds=embeds,
                    max_new_tokens=max_new_tokens, stop_tokens=stop_tokens or (vocab.eos_id,), pad_id=vocab.pad_id,
                    temperature=temperature, top_k=top_k, rng=rng)
