"""`showo_t2i`: Show-o text-to-image sampling as the reference does it (MaskGIT decoding, showo.md "T2I sampling").

Every one of `steps` steps re-runs the FULL sequence (prompt + `<|soi|> img <|eoi|>`) through the model, there is
no KV cache; with guidance the conditional and unconditional rows run as one [cond; uncond] batch. The image
positions' logits, cut to the codebook columns, give a softmax to sample from; the cosine schedule is computed in
float32 (the reference's `torch.tensor(ratio)`), confidences are Gumbel-annealed with a temperature that compounds
across steps, and the least confident positions are re-masked.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import common
import showo_inputs as si
import torch

DEFAULT_SPEC: dict[str, Any] = {**si.MODEL_SPEC, "batch": 32, "steps": 12, "guidance_scale": 1.75, "codebook": 8192}


def mask_schedule(step: int, steps: int, n: int, device: torch.device) -> torch.Tensor:
    """floor(N cos(pi/2 (s+1)/T)) in float32: at ratio 2/3 float32 gives 127 of 256 where float64 gives 128."""
    ratio = torch.tensor((step + 1) / steps, dtype=torch.float32, device=device)
    return (n * torch.cos(ratio * math.pi * 0.5)).floor()


def gumbel(shape: torch.Size, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    """Standard Gumbel noise -log(-log(u)), both logs guarded against 0."""
    u = torch.rand(shape, generator=gen, device=device)
    return -torch.log((-torch.log(u.clamp(min=1e-20))).clamp(min=1e-20))


def sample(probs_fn: Callable[[torch.Tensor], torch.Tensor], prefix: torch.Tensor, batch: int, ids: si.Ids,
           n: int, steps: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """MaskGIT decoding of `batch` images. `prefix` holds the (rows, S+1) prompts (rows = 2 * batch with guidance),
    `probs_fn` maps the full (rows, L) ids to (batch, N, codebook) probabilities with guidance applied.
    Returns (codes (batch, N), tokens still masked after each step (batch, steps))."""
    device = prefix.device
    image = torch.full((batch, n), ids.mask, device=device)
    still_masked = torch.zeros(batch, steps, dtype=torch.long, device=device)
    temperature, reps = 1.0, prefix.shape[0] // batch
    sampled = image
    for step in range(steps):
        probs = probs_fn(torch.cat([prefix, si.image_block(image.repeat(reps, 1), ids)], dim=1))
        sampled = torch.multinomial(probs.flatten(0, 1), 1, generator=gen).view(batch, n)
        unknown = image == ids.mask
        sampled = torch.where(unknown, sampled, image - ids.image_offset)
        chosen = probs.gather(-1, sampled[..., None])[..., 0]
        chosen = torch.where(unknown, chosen, torch.finfo(chosen.dtype).max)
        ratio = (step + 1) / steps
        mask_len = torch.minimum(unknown.sum(dim=1, keepdim=True) - 1, mask_schedule(step, steps, n, device).long())
        mask_len = mask_len.clamp(min=1)
        temperature *= 1.0 - ratio
        confidence = torch.log(chosen.clamp(min=1e-20)) + temperature * gumbel(chosen.shape, gen, device)
        cut_off = confidence.sort(dim=-1).values.gather(1, mask_len)
        masking = confidence < cut_off
        image = torch.where(masking, ids.mask, sampled + ids.image_offset)
        still_masked[:, step] = masking.sum(dim=1)
    return sampled, still_masked


def run(spec: dict[str, Any], bench: common.Bench) -> dict[str, Any]:
    common.setup(bench, spec["seed"])
    ids = si.ids_from_spec(spec)
    if spec["codebook"] != ids.codebook:
        raise ValueError(f"codebook {spec['codebook']} != mask - image_offset = {ids.codebook} (special_ids)")
    batch, n, s, w = spec["batch"], spec["image_tokens"], spec["max_text_len"], spec["guidance_scale"]
    gen = torch.Generator().manual_seed(spec["seed"])
    prefix = si.t2i_prefix(si.random_lengths(batch, 1, s - 2, gen), ids, s, gen)
    if w > 0:
        prefix = torch.cat([prefix, si.uncond_prefix(batch, ids, s)])
    prefix = prefix.to(bench.device)
    # The mask depends on the prompt and the soi/eoi positions only, so it is built once, as the reference does.
    layout = torch.cat([prefix, si.image_block(torch.full((prefix.shape[0], n), ids.mask, device=bench.device), ids)],
                       dim=1)
    bias = si.additive_bias(si.predict_next_mask(layout, ids, rm_pad_in_image=True), torch.bfloat16)
    model = si.build_model(spec, spec["attention"], bench.device).to(torch.bfloat16).eval()

    def probs_fn(seq: torch.Tensor) -> torch.Tensor:
        # logits_to_keep=N+1 runs lm_head on the image positions and <|eoi|> only: the same values as the
        # reference's full logits sliced afterwards, without the wasted vocabulary matmul over the prompt.
        logits = model(input_ids=seq, attention_mask=bias, use_cache=False, logits_to_keep=n + 1).logits
        logits = logits[:, :n, ids.image_offset:ids.mask].float()  # the reference's model casts logits to fp32
        if w > 0:
            cond, uncond = logits.chunk(2)
            logits = (1 + w) * cond - w * uncond
        return torch.softmax(logits, dim=-1)

    probs_fn = common.maybe_compile(probs_fn, bench, spec["compile_mode"])
    sample_gen = torch.Generator(device=bench.device).manual_seed(spec["seed"])

    @torch.inference_mode()
    def call() -> tuple[torch.Tensor, torch.Tensor]:
        return sample(probs_fn, prefix, batch, ids, n, spec["steps"], sample_gen)

    common.reset_peak_memory(bench.device)
    times, (codes, still_masked) = common.time_steps(call, bench)
    return common.result(
        "showo_t2i", bench, times, attention=model.config._attn_implementation, dtype="bf16", spec=spec,
        images=batch, forward_rows=prefix.shape[0], seq_len=layout.shape[1], steps=spec["steps"],
        masked_per_step=still_masked[0].tolist(), codes_in_range=bool(((codes >= 0) & (codes < ids.codebook)).all()))
