"""Show-o's two objectives as per-part sums (so the trainer can average over devices and micro-steps exactly):
mask-token prediction on T2I rows (no shift, from `<|soi|>` on) and next-token prediction on LM / MMU rows, in
float32, with optional label smoothing."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from mmjax.models import showo_layout as layout


def _ce(logits: jax.Array, labels: jax.Array, smoothing: float) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(summed CE, summed correct, count) over positions whose label is not -100, in float32."""
    valid = labels != layout.ShowoVocab.ignore_id
    safe = jnp.where(valid, labels, 0)
    logits = logits.astype(jnp.float32)
    if smoothing:
        target = optax.smooth_labels(jax.nn.one_hot(safe, logits.shape[-1]), smoothing)
        nll = optax.softmax_cross_entropy(logits, target)
    else:
        nll = optax.softmax_cross_entropy_with_integer_labels(logits, safe)
    correct = jnp.argmax(logits, -1) == safe
    return jnp.sum(nll * valid), jnp.sum(correct * valid), jnp.sum(valid).astype(jnp.float32)


def mtp_sums(logits: jax.Array, labels: jax.Array, max_text_len: int, vocab: layout.ShowoVocab,
             smoothing: float = 0.0) -> dict[str, jax.Array]:
    """MTP sums of T2I rows: CE from `<|soi|>` (index S+1) on, NO shift; the labels are -100 except at masked image
    positions and soi/eoi. Also the argmax hits on masked image tokens alone (`t2i_correct` / `t2i_masked`)."""
    lg, lab = logits[:, max_text_len + 1:], labels[:, max_text_len + 1:]
    nll, _, count = _ce(lg, lab, smoothing)
    _, correct, masked = _ce(lg, jnp.where(vocab.is_image_token(lab), lab, vocab.ignore_id), 0.0)
    return {"t2i_nll": nll, "t2i_count": count, "t2i_correct": correct, "t2i_masked": masked}


def ntp_sums(logits: jax.Array, labels: jax.Array, part: str, smoothing: float = 0.0) -> dict[str, jax.Array]:
    """NTP sums: `logits[:, :-1]` against `labels[:, 1:]`."""
    nll, correct, count = _ce(logits[:, :-1], labels[:, 1:], smoothing)
    return {f"{part}_nll": nll, f"{part}_correct": correct, f"{part}_count": count}
