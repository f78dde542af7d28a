"""Softmax cross-entropy through an LM head without materialising the (tokens, vocab) float32 logits.

A Show-o 1.3B step has 11,223 tokens over a 58,624-wide head: its float32 logits are 2.6 GB, written by the head's
matmul, read by the softmax, the loss and their backward, and kept for the backward. `fused_head_cross_entropy`
walks the tokens in chunks instead: per chunk it computes the logits (bf16 matmul, float32 accumulation), the loss,
and at once the gradients (softmax - one-hot) with respect to the hidden states and the head's kernel, so only one
chunk's logits ever exist. The backward pass then only scales the saved gradients by the incoming cotangent (the
loss is a weighted sum, linear in its cotangent). FLOPs are the unfused head's forward + backward (three matmuls).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


def _chunk_loss_and_grads(h, kernel, labels, weights, chunk, columns):
    """(weighted nll sum, weighted correct sum, d nll / d h (N, D), d nll / d kernel (D, V) float32)."""
    n, d = h.shape
    v = kernel.shape[1]
    pad_rows = -n % chunk
    pad_cols = -v % columns
    w = jnp.pad(kernel.astype(h.dtype), ((0, 0), (0, pad_cols)))
    col_ok = jnp.arange(v + pad_cols) < v
    hs = jnp.pad(h, ((0, pad_rows), (0, 0))).reshape(-1, chunk, d)
    ls = jnp.pad(labels, (0, pad_rows)).reshape(-1, chunk)
    ws = jnp.pad(weights.astype(jnp.float32), (0, pad_rows)).reshape(-1, chunk)

    def body(dw, xs):
        hc, lc, wc = xs
        logits = jnp.where(col_ok, jnp.dot(hc, w, preferred_element_type=jnp.float32), -jnp.inf)
        lse = jax.nn.logsumexp(logits, axis=-1)
        picked = jnp.take_along_axis(logits, lc[:, None], axis=-1)[:, 0]
        nll = jnp.sum((lse - picked) * wc)
        correct = jnp.sum((jnp.argmax(logits, axis=-1) == lc) * wc)
        probs = jnp.exp(logits - lse[:, None])
        dlogits = ((probs - jax.nn.one_hot(lc, logits.shape[-1], dtype=jnp.float32)) * wc[:, None]).astype(h.dtype)
        dh = jnp.dot(dlogits, w.T, preferred_element_type=jnp.float32).astype(h.dtype)
        dw = dw + jnp.dot(hc.T, dlogits, preferred_element_type=jnp.float32)
        return dw, (nll, correct, dh)

    dw, (nll, correct, dh) = jax.lax.scan(body, jnp.zeros((d, v + pad_cols), jnp.float32), (hs, ls, ws))
    return jnp.sum(nll), jnp.sum(correct), dh.reshape(-1, d)[:n], dw[:, :v]


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _fused(h, kernel, labels, weights, chunk, columns):
    nll, correct, _, _ = _chunk_loss_and_grads(h, kernel, labels, weights, chunk, columns)
    return nll, correct


def _fused_fwd(h, kernel, labels, weights, chunk, columns):
    nll, correct, dh, dw = _chunk_loss_and_grads(h, kernel, labels, weights, chunk, columns)
    return (nll, correct), (dh, dw.astype(kernel.dtype), weights)


def _fused_bwd(chunk, columns, saved, cotangents):
    dh, dw, weights = saved
    g = cotangents[0]  # the correct count is a metric: its cotangent is ignored
    return ((g * dh.astype(jnp.float32)).astype(dh.dtype), (g * dw.astype(jnp.float32)).astype(dw.dtype),
            None, jnp.zeros_like(weights))


_fused.defvjp(_fused_fwd, _fused_bwd)


def fused_head_cross_entropy(hidden: jax.Array, kernel: jax.Array, labels: jax.Array, weights: jax.Array, *,
                             chunk: int = 2048, column_multiple: int = 128) -> tuple[jax.Array, jax.Array]:
    """(sum of weights * CE, sum of weights * [argmax == label]) of `hidden @ kernel` against `labels`.

    hidden (..., D) in the compute dtype (the head's matmul runs in it, accumulating in float32); kernel (D, V) the
    head's (unpadded) kernel; labels (...) int in [0, V); weights (...) float, 0 where a position does not count
    (e.g. labels of -100: pass any valid id there with weight 0). The vocabulary is padded to `column_multiple`
    for the matmul (masked out of the softmax). Differentiable in `hidden` and `kernel` (first output only);
    equals float32 `optax.softmax_cross_entropy_with_integer_labels` on the full logits within matmul rounding.
    """
    d = hidden.shape[-1]
    return _fused(hidden.reshape(-1, d), kernel, labels.reshape(-1).astype(jnp.int32), weights.reshape(-1),
                  int(chunk), int(column_multiple))
