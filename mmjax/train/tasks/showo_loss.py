"""Show-o's two objectives as per-part sums: mask-token prediction on T2I rows (no shift, from `<|soi|>` on) and
next-token prediction on LM / MMU rows, in float32, with optional label smoothing; and how sums become a part's
loss (`showo.loss_normalization`):

  device   the reference's: each device takes the token mean of its own rows (torch's cross-entropy), then DDP
           averages the devices' gradients, so every device's mean weighs the same however many tokens it had.
           Here the sums are kept per group of rows a device holds (`groups` = the batch's data shards, rows in
           bundle order) and the loss is the mean over groups of sum / count (a group without a supervised token
           of that part adds 0, where torch's mean would be NaN).
  global   one token mean over the whole batch: every token weighs the same (groups with more MMU answer tokens
           count more). Equal to `device` with one data shard.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from mmjax.models import showo_layout as layout

LOSS_NORMALIZATIONS = ("device", "global")


def part_loss(nll: jax.Array, count: jax.Array, normalization: str) -> jax.Array:
    """A part's loss from its per-group sums (G,) (see the module docstring)."""
    if normalization == "device":
        return jnp.mean(nll / jnp.maximum(count, 1.0))
    if normalization == "global":
        return jnp.sum(nll) / jnp.maximum(jnp.sum(count), 1.0)
    raise ValueError(f"showo.loss_normalization={normalization!r}; expected one of {LOSS_NORMALIZATIONS}")


def grouped(fn, groups: int):
    """`fn(logits, labels, ...)` -> dict of sums, applied per group of rows: each sum becomes (groups,)."""
    def apply(logits: jax.Array, labels: jax.Array, *args):
        split = lambda x: x.reshape(groups, x.shape[0] // groups, *x.shape[1:])
        return jax.vmap(lambda lg, lab: fn(lg, lab, *args))(split(logits), split(labels))
    return apply


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


def weighted_total(sums: dict[str, jax.Array], coeffs: dict[str, float], normalization: str
                   ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The weighted sum of the parts' losses (`coeffs`: part -> coefficient, in the parts' order) and the metrics
    of a step: each part's loss, the masked-token accuracy of T2I and the token accuracy of LM / MMU."""
    total, metrics = jnp.zeros((), jnp.float32), {}
    for part, coeff in coeffs.items():
        if f"{part}_nll" not in sums:
            continue
        loss = part_loss(jnp.atleast_1d(sums[f"{part}_nll"]), jnp.atleast_1d(sums[f"{part}_count"]), normalization)
        total = total + coeff * loss
        metrics[f"{part}_loss"] = loss
    sums = {k: jnp.sum(v) for k, v in sums.items()}
    if "t2i_correct" in sums:
        metrics["t2i_masked_acc"] = sums["t2i_correct"] / jnp.maximum(sums["t2i_masked"], 1.0)
    for part in ("lm", "mmu"):
        if f"{part}_correct" in sums:
            metrics[f"{part}_token_acc"] = sums[f"{part}_correct"] / jnp.maximum(sums[f"{part}_count"], 1.0)
    return total, metrics
