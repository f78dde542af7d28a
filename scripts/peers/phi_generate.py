"""`phi_generate`: Phi-1.5 greedy decoding with transformers' `generate`, bf16 weights, exactly `new_tokens` new
tokens per row (min = max new tokens, so eos never stops a row early). With Show-o's vocabulary, `qk_layernorm` and
the MMU prompt's length it is also the peer of `mmu_decode` (Show-o answering about an image: the image tokens are
ordinary prompt tokens to the LM).

Fastest HF setup: with --compile 1 a static KV cache (`cache_implementation="static"`), for which generate compiles
the decoding forward itself on a GPU (torch.compile, mode "reduce-overhead": CUDA graphs); if that fails, the
dynamic cache in eager mode is timed instead and the record says so (`generate_mode`, `fallback_reason`).
--compile 0 times the dynamic cache eagerly.
"""

from __future__ import annotations

from typing import Any

import common
import torch
from transformers import PhiConfig, PhiForCausalLM

DEFAULT_SPEC: dict[str, Any] = {
    "batch": 1, "prompt_len": 128, "new_tokens": 256,
    "hidden": 2048, "layers": 24, "heads": 32, "mlp": 8192, "vocab": 51200,
    "qk_layernorm": False,  # True: Show-o's Phi (LayerNorm on q and k per head), for the `mmu_decode` peer
}
STATIC, DYNAMIC = "static_cache", "dynamic_cache"


def build_model(spec: dict[str, Any], device: torch.device) -> PhiForCausalLM:
    config = PhiConfig(
        vocab_size=spec["vocab"], hidden_size=spec["hidden"], num_hidden_layers=spec["layers"],
        num_attention_heads=spec["heads"], intermediate_size=spec["mlp"], partial_rotary_factor=0.5,
        qk_layernorm=spec["qk_layernorm"],
        hidden_act="gelu_new", layer_norm_eps=1e-5, max_position_embeddings=2048,
        attn_implementation=spec["attention"], bos_token_id=spec["vocab"] - 1, eos_token_id=spec["vocab"] - 1,
        pad_token_id=spec["vocab"] - 1)
    with torch.device(device):
        return PhiForCausalLM(config).to(torch.bfloat16).eval()


def run(spec: dict[str, Any], bench: common.Bench) -> dict[str, Any]:
    common.setup(bench, spec["seed"])
    batch, new = spec["batch"], spec["new_tokens"]
    gen = torch.Generator().manual_seed(spec["seed"])
    prompt = torch.randint(0, spec["vocab"] - 1, (batch, spec["prompt_len"]), generator=gen).to(bench.device)
    model = build_model(spec, bench.device)
    settings = {"input_ids": prompt, "attention_mask": torch.ones_like(prompt), "do_sample": False,
                "min_new_tokens": new, "max_new_tokens": new}

    def call_with(mode: str) -> Any:
        extra = ({"cache_implementation": "static"} if mode == STATIC else {"disable_compile": True})

        @torch.inference_mode()
        def call() -> torch.Tensor:
            out = model.generate(**settings, **extra)
            if out.shape != (batch, spec["prompt_len"] + new):
                raise RuntimeError(f"generate returned {tuple(out.shape)}, expected {(batch, prompt.shape[1] + new)}")
            return out

        return call

    mode, fallback_reason = (STATIC if bench.compile else DYNAMIC), None
    common.reset_peak_memory(bench.device)
    try:
        times, _ = common.time_steps(call_with(mode), bench)
    except Exception as error:  # any failure of the compiled static path: time the eager dynamic one instead
        if mode == DYNAMIC:
            raise
        mode, fallback_reason = DYNAMIC, f"{type(error).__name__}: {error}"[:500]
        torch.compiler.reset()
        times, _ = common.time_steps(call_with(mode), bench)
    record = common.result(
        "phi_generate", bench, times, attention=model.config._attn_implementation, dtype="bf16", spec=spec,
        new_tokens=batch * new, prompt_tokens=batch * spec["prompt_len"], generate_mode=mode)
    record["compiled"] = mode == STATIC and bench.device.type == "cuda"  # generate auto-compiles on GPUs only
    if fallback_reason:
        record["fallback_reason"] = fallback_reason
    return record
