"""Generation workloads: Phi-1.5 greedy decoding (`lm_decode`), Show-o answers about an image (`mmu_decode`) and
Show-o text-to-image sampling (`t2i_256`), with random weights (speed does not depend on their values).

Decoding is judged by bandwidth: a batch-1 step must read every weight once, so the fraction of the measured HBM
bandwidth that (weights + KV cache read) / step time reaches is the figure of merit. T2I is compute bound and is
judged by MFU on the forward FLOPs it actually runs and by images/s against the reference's sampling loop.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.bench import flops
from mmjax.bench.measure import timed, utilisation


def _random_params(model: nn.Module, example: jax.Array, dtype: Any) -> Any:
    init = jax.jit(lambda: jax.tree.map(lambda x: x.astype(dtype), nn.unbox(
        model.init(jax.random.key(0), example)["params"])))
    return init()


def lm_stack(cfg: Any) -> flops.Stack:
    return flops.Stack(layers=cfg.num_layers, width=cfg.hidden_size, mlp=cfg.mlp_dim,
                       q_width=cfg.num_heads * cfg.dim_per_head, kv_width=cfg.kv_heads * cfg.dim_per_head,
                       mlp_matrices=3 if cfg.act == "swiglu" else 2, head=cfg.vocab_size)


def lm_decode(batch: int, *, preset: str = "phi-1.5", prompt: int = 128, new: int = 256, hbm: float | None = None,
              iters: int = 5, steps_per_iteration: tuple[int, ...] = (1, 4)) -> dict[str, Any]:
    """Greedy decoding with bf16 weights; `ms` is one whole `generate` call (prefill + `new` tokens), with the
    fastest of the `steps_per_iteration` settings tried (each one's per-token time is reported too)."""
    from mmjax.models.generate import generate
    from mmjax.models.lm import LM, get_config

    cfg = get_config(preset, dtype="bfloat16", param_dtype="bfloat16")
    model = LM(cfg)
    params = _random_params(model, jnp.zeros((1, 8), jnp.int32), jnp.bfloat16)
    ids = jax.random.randint(jax.random.key(batch), (batch, prompt), 0, cfg.vocab_size)
    weight_bytes = sum(x.nbytes for x in jax.tree.leaves(params))
    kv_bytes = 2 * cfg.num_layers * batch * (prompt + new / 2) * cfg.kv_heads * cfg.dim_per_head * 2
    tried = {}
    for k in steps_per_iteration:
        gen = lambda n, k=k: generate(model, params, ids, max_new_tokens=n, steps_per_iteration=k).tokens
        full, _ = timed(lambda gen=gen: gen(new), warmup=1, iters=iters)
        one, _ = timed(lambda gen=gen: gen(1), warmup=1, iters=iters)
        tried[k] = (full, one, (full - one) / (new - 1))  # per token: the decode loop alone, prefill subtracted
    best = min(tried, key=lambda k: tried[k][0])
    full, one, per_token = tried[best]
    out = {"ms": full * 1e3, "tokens_per_s": batch * new / full, "ms_per_token_step": per_token * 1e3,
           "prefill_ms": one * 1e3, "bytes_per_step_gb": (weight_bytes + kv_bytes) / 1e9,
           "achieved_tb_s": (weight_bytes + kv_bytes) / per_token / 1e12, "steps_per_iteration": best,
           "ms_per_token_step_by_steps_per_iteration": {k: v[2] * 1e3 for k, v in tried.items()}}
    if hbm:
        out["hbm_fraction"] = (weight_bytes + kv_bytes) / per_token / hbm
    peer = {"batch": batch, "prompt_len": prompt, "new_tokens": new, "hidden": cfg.hidden_size,
            "layers": cfg.num_layers, "heads": cfg.num_heads, "mlp": cfg.mlp_dim, "vocab": cfg.vocab_size}
    return {"result": out, "peer": ("phi_generate", peer)}


def _showo(res: int, preset: str = "phi-1.5") -> tuple[Any, Any, int]:
    """Show-o 1.3B (Phi-1.5 + QK-norm, the release's vocabulary) with bf16 weights, and its image tokens."""
    from mmjax.models.showo import Showo, showo_lm_config
    from mmjax.models.showo_layout import ShowoVocab

    vocab = ShowoVocab()
    cfg = showo_lm_config(vocab, preset, dtype="bfloat16", param_dtype="bfloat16", scan_layers=False,
                          vocab_pad_multiple=128)
    model = Showo(cfg, vocab)
    params = _random_params(model, jnp.zeros((1, 8), jnp.int32), jnp.bfloat16)
    return model, params, (res // 16) ** 2


def t2i(batch: int, *, res: int = 256, steps: int = 12, guidance: float = 1.75, max_text_len: int = 128,
        preset: str = "phi-1.5", ceiling: float | None = None, iters: int = 3) -> dict[str, Any]:
    """MaskGIT sampling with classifier-free guidance (cond and uncond rows in one forward per step)."""
    from mmjax.models import showo as showo_model

    model, params, n = _showo(res, preset)
    text = jax.random.randint(jax.random.key(1), (batch, max_text_len), 0, 50000)
    lens = jnp.full((batch,), max_text_len // 2, jnp.int32)
    canvas = showo_model.blank_canvas(batch, n, model.vocab)
    run = lambda: showo_model.t2i_generate(model, params, text, lens, canvas, jax.random.key(2),
                                           max_text_len=max_text_len, num_steps=steps,
                                           guidance_scale=guidance).tokens
    sec, _ = timed(run, warmup=1, iters=iters)
    cfg = model.cfg
    stack = dataclasses.replace(lm_stack(cfg), head=0)
    rows = 2 * batch if guidance else batch
    seq = max_text_len + n + 3
    ran = showo_model.t2i_forward_flops(stack, rows, max_text_len, n, model.vocab.codebook_size, steps)
    out = {"ms": sec * 1e3, "images_per_s": batch / sec, **utilisation(ran, sec, ceiling),
           "reference_loop_tflop_per_image": steps * flops.forward(lm_stack(cfg), 2, seq) / 1e12}
    peer = {"batch": batch, "steps": steps, "guidance_scale": guidance, "max_text_len": max_text_len,
            "image_tokens": n, "codebook": model.vocab.codebook_size}
    return {"result": out, "peer": ("showo_t2i", peer)}


def mmu_decode(batch: int, *, res: int = 256, question_len: int = 24, new: int = 100, preset: str = "phi-1.5",
               iters: int = 5) -> dict[str, Any]:
    """Show-o answering about a tokenized image: `<|mmu|><|soi|> img <|eoi|> <bos> question`, greedy, KV cache."""
    from mmjax.models import showo as showo_model

    model, params, n = _showo(res, preset)
    codes = jax.random.randint(jax.random.key(1), (batch, n), 0, model.vocab.codebook_size)
    question = jax.random.randint(jax.random.key(2), (batch, question_len), 0, 50000)
    qlen = jnp.full((batch,), question_len, jnp.int32)
    run = lambda: showo_model.mmu_generate(model, params, codes, question, qlen, max_new_tokens=new,
                                           stop_tokens=(-1,)).tokens
    sec, _ = timed(run, warmup=1, iters=iters)
    prompt = n + 4 + question_len
    cfg = model.cfg
    peer = {"batch": batch, "prompt_len": prompt, "new_tokens": new, "hidden": cfg.hidden_size,
            "layers": cfg.num_layers, "heads": cfg.num_heads, "mlp": cfg.mlp_dim, "vocab": model.vocab.vocab_size,
            "qk_layernorm": True}
    return {"result": {"ms": sec * 1e3, "tokens_per_s": batch * new / sec, "prompt_tokens": prompt},
            "peer": ("phi_generate", peer)}
