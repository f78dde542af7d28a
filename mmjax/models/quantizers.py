"""Quantizers for the image tokenizer: lookup-free (LFQ, MAGVIT-v2) and classic VQ with an EMA codebook.

Both map a latent (..., C) to (quantized, indices, aux): `quantized` carries straight-through gradients to the
encoder, `indices` are int32 code ids, `aux` holds the unweighted loss terms, their weighted sum `loss`
(what a tokenizer loss_fn adds to reconstruction + perceptual + adversarial terms) and usage metrics (always
report usage: codebook collapse is the classic failure of both families). Quantization math runs in float32.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.scipy.special import entr

from mmjax.nn.layers import partitioned

# ---------------------------------------------------------------------------------------------------- LFQ


def _shifts(num_bits: int, msb_first: bool) -> jax.Array:
    """Bit of each channel: channel 0 is bit K-1 (MSB first, Show-o) or bit 0 (LSB first, Open-MAGVIT2)."""
    shifts = jnp.arange(num_bits, dtype=jnp.int32)
    return shifts[::-1] if msb_first else shifts


def indices_to_bits(ids: jax.Array, num_bits: int, msb_first: bool = True) -> jax.Array:
    """int ids (...) -> int32 bits (..., num_bits), channel order given by `msb_first`."""
    return (jnp.asarray(ids, jnp.int32)[..., None] >> _shifts(num_bits, msb_first)) & 1


def bits_to_indices(bits: jax.Array, msb_first: bool = True) -> jax.Array:
    """bits / booleans (..., K) -> int32 ids; the inverse of `indices_to_bits`."""
    bits = jnp.asarray(bits).astype(jnp.int32)
    return jnp.sum(bits << _shifts(bits.shape[-1], msb_first), axis=-1)


def indices_to_codes(ids: jax.Array, num_bits: int, msb_first: bool = True) -> jax.Array:
    """ids -> their +-1 code vectors (..., num_bits) in float32: what the decoder is fed for a token map."""
    return indices_to_bits(ids, num_bits, msb_first).astype(jnp.float32) * 2.0 - 1.0


def code_usage(ids: jax.Array, codebook_size: int) -> tuple[jax.Array, jax.Array]:
    """(fraction of codes used in this batch, perplexity = exp(entropy of the empirical code histogram))."""
    counts = jnp.bincount(ids.reshape(-1), length=codebook_size).astype(jnp.float32)
    probs = counts / jnp.maximum(counts.sum(), 1.0)
    return jnp.mean(counts > 0), jnp.exp(jnp.sum(entr(probs)))


def _group_sizes(num_bits: int, group_bits: int) -> list[int]:
    """Split K bits into ceil(K/group_bits) contiguous, nearly equal groups (13 bits, <= 10 -> [7, 6])."""
    n = -(-num_bits // max(group_bits, 1))
    return [num_bits // n + (1 if g < num_bits % n else 0) for g in range(n)]


def _code_log_probs(log_p1: jax.Array, log_p0: jax.Array, code_bits: jax.Array) -> jax.Array:
    """log p(code | x) = sum_i log p_i(bit_i) for all positions (N) x codes (M): one (N,K)x(K,M) matmul."""
    return log_p0.sum(-1, keepdims=True) + (log_p1 - log_p0) @ code_bits.T


def _entropy_terms(log_p: jax.Array) -> jax.Array:
    """-p log p from log p: finite values and gradients where p underflows (entr has infinite slope at 0)."""
    return -jnp.exp(log_p) * log_p


def _log_mean_prob(log_p: jax.Array) -> jax.Array:
    """log of the batch-mean probability of each code, (N, M) -> (M,), without leaving log space."""
    return jax.nn.logsumexp(log_p, axis=0) - jnp.log(log_p.shape[0])


def lfq_entropy(z: jax.Array, temperature: float = 0.01, group_bits: int = 10,
                chunk_codes: int = 0) -> tuple[jax.Array, jax.Array]:
    """(mean per-position entropy, entropy of the batch-mean code distribution) of p = softmax(2 z.C^T / T).

    With C all +-1 codes the softmax factorises over bits: p(c|z) = prod_i sigmoid(4 z_i c_i / T), so the
    per-position entropy is exactly the sum of per-bit entropies and never needs the 2^K codes.

    The batch-mean distribution is a mixture of such products and does not factorise. Two ways to avoid a
    dense (positions x 2^K) tensor:
      * `chunk_codes > 0`: exact. Walk the 2^K codes in chunks of `chunk_codes` (a power of two), memory
        positions x chunk; compute is positions x 2^K x K, fine for 2^13 codes, heavy for 2^18.
      * otherwise (default): factorised. Split the bits into contiguous groups of <= `group_bits` bits and
        sum the entropies of each group's batch-mean marginal. This is what is computed, and it is an UPPER
        bound of the full-codebook entropy (subadditivity), equal to it when the groups are independent
        under the batch mixture, in particular when there is one group (K <= group_bits) or one position.
        Maximising it still pushes every group's codes to be used uniformly (Open-MAGVIT2 factorises its
        2^18 codebook the same way). Show-o's LFQuantizer computes the fully factorised form (group_bits=1)
        at temperature 1, averaged rather than summed over bits: its entropy term is this / K (checked).
    """
    k = z.shape[-1]
    z = z.reshape(-1, k).astype(jnp.float32)
    logits = 4.0 * z / temperature  # log p(bit=1) - log p(bit=0)
    log_p1, log_p0 = jax.nn.log_sigmoid(logits), jax.nn.log_sigmoid(-logits)
    per_sample = jnp.mean(jnp.sum(_entropy_terms(log_p1) + _entropy_terms(log_p0), axis=-1))
    if chunk_codes > 0:
        chunk = min(chunk_codes, 2 ** k)
        if chunk & (chunk - 1):
            raise ValueError(f"entropy_chunk_codes must be a power of two, got {chunk_codes}")

        def chunk_entropy(start: jax.Array) -> jax.Array:
            bits = indices_to_bits(start + jnp.arange(chunk), k, msb_first=False).astype(jnp.float32)
            return jnp.sum(_entropy_terms(_log_mean_prob(_code_log_probs(log_p1, log_p0, bits))))

        starts = jnp.arange(0, 2 ** k, chunk, dtype=jnp.int32)
        return per_sample, jnp.sum(jax.lax.map(chunk_entropy, starts))
    codebook, lo = jnp.zeros((), jnp.float32), 0
    for size in _group_sizes(k, group_bits):
        bits = indices_to_bits(jnp.arange(2 ** size), size, msb_first=False).astype(jnp.float32)
        lp = _code_log_probs(log_p1[:, lo:lo + size], log_p0[:, lo:lo + size], bits)
        codebook = codebook + jnp.sum(_entropy_terms(_log_mean_prob(lp)))
        lo += size
    return per_sample, codebook


class LFQ(nn.Module):
    """Lookup-free quantization: sign of each latent channel -> +-1, index = the bits read in `msb_first`
    order.

    aux: commit_loss = beta * mse(z, sg(sign z)) (no codebook loss: there is no codebook to learn);
    entropy_loss = per-position entropy - batch-mean entropy (minimise: confident per position, diverse
    overall); loss = commit_loss + entropy_weight * entropy_loss; usage, perplexity. Zero maps to -1 (bit
    0), as Show-o.
    """

    num_bits: int
    msb_first: bool = True
    temperature: float = 0.01
    commit_beta: float = 0.25
    entropy_weight: float = 0.1
    entropy_group_bits: int = 10
    entropy_chunk_codes: int = 0

    @property
    def codebook_size(self) -> int:
        return 2 ** self.num_bits

    def __call__(self, z: jax.Array) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
        if z.shape[-1] != self.num_bits:
            raise ValueError(f"LFQ expects {self.num_bits} latent channels, got shape {z.shape}")
        z = z.astype(jnp.float32)
        positive = z > 0
        hard = jnp.where(positive, 1.0, -1.0)
        quantized = z + jax.lax.stop_gradient(hard - z)
        ids = bits_to_indices(positive, self.msb_first)
        commit = self.commit_beta * jnp.mean(jnp.square(z - jax.lax.stop_gradient(hard)))
        per_sample, codebook = lfq_entropy(z, self.temperature, self.entropy_group_bits,
                                           self.entropy_chunk_codes)
        entropy = per_sample - codebook
        usage, perplexity = code_usage(ids, self.codebook_size)
        aux = dict(loss=commit + self.entropy_weight * entropy, commit_loss=commit, entropy_loss=entropy,
                   per_sample_entropy=per_sample, codebook_entropy=codebook, usage=usage,
                   perplexity=perplexity)
        return quantized, ids, aux

    def codes(self, ids: jax.Array) -> jax.Array:
        return indices_to_codes(ids, self.num_bits, self.msb_first)


# ----------------------------------------------------------------------------------------------- VQ (EMA)


class VectorQuantizerEMA(nn.Module):
    """Nearest-codebook-vector quantization with an EMA codebook and dead-code restarts.

    The codebook is not a gradient-trained param: it and its EMA statistics live in the `vq_stats`
    collection, so the optimizer never sees them and the model stays pure-functional. Statistics update only
    when the caller makes the collection mutable (`apply(..., mutable=["vq_stats"])`, training) and never
    during `init`:
      cluster_size <- d * cluster_size + (1-d) * counts
      embed_sum <- d * embed_sum + (1-d) * (sum of the z assigned to each code)
      codebook = embed_sum / n_smoothed,  n_smoothed = (cluster_size + eps) / (total + K eps) * total
    (Laplace smoothing keeps unused codes finite). Codes whose EMA count falls below `dead_code_threshold`
    (about "assigned fewer vectors per batch than this") are replaced by random encoder outputs of the
    batch, drawn with the `vq` rng when given, else from a counter kept in `vq_stats`. Threshold 0 disables
    restarts. Each code starts as if it had been assigned its own initial vector once (count 1), so the
    first updates blend the initial code with the data instead of jumping to it. Under jit with sharded
    (global) batches the counts and sums are over the global batch: no cross-device code is needed.
    """

    codebook_size: int
    dim: int
    decay: float = 0.99
    eps: float = 1e-5
    commit_beta: float = 0.25
    dead_code_threshold: float = 1.0

    def setup(self):
        shape = (self.codebook_size, self.dim)
        init = partitioned(nn.initializers.normal(1.0), ("vocab", None))  # dim is small: never shard it
        self.codebook = self.variable("vq_stats", "codebook", lambda: init(self.make_rng("params"), shape))
        self.embed_sum = self.variable("vq_stats", "embed_sum",
                                       partitioned(lambda: self.codebook.value, ("vocab", None)))
        self.cluster_size = self.variable("vq_stats", "cluster_size",
                                          partitioned(nn.initializers.ones_init(), ("vocab",)), None,
                                          (self.codebook_size,), jnp.float32)
        self.updates = self.variable("vq_stats", "updates", lambda: jnp.zeros((), jnp.int32))

    def __call__(self, z: jax.Array) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
        if z.shape[-1] != self.dim:
            raise ValueError(f"VQ expects {self.dim} latent channels, got shape {z.shape}")
        flat = z.reshape(-1, self.dim).astype(jnp.float32)
        codebook = self.codebook.value
        dist = (jnp.sum(flat ** 2, -1, keepdims=True) - 2.0 * flat @ codebook.T
                + jnp.sum(codebook ** 2, -1)[None])
        ids = jnp.argmin(dist, axis=-1).astype(jnp.int32)
        chosen = codebook[ids]
        quantized = flat + jax.lax.stop_gradient(chosen - flat)
        commit = self.commit_beta * jnp.mean(jnp.square(flat - jax.lax.stop_gradient(chosen)))
        usage, perplexity = code_usage(ids, self.codebook_size)
        aux = dict(loss=commit, commit_loss=commit, usage=usage, perplexity=perplexity)
        if self.is_mutable_collection("vq_stats") and not self.is_initializing():
            aux["restarted_codes"] = self._ema_update(jax.lax.stop_gradient(flat), ids)
        return quantized.reshape(z.shape), ids.reshape(z.shape[:-1]), aux

    def _ema_update(self, flat: jax.Array, ids: jax.Array) -> jax.Array:
        d, k = self.decay, self.codebook_size
        counts = jnp.bincount(ids, length=k).astype(jnp.float32)
        sums = jax.ops.segment_sum(flat, ids, num_segments=k)
        cluster_size = d * self.cluster_size.value + (1 - d) * counts
        embed_sum = d * self.embed_sum.value + (1 - d) * sums
        total = cluster_size.sum()
        smoothed = (cluster_size + self.eps) / (total + k * self.eps) * total
        codebook = embed_sum / smoothed[:, None]
        dead = cluster_size < self.dead_code_threshold
        if self.dead_code_threshold > 0:
            if self.has_rng("vq"):
                rng = self.make_rng("vq")
            else:
                rng = jax.random.fold_in(jax.random.key(0), self.updates.value)
            candidates = flat[jax.random.randint(rng, (k,), 0, flat.shape[0])]
            codebook = jnp.where(dead[:, None], candidates, codebook)
            cluster_size = jnp.where(dead, self.dead_code_threshold, cluster_size)
            embed_sum = jnp.where(dead[:, None], candidates * self.dead_code_threshold, embed_sum)
        self.codebook.value, self.embed_sum.value, self.cluster_size.value = codebook, embed_sum, cluster_size
        self.updates.value = self.updates.value + 1
        return jnp.sum(dead).astype(jnp.float32)

    def codes(self, ids: jax.Array) -> jax.Array:
        return self.codebook.value[ids]
