"""`showo_step`: one Show-o pre-training step (stage-1 mix t2i/lm/mmu = 15/4/10 rows of L = 387), as showlab/Show-o
trains it: Phi-1.5 + QK-norm from a transformers config, the 4-D omni-attention bias passed to the model, MTP + NTP
losses combined with the configured coefficients, bf16 autocast over fp32 master weights, AdamW.
"""

from __future__ import annotations

from typing import Any

import common
import showo_inputs as si
import torch
import torch.nn.functional as F

DEFAULT_SPEC: dict[str, Any] = {
    **si.MODEL_SPEC,
    "rows": {"t2i": 15, "lm": 4, "mmu": 10},
    "seq_len": 387,
    "lr": 1e-4,
    "weight_decay": 0.01,
    "coeffs": {"t2i": 1.0, "lm": 0.1, "mmu": 1.0},
}


def make_batch(spec: dict[str, Any], ids: si.Ids, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Input ids, labels and boolean omni mask of one [t2i; lm; mmu] batch, every row of length L = S + N + 3."""
    s, n, length = spec["max_text_len"], spec["image_tokens"], spec["seq_len"]
    if length != s + n + 3:
        raise ValueError(f"seq_len {length} must be max_text_len + image_tokens + 3 = {s + n + 3} (Show-o's layout)")
    rows = spec["rows"]
    codes = lambda b: torch.randint(0, ids.codebook, (b, n), generator=gen)
    t2i, t2i_labels = si.t2i_rows(si.random_lengths(rows["t2i"], 1, s - 2, gen), codes(rows["t2i"]), ids, s, gen)
    lm, lm_labels = si.lm_rows(si.random_lengths(rows["lm"], length // 4, length, gen), length, ids, gen)
    mmu, mmu_labels = si.mmu_rows(codes(rows["mmu"]), si.random_lengths(rows["mmu"], 1, s - 2, gen), ids, s, gen)
    allowed = torch.cat([si.predict_next_mask(t2i, ids, rm_pad_in_image=True),
                         si.predict_next_mask(lm, ids, rm_pad_in_image=True), si.mmu_mask(mmu, ids)])
    return {"input_ids": torch.cat([t2i, lm, mmu]), "labels": torch.cat([t2i_labels, lm_labels, mmu_labels]),
            "allowed": allowed}


def showo_loss(logits: torch.Tensor, labels: torch.Tensor, rows: dict[str, int], max_text_len: int,
               coeffs: dict[str, float]) -> torch.Tensor:
    """Show-o's loss: MTP cross-entropy over the full vocabulary on the T2I rows from `<|soi|>` on (S+1:), position j
    predicting its own token (no shift); next-token cross-entropy (shifted) on the LM and MMU rows; weighted sum.
    A task with no rows contributes nothing."""
    ce = lambda lg, lb: F.cross_entropy(lg.flatten(0, 1).float(), lb.flatten(), ignore_index=common.IGNORE)
    t2i, lm = rows["t2i"], rows["t2i"] + rows["lm"]
    terms = {
        "t2i": lambda: ce(logits[:t2i, max_text_len + 1:], labels[:t2i, max_text_len + 1:]),
        "lm": lambda: ce(logits[t2i:lm, :-1], labels[t2i:lm, 1:]),
        "mmu": lambda: ce(logits[lm:, :-1], labels[lm:, 1:]),
    }
    return sum(coeffs[task] * term() for task, term in terms.items() if rows[task] > 0)


def run(spec: dict[str, Any], bench: common.Bench) -> dict[str, Any]:
    common.setup(bench, spec["seed"])
    ids = si.ids_from_spec(spec)
    gen = torch.Generator().manual_seed(spec["seed"])
    batch = {k: v.to(bench.device) for k, v in make_batch(spec, ids, gen).items()}
    bias = si.additive_bias(batch["allowed"], torch.bfloat16)  # the dtype attention computes in under autocast
    model = si.build_model(spec, spec["attention"], bench.device).train()
    optimizer = common.adamw(model.parameters(), bench.device, spec["lr"], spec["weight_decay"])

    def loss_fn() -> torch.Tensor:
        with common.autocast(bench.device):
            logits = model(input_ids=batch["input_ids"], attention_mask=bias, use_cache=False).logits
            return showo_loss(logits, batch["labels"], spec["rows"], spec["max_text_len"], spec["coeffs"])

    times, losses = common.time_training(loss_fn, optimizer, bench, spec["compile_mode"])
    rows = sum(spec["rows"].values())
    return common.result(
        "showo_step", bench, times, attention=model.config._attn_implementation, dtype="bf16-autocast/fp32-master",
        spec=spec, tokens=rows * spec["seq_len"], rows=rows,
        nonpad_tokens=int((batch["input_ids"] != ids.pad).sum()), loss=losses[-1], losses=losses)
