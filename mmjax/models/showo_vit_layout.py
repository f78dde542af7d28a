"""The MMU layouts of "Show-o with CLIP-ViT", whose image is continuous CLIP features instead of tokens.

Training rows (train_w_clip_vit.py) and inference prompts (inference_mmu.py) are
  `<|mmu|> system <|soi|> [F feature slots] <|eoi|> text`
with `system` the tokenized system prompt (empty in instruction-tuning stage 1, Show-o's 28-token "A chat between
a curious user ..." in stage 2) and F = 576 for CLIP ViT-L/14-336. The slots hold a placeholder id; their
embeddings are replaced by the projected features (`Showo.embed_with_features`), and the mask opens exactly
them (`mmjax.nn.masks.showo_mmu_vit_mask`). Fixed shapes, jit-able, like `showo_layout`.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from mmjax.models.showo_layout import ShowoVocab, pack_segments

Array = jax.Array


def _vit_prefix(system_ids: Array, num_features: int, vocab: ShowoVocab, batch: int) -> Array:
    """`<|mmu|> system <|soi|> [slot]*F <|eoi|>`, the CLIP-ViT variant's MMU prefix; slots hold `mask_id` until
    `splice_features` replaces their embeddings (any id would do: none of them is ever looked at)."""
    tok = lambda i, n=1: jnp.full((batch, n), i, jnp.int32)
    system = jnp.broadcast_to(jnp.asarray(system_ids, jnp.int32).reshape(1, -1), (batch, len(system_ids)))
    return jnp.concatenate([tok(vocab.mmu_id), system, tok(vocab.soi_id), tok(vocab.mask_id, num_features),
                            tok(vocab.eoi_id)], axis=1)


def mmu_vit_layout(conv_ids: Array, conv_is_target: Array, conv_len: Array, system_ids: Sequence[int],
                   num_features: int, vocab: ShowoVocab, text_len: int) -> tuple[Array, Array, Array]:
    """Show-o-with-CLIP-ViT training rows `<|mmu|> system <|soi|> feats <|eoi|> conv [PAD]...` (reference:
    `train_w_clip_vit.py`), of length 1 + len(system) + F + 2 + text_len; returns (ids, labels, slots).

    `system_ids` is the tokenized system prompt, the same for every row (empty in stage 1, Show-o's 28-token
    "A chat between a curious user ..." in stage 2); `slots` (B, T) marks the F feature positions. The
    conversation is right-padded to `text_len` and cut there (no eos added); labels are `conv_ids` where
    `conv_is_target`, -100 elsewhere (system, features, delimiters, pads), as the reference.
    """
    b = conv_ids.shape[0]
    n = jnp.minimum(jnp.asarray(conv_len, jnp.int32), text_len)
    conv_labels = jnp.where(conv_is_target, conv_ids, vocab.ignore_id)
    text = pack_segments([(conv_ids, n)], text_len, vocab.pad_id, right_align=False)
    text_labels = pack_segments([(conv_labels, n)], text_len, vocab.ignore_id, right_align=False)
    prefix = _vit_prefix(system_ids, num_features, vocab, b)
    start = 2 + len(system_ids)
    slots = jnp.zeros((b, prefix.shape[1] + text_len), bool).at[:, start:start + num_features].set(True)
    labels = jnp.concatenate([jnp.full_like(prefix, vocab.ignore_id), text_labels], axis=1)
    return jnp.concatenate([prefix, text], axis=1), labels, slots


def mmu_vit_question_text(question: str) -> str:
    """What Show-o-with-CLIP-ViT tokenizes after `<|eoi|>` at inference: the phi1.5 template's prompt
    "USER: q ASSISTANT:" (no bos, no newline: the reference's `conv.get_prompt().strip()`)."""
    return "USER: " + question + " ASSISTANT:"


def mmu_vit_prompt_layout(system_ids: Sequence[int], num_features: int, question_ids: Array, question_len: Array,
                          vocab: ShowoVocab) -> tuple[Array, Array]:
    """CLIP-ViT MMU inference prompts `<|mmu|> system <|soi|> feats <|eoi|> question`, left-padded to
    3 + len(system) + F + Lq; returns (ids, slots). Mask: `showo_mmu_vit_mask(ids, ..., pad_id=vocab.pad_id)`."""
    b, lq = question_ids.shape
    prefix = _vit_prefix(system_ids, num_features, vocab, b)
    full = jnp.full((b,), prefix.shape[1], jnp.int32)
    segments = [(prefix, full), (question_ids, jnp.asarray(question_len, jnp.int32))]
    ids = pack_segments(segments, prefix.shape[1] + lq, vocab.pad_id, right_align=True)
    soi = jnp.argmax(ids == vocab.soi_id, axis=1)[:, None]
    j = jnp.arange(ids.shape[1])[None, :]
    return ids, (j > soi) & (j <= soi + num_features)
