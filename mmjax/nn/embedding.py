"""Token embeddings and the vocabulary head, with the vocabulary padded to a hardware-friendly width.

An odd vocabulary (Show-o's 58,498) puts the head's matmuls on alignment-2 kernels: on an H200 (jax 0.11.2) the
11,223 x 2,048 x 58,498 bf16 product ran at 428 TFLOP/s and the same product padded to 58,624 columns at 709
(docs/benchmarks.md, 2026-11-29). `pad_to` rounds the head's output width up (128 on GPU/TPU)
inside the computation only: the parameters keep their released shape (so converters and checkpoints are
unchanged) and the padded logits get a bias of -1e30, so softmax, losses, argmax and sampling never see them
(exp underflows to exactly 0).

The embedding gathers rows first and casts only those to the compute dtype (`nn.Embed` casts the whole table
every step). Its gradient stays XLA's scatter-add: 0.43 ms for Show-o's 11k tokens with half of them one id,
measured on the same H200, so a sort-based variant (0.36 ms) did not earn its complexity.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.nn.layers import partitioned

PAD_LOGIT = -1e30


def padded_size(size: int, multiple: int) -> int:
    """`size` rounded up to a multiple of `multiple` (1 = unchanged)."""
    return -(-size // max(1, multiple)) * max(1, multiple)


def lookup(table: jax.Array, ids: jax.Array, dtype: Any) -> jax.Array:
    """Rows of `table` for `ids`, cast to `dtype` after the gather (only the used rows are converted)."""
    return jnp.take(table, ids, axis=0).astype(dtype)


class TokenEmbedding(nn.Module):
    """`nn.Embed`'s parameter (`embedding`, (vocab, embed)); gathers before casting, `attend` is padded."""

    num_embeddings: int
    features: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    pad_to: int = 1

    def setup(self):
        init = partitioned(nn.initializers.normal(0.02), ("vocab", "embed"))
        self.embedding = self.param("embedding", init, (self.num_embeddings, self.features), self.param_dtype)

    def __call__(self, ids: jax.Array) -> jax.Array:
        return lookup(self.embedding, ids, self.dtype)

    def attend(self, x: jax.Array, columns: tuple[int, int] | None = None) -> jax.Array:
        """Tied-embedding logits x @ E^T over the padded vocabulary (padded columns = PAD_LOGIT), or over the
        vocabulary ids [start, stop) of `columns` only (unpadded)."""
        table = jnp.asarray(self.embedding, self.dtype)
        if columns is not None:
            return jnp.einsum("...d,vd->...v", x.astype(self.dtype), table[columns[0]:columns[1]])
        extra = padded_size(self.num_embeddings, self.pad_to) - self.num_embeddings
        logits = jnp.einsum("...d,vd->...v", x.astype(self.dtype), jnp.pad(table, ((0, extra), (0, 0))))
        return logits + pad_bias(self.num_embeddings, extra, logits.dtype) if extra else logits


def pad_bias(size: int, extra: int, dtype: Any) -> jax.Array:
    return jnp.concatenate([jnp.zeros((size,), dtype), jnp.full((extra,), PAD_LOGIT, dtype)])


class VocabHead(nn.Module):
    """The LM head: `kernel` (embed, vocab) [+ `bias`], `Dense`'s parameter names, output padded to `pad_to`."""

    vocab_size: int
    use_bias: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    pad_to: int = 1

    @nn.compact
    def __call__(self, x: jax.Array, columns: tuple[int, int] | None = None) -> jax.Array:
        """Logits over the (padded) vocabulary, or over the ids [start, stop) of `columns` only: sampling that
        reads a known range (Show-o's image codes) then skips the rest of the head's matmul."""
        kernel = self.param("kernel", partitioned(nn.initializers.lecun_normal(), ("embed", "vocab")),
                            (x.shape[-1], self.vocab_size), self.param_dtype)
        bias = (self.param("bias", partitioned(nn.initializers.zeros_init(), ("vocab",)), (self.vocab_size,),
                           self.param_dtype) if self.use_bias else None)
        if columns is not None:
            start, stop = columns
            y = jnp.einsum("...d,dv->...v", x.astype(self.dtype), jnp.asarray(kernel[:, start:stop], self.dtype))
            return y if bias is None else y + jnp.asarray(bias[start:stop], self.dtype)
        extra = padded_size(self.vocab_size, self.pad_to) - self.vocab_size
        kernel = jnp.pad(jnp.asarray(kernel, self.dtype), ((0, 0), (0, extra)))
        y = jnp.einsum("...d,dv->...v", x.astype(self.dtype), kernel)
        bias = None if bias is None else jnp.asarray(bias, self.dtype)
        if extra:
            bias = pad_bias(self.vocab_size, extra, self.dtype) + (0 if bias is None else jnp.pad(bias, (0, extra)))
        return y if bias is None else y + bias
