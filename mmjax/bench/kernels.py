"""Kernel-level workloads behind the training-speed decisions: matmul shapes of a Show-o step (aligned or not),
attention with the odd lengths cuDNN needs padded, and the embedding gradient with a heavily repeated id."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mmjax.bench.measure import timed

# (M, K, N) of Show-o 1.3B at 256 px: 29 rows x 387 tokens = 11223 (x 392 padded, 11264 = 88 x 128 aligned)
SHOWO_MATMULS = ((11223, 2048, 8192), (11264, 2048, 8192), (8192, 11223, 2048), (8192, 11264, 2048),
                 (11223, 2048, 58498), (11223, 2048, 58624), (2048, 11223, 58624))


def matmul_shapes(iters: int = 10) -> dict[str, Any]:
    """bf16 TFLOP/s of each (M, K, N) product; unaligned K and N are where the slow kernels were."""
    product = jax.jit(lambda a, b: a @ b)
    out = {}
    for m, k, n in SHOWO_MATMULS:
        a = jax.random.normal(jax.random.key(0), (m, k), jnp.bfloat16)
        b = jax.random.normal(jax.random.key(1), (k, n), jnp.bfloat16)
        sec, _ = timed(lambda a=a, b=b: product(a, b), iters=iters)
        out[f"{m}x{k}x{n}"] = 2 * m * k * n / sec / 1e12
    return {"result": {"tflops": out}}


def attention_padding(iters: int = 10) -> dict[str, Any]:
    """fwd+bwd of attention at lengths cuDNN trains only when padded (729: SigLIP-384, unmasked; 387: Show-o,
    masked), XLA against `backend=auto` (cuDNN on the padded arrays), and their gradients' relative difference."""
    out = {}
    for t, head_dim, masked in ((729, 72, False), (387, 64, True), (388, 64, True)):
        q, k, v = (jax.random.normal(jax.random.key(i), (8, t, 16, head_dim), jnp.bfloat16) for i in range(3))
        mask = jnp.tril(jnp.ones((t, t), bool))[None, None] if masked else None
        grads = {}
        for backend in ("xla", "auto"):
            step = jax.jit(jax.grad(_attention_loss, (0, 1, 2)), static_argnums=4)
            sec, _ = timed(lambda step=step, a=(q, k, v, mask, backend): step(*a), iters=iters)
            grads[backend] = step(q, k, v, mask, backend)
            out[f"T{t}{'_masked' if masked else ''}_{backend}_ms"] = sec * 1e3
        rel = max(float(jnp.linalg.norm((a - b).astype(jnp.float32)) / jnp.linalg.norm(a.astype(jnp.float32)))
                  for a, b in zip(grads["xla"], grads["auto"]))
        out[f"T{t}_grad_rel_diff"] = rel
    return {"result": out}


def _attention_loss(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None, backend: str) -> jax.Array:
    from mmjax.nn.attention import attention_op

    return jnp.sum(attention_op(q, k, v, mask=mask, backend=backend).astype(jnp.float32) ** 2)


def embedding_gradient(iters: int = 10) -> dict[str, Any]:
    """The embedding table's gradient for Show-o's 11223 tokens, 45% of them the mask token (XLA's scatter-add)."""
    from mmjax.nn.embedding import lookup

    vocab, width, tokens = 58498, 2048, 11223
    rng = np.random.default_rng(0)
    ids = rng.integers(0, vocab, tokens)
    ids[rng.random(tokens) < 0.45] = vocab - 1
    ids = jnp.asarray(ids, jnp.int32)
    table = jnp.asarray(rng.normal(size=(vocab, width)) * 0.02, jnp.float32)
    weights = jax.random.normal(jax.random.key(0), (tokens, width), jnp.bfloat16)
    grad = jax.jit(jax.grad(lambda t: jnp.sum(lookup(t, ids, jnp.bfloat16).astype(jnp.float32) * weights)))
    sec, _ = timed(lambda: grad(table), iters=iters)
    return {"result": {"ms": sec * 1e3}}


def head_cross_entropy(iters: int = 10, tokens: int = 11223, width: int = 2048, vocab: int = 58498,
                       chunks: tuple[int, ...] = (1024, 2048, 4096)) -> dict[str, Any]:
    """Show-o's head + loss, forward and backward (11,223 tokens, 2,048 wide, 58,498 ids): float32 logits then
    optax's cross-entropy, against `fused_head_cross_entropy` (chunks, no full logits); ms, peak-free temp bytes."""
    import optax

    from mmjax.nn.cross_entropy import fused_head_cross_entropy

    h = jax.random.normal(jax.random.key(0), (tokens, width), jnp.bfloat16)
    kernel = jax.random.normal(jax.random.key(1), (width, vocab), jnp.float32) * 0.02
    labels = jax.random.randint(jax.random.key(2), (tokens,), 0, vocab)
    weights = jnp.ones((tokens,), jnp.float32)

    def plain(h, k):
        logits = jnp.pad(jnp.dot(h, k.astype(h.dtype)), ((0, 0), (0, -vocab % 128))).astype(jnp.float32)[:, :vocab]
        return jnp.sum(optax.softmax_cross_entropy_with_integer_labels(logits, labels) * weights)

    variants = {"plain": plain,
                **{f"fused_chunk{c}": (lambda h, k, c=c: fused_head_cross_entropy(h, k, labels, weights, chunk=c)[0])
                   for c in chunks}}
    out = {}
    for name, loss in variants.items():
        step = jax.jit(jax.grad(loss, argnums=(0, 1)))
        sec, _ = timed(lambda step=step: step(h, kernel), iters=iters)
        memory = step.lower(h, kernel).compile().memory_analysis()
        out[f"{name}_ms"] = sec * 1e3
        out[f"{name}_temp_gib"] = getattr(memory, "temp_size_in_bytes", 0) / 2**30
    return {"result": out}
