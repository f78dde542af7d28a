"""Named performance workloads: train-step throughput with TFLOP/s and MFU, decode tokens/s, attention kernels.

    python scripts/benchmark.py matmul hbm vit_train lm_train lm_decode attention
    python scripts/benchmark.py lm_decode --json results.json

MFU is stated against 989 TFLOP/s (H100 SXM dense bf16, the conventional reference) and against the bf16 matmul
ceiling measured in the same process (`matmul`). FLOPs are analytic (matmuls + attention; 3x forward for a train
step). Decode efficiency is the fraction of the measured HBM bandwidth (`hbm`) that the bytes a decode step must
read (weights + KV cache) would need. Numbers are recorded in docs/benchmarks.md with device, command and date.
Benchmarks are not tests: nothing here asserts a timing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

H100_DENSE_BF16 = 989e12
RESULTS: dict[str, dict[str, Any]] = {}


def timed(fn: Callable[[], Any], warmup: int = 2, iters: int = 10) -> float:
    """Median seconds per call after warm-up, synchronising on the outputs."""
    for _ in range(warmup):
        jax.block_until_ready(fn())
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def report(name: str, **values: Any) -> None:
    RESULTS[name] = values
    shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())
    print(f"{name}: {shown}", flush=True)


def mfu(flops_per_sec: float) -> dict[str, float]:
    out = {"tflops": flops_per_sec / 1e12, "mfu_989": flops_per_sec / H100_DENSE_BF16}
    if "matmul" in RESULTS:
        out["mfu_ceiling"] = flops_per_sec / (RESULTS["matmul"]["tflops"] * 1e12)
    return out


def bench_matmul(n: int = 8192) -> None:
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.bfloat16)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.bfloat16)
    f = jax.jit(lambda a, b: a @ b)
    sec = timed(lambda: f(a, b), iters=20)
    report("matmul", n=n, ms=sec * 1e3, tflops=2 * n**3 / sec / 1e12)


def bench_hbm(gib: float = 1.0) -> None:
    x = jnp.ones((int(gib * 2**30) // 4,), jnp.float32)
    f = jax.jit(lambda x: x * 1.0001)
    sec = timed(lambda: f(x), iters=20)
    report("hbm", gib=gib, ms=sec * 1e3, tb_per_s=2 * x.nbytes / sec / 1e12)


def train_step_fn(apply: Callable, loss: Callable, tx: optax.GradientTransformation) -> Callable:
    def step(params, opt_state, batch):
        grads = jax.grad(lambda p: loss(apply(p, batch), batch))(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state
    return jax.jit(step, donate_argnums=(0, 1))


def bench_vit_train(variant: str = "B/16", batch: int = 256, res: int = 224) -> None:
    from mmjax.models.vit import ViT, decode_variant

    model = ViT(variant=variant, num_classes=1000, pool_type="gap", dtype=jnp.bfloat16, scan=True)
    images = jax.random.normal(jax.random.key(0), (batch, res, res, 3), jnp.bfloat16)
    labels = jax.random.randint(jax.random.key(1), (batch,), 0, 1000)
    params = jax.jit(lambda: nn_unbox(model.init(jax.random.key(0), images[:1]))["params"])()
    tx = optax.adamw(1e-4)
    opt_state = tx.init(params)
    step = train_step_fn(lambda p, b: model.apply({"params": p}, b[0])[0],
                         lambda logits, b: optax.softmax_cross_entropy_with_integer_labels(logits, b[1]).mean(), tx)
    state = [params, opt_state]

    def run():
        state[0], state[1] = step(state[0], state[1], (images, labels))
        return state[0]

    sec = timed(run)
    d = decode_variant(variant)
    tokens = (res // d["patch_size"][0]) ** 2
    width, depth, mlp = d["width"], d["depth"], d["mlp_dim"]
    per_token = 2 * depth * (4 * width * width + 2 * width * mlp) + 2 * 3 * d["patch_size"][0] ** 2 * width
    attn = 2 * 2 * depth * tokens * tokens * width
    flops = 3 * batch * (tokens * per_token + attn)
    report(f"vit_train[{variant},b={batch},{res}px,bf16]", ms=sec * 1e3, images_per_s=batch / sec,
           **mfu(flops / sec))


def nn_unbox(tree: Any) -> Any:
    import flax.linen as nn

    return nn.unbox(tree)


def lm_flops_per_token(cfg: Any, seq: int) -> float:
    """Forward FLOPs per token: 2 * (matmul params) + attention scores/values (causal halves them)."""
    d, hd = cfg.hidden_size, cfg.dim_per_head
    q = cfg.num_heads * hd
    kv = cfg.kv_heads * hd
    mlp_mats = 3 if cfg.act == "swiglu" else 2
    per_layer = 2 * (d * q + 2 * d * kv + q * d + mlp_mats * d * cfg.mlp_dim)
    attn = 2 * 2 * seq * q / 2
    return cfg.num_layers * (per_layer + attn) + 2 * d * cfg.vocab_size


def bench_lm_train(preset: str = "phi-1.5", batch: int = 8, seq: int = 2048,
                   remat: str = "dots_with_no_batch_dims") -> None:
    from mmjax.models.lm import LM, get_config

    cfg = get_config(preset, dtype="bfloat16", scan_layers=True, remat_policy=remat)
    model = LM(cfg)
    ids = jax.random.randint(jax.random.key(0), (batch, seq), 0, cfg.vocab_size)
    params = jax.jit(lambda: nn_unbox(model.init(jax.random.key(0), ids[:1, :8]))["params"])()
    tx = optax.adamw(1e-4)
    opt_state = tx.init(params)

    def loss(logits, b):
        return optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], b[:, 1:]).mean()

    step = train_step_fn(lambda p, b: model.apply({"params": p}, b), loss, tx)
    state = [params, opt_state]

    def run():
        state[0], state[1] = step(state[0], state[1], ids)
        return state[0]

    sec = timed(run, iters=5)
    flops = 3 * batch * seq * lm_flops_per_token(cfg, seq)
    report(f"lm_train[{preset},b={batch},T={seq},bf16,remat={remat}]", ms=sec * 1e3,
           tokens_per_s=batch * seq / sec, **mfu(flops / sec))


def bench_lm_decode(preset: str = "phi-1.5", batches: tuple[int, ...] = (1, 32), prompt: int = 128,
                    new: int = 256) -> None:
    from mmjax.models.generate import generate
    from mmjax.models.lm import LM, get_config

    cfg = get_config(preset, dtype="bfloat16", param_dtype="bfloat16", scan_layers=True)
    model = LM(cfg)
    params = jax.jit(lambda: nn_unbox(model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32)))["params"])()
    param_bytes = sum(x.nbytes for x in jax.tree.leaves(params))
    for batch in batches:
        ids = jax.random.randint(jax.random.key(batch), (batch, prompt), 0, cfg.vocab_size)
        def gen(n: int, ids: jax.Array = ids) -> jax.Array:
            return generate(model, params, ids, max_new_tokens=n).tokens

        # Decode time = (prefill + n tokens) - (prefill + 1 token): isolates the per-token loop.
        full, one = timed(lambda: gen(new), iters=3), timed(lambda: gen(1), iters=3)
        per_token = (full - one) / (new - 1)
        kv_bytes = 2 * cfg.num_layers * batch * (prompt + new / 2) * cfg.kv_heads * cfg.dim_per_head * 2
        achieved = (param_bytes + kv_bytes) / per_token
        out = dict(ms_per_step=per_token * 1e3, tokens_per_s=batch / per_token, prefill_ms=one * 1e3,
                   bytes_per_step_gb=(param_bytes + kv_bytes) / 1e9, achieved_tb_per_s=achieved / 1e12)
        if "hbm" in RESULTS:
            out["hbm_fraction"] = achieved / (RESULTS["hbm"]["tb_per_s"] * 1e12)
        report(f"lm_decode[{preset},b={batch},prompt={prompt},new={new},bf16]", **out)


def bench_attention(batch: int = 4, seq: int = 4096, heads: int = 8, head_dim: int = 128) -> None:
    """Show-o omni-attention (causal text + full image block) fwd+bwd: fused cuDNN vs XLA."""
    from mmjax.nn.attention import attention_op

    keys = jax.random.split(jax.random.key(0), 3)
    q, k, v = (jax.random.normal(kk, (batch, seq, heads, head_dim), jnp.bfloat16) for kk in keys)
    text = seq // 4
    idx = jnp.arange(seq)
    image = (idx >= text)[:, None] & (idx >= text)[None, :]
    mask = ((idx[:, None] >= idx[None, :]) | image)[None, None]
    flops = 3 * 4 * batch * heads * seq * seq * head_dim * float(mask.mean())
    for backend in ("xla", "cudnn"):
        loss = lambda q, k, v, b=backend: attention_op(q, k, v, mask=mask, is_causal=False, backend=b
                                                       ).astype(jnp.float32).sum()
        f = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
        try:
            sec = timed(lambda f=f: f(q, k, v))
        except Exception as e:  # cuDNN missing or refusing the shape: say so, keep going
            report(f"attention_omni[{backend}]", error=f"{type(e).__name__}: {str(e)[:120]}")
            continue
        report(f"attention_omni[{backend},B={batch},T={seq},H={heads},d={head_dim},fwd+bwd]", ms=sec * 1e3,
               tflops_effective=flops / sec / 1e12)


WORKLOADS = {"matmul": bench_matmul, "hbm": bench_hbm, "vit_train": bench_vit_train, "lm_train": bench_lm_train,
             "lm_decode": bench_lm_decode, "attention": bench_attention}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workloads", nargs="+", choices=sorted(WORKLOADS))
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    print(f"devices: {jax.devices()}  jax {jax.__version__}", flush=True)
    for name in args.workloads:
        WORKLOADS[name]()
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"devices": [str(d) for d in jax.devices()], "jax": jax.__version__, **RESULTS}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
