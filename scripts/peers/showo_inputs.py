"""Show-o's model, token layouts and omni-attention masks, built the way showlab/Show-o builds them.

The rules are those of /work/shared/reference/showo.md (sequence layouts, `create_attention_mask_predict_next` with
rm_pad_in_image, `create_attention_mask_for_mmu`, the cosine masking of T2I image tokens); the code is vectorised
over rows instead of the reference's per-row loops, which gives the same masks and keeps input building short.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from common import IGNORE
from transformers import PhiConfig, PhiForCausalLM

# Show-o (Phi-1.5 + QK-norm) dimensions and its token layout; shared by showo_step and showo_t2i.
MODEL_SPEC: dict[str, Any] = {
    "hidden": 2048, "layers": 24, "heads": 32, "mlp": 8192, "vocab": 58498,
    "max_text_len": 128, "image_tokens": 256,
    "special_ids": {"pad": 50295, "soi": 50296, "eoi": 50297, "t2i": 50300, "mmu": 50301, "bos": 50256,
                    "eos": 50256, "mask": 58497, "image_offset": 50305},
}


@dataclass(frozen=True)
class Ids:
    """Show-o's special token ids; image code c is token `image_offset + c`, and the mask id follows the codes."""

    pad: int
    soi: int
    eoi: int
    t2i: int
    mmu: int
    bos: int
    eos: int
    mask: int
    image_offset: int

    @property
    def codebook(self) -> int:
        return self.mask - self.image_offset


def ids_from_spec(spec: dict[str, Any]) -> Ids:
    """The special ids, checked against each other and the vocabulary so a bad spec fails before the model runs."""
    ids = Ids(**spec["special_ids"])
    if ids.codebook <= 0 or ids.mask >= spec["vocab"]:
        raise ValueError(f"special_ids: need image_offset ({ids.image_offset}) < mask ({ids.mask}) < vocab "
                         f"({spec['vocab']})")
    if min(ids.bos, ids.eos) <= 0:
        raise ValueError(f"special_ids: bos/eos ({ids.bos}/{ids.eos}) must be > 0: text ids are drawn below them")
    return ids


def build_model(spec: dict[str, Any], attention: str, device: torch.device) -> PhiForCausalLM:
    """Random-init Phi-1.5 with Show-o's QK LayerNorm and resized vocabulary, constructed directly on `device`."""
    config = PhiConfig(
        vocab_size=spec["vocab"], hidden_size=spec["hidden"], num_hidden_layers=spec["layers"],
        num_attention_heads=spec["heads"], intermediate_size=spec["mlp"], partial_rotary_factor=0.5,
        qk_layernorm=True, hidden_act="gelu_new", layer_norm_eps=1e-5, resid_pdrop=0.0, embd_pdrop=0.0,
        attention_dropout=0.0, max_position_embeddings=2048, attn_implementation=attention)
    with torch.device(device):
        return PhiForCausalLM(config)


def _text(lengths: list[int], ids: Ids, gen: torch.Generator) -> list[torch.Tensor]:
    """Random text ids (below bos/eos, so never a special token)."""
    return [torch.randint(0, min(ids.bos, ids.eos), (n,), generator=gen) for n in lengths]


def random_lengths(rows: int, low: int, high: int, gen: torch.Generator) -> list[int]:
    """`rows` text lengths uniform in [low, high]: captions and documents of varied length."""
    return torch.randint(low, high + 1, (rows,), generator=gen).tolist()


def t2i_prefix(text_lengths: list[int], ids: Ids, max_text_len: int, gen: torch.Generator) -> torch.Tensor:
    """(B, S+1) `[PAD]*k <|t2i|> <bos> text <eos>`, left-padded so `<|soi|>` always lands at index S+1."""
    rows = []
    for text in _text(text_lengths, ids, gen):
        body = torch.cat([torch.tensor([ids.t2i, ids.bos]), text, torch.tensor([ids.eos])])
        if len(body) > max_text_len + 1:
            raise ValueError(f"T2I text of {len(text)} tokens does not fit max_text_len {max_text_len} (<= S-2)")
        rows.append(torch.cat([torch.full((max_text_len + 1 - len(body),), ids.pad), body]))
    return torch.stack(rows)


def uncond_prefix(rows: int, ids: Ids, max_text_len: int) -> torch.Tensor:
    """(B, S+1) the classifier-free-guidance prompt `[PAD]*(S-2) <|t2i|> <bos> <eos>`."""
    row = torch.cat([torch.full((max_text_len - 2,), ids.pad), torch.tensor([ids.t2i, ids.bos, ids.eos])])
    return row.expand(rows, -1).clone()


def image_block(image_ids: torch.Tensor, ids: Ids) -> torch.Tensor:
    """(B, N+2) `<|soi|> image ids <|eoi|>`."""
    edge = lambda token: torch.full((image_ids.shape[0], 1), token, device=image_ids.device)
    return torch.cat([edge(ids.soi), image_ids, edge(ids.eoi)], dim=1)


def mask_codes(codes: torch.Tensor, ids: Ids, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Show-o's training corruption of (B, N) codes: per image t ~ U(0,1), k = max(1, round(N cos(pi t / 2)))
    random positions become the mask id. Returns (input ids, labels): labels are the true ids at masked
    positions and -100 elsewhere."""
    rows, n = codes.shape
    image_ids = codes + ids.image_offset
    k = (n * torch.cos(torch.rand(rows, generator=gen) * math.pi / 2)).round().clamp(min=1).long()
    ranks = torch.rand(rows, n, generator=gen).argsort(dim=1).argsort(dim=1)  # a random permutation per row
    masked = ranks < k[:, None]
    return torch.where(masked, ids.mask, image_ids), torch.where(masked, image_ids, IGNORE)


def t2i_rows(text_lengths: list[int], codes: torch.Tensor, ids: Ids, max_text_len: int,
             gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """T2I training rows and their labels (only the `<|soi|> img <|eoi|>` part, from S+1 on, enters the loss)."""
    prefix = t2i_prefix(text_lengths, ids, max_text_len, gen)
    inputs, image_labels = mask_codes(codes, ids, gen)
    labels = torch.cat([torch.where(prefix == ids.pad, IGNORE, prefix), image_block(image_labels, ids)], dim=1)
    return torch.cat([prefix, image_block(inputs, ids)], dim=1), labels


def lm_rows(text_lengths: list[int], seq_len: int, ids: Ids, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """LM rows `<bos> text <eos> [PAD]...` right-padded to L (truncated to L when longer); labels -100 on pads."""
    rows = []
    for text in _text(text_lengths, ids, gen):
        body = torch.cat([torch.tensor([ids.bos]), text, torch.tensor([ids.eos])])[:seq_len]
        rows.append(torch.cat([body, torch.full((seq_len - len(body),), ids.pad)]))
    inputs = torch.stack(rows)
    return inputs, torch.where(inputs == ids.pad, IGNORE, inputs)


def mmu_rows(codes: torch.Tensor, text_lengths: list[int], ids: Ids, max_text_len: int,
             gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Caption rows `<|mmu|> <|soi|> img <|eoi|> <bos> text <eos> [PAD]...`, the text part right-padded to S;
    labels -100 on the image prefix and the pads, every text token supervised (caption pre-training)."""
    texts = []
    for text in _text(text_lengths, ids, gen):
        body = torch.cat([torch.tensor([ids.bos]), text, torch.tensor([ids.eos])])
        if len(body) > max_text_len:
            raise ValueError(f"MMU text of {len(text)} tokens does not fit max_text_len {max_text_len} (<= S-2)")
        texts.append(torch.cat([body, torch.full((max_text_len - len(body),), ids.pad)]))
    text = torch.stack(texts)
    prefix = torch.cat([torch.full((len(texts), 1), ids.mmu), image_block(codes + ids.image_offset, ids)], dim=1)
    labels = torch.cat([torch.full_like(prefix, IGNORE), torch.where(text == ids.pad, IGNORE, text)], dim=1)
    return torch.cat([prefix, text], dim=1), labels


def predict_next_mask(seq: torch.Tensor, ids: Ids, rm_pad_in_image: bool) -> torch.Tensor:
    """(B, L, L) bool "query may attend key" for T2I and LM rows (`create_attention_mask_predict_next`).

    Text queries are causal, image queries (`<|soi|>`..`<|eoi|>` inclusive) see every key. With rm_pad_in_image,
    text queries after the last pad lose the keys up to it and image queries lose every pad key.
    """
    _, length = seq.shape
    soi, eoi, pad = seq == ids.soi, seq == ids.eoi, seq == ids.pad
    in_image = (soi.cumsum(1) > eoi.cumsum(1)) | soi | eoi
    causal = torch.ones(length, length, dtype=torch.bool, device=seq.device).tril()
    allowed = torch.where(in_image[:, :, None], True, causal)
    if rm_pad_in_image:
        pos = torch.arange(length, device=seq.device)
        last_pad = torch.where(pad, pos, -1).amax(dim=1)  # -1: the row has no pad
        after_pads = (pos[None, :, None] > last_pad[:, None, None]) & (pos[None, None, :] <= last_pad[:, None, None])
        allowed &= ~(after_pads & ~in_image[:, :, None])
        allowed &= ~(in_image[:, :, None] & pad[:, None, :])
    return allowed


def mmu_mask(seq: torch.Tensor, ids: Ids) -> torch.Tensor:
    """(B, L, L) bool for MMU rows (`create_attention_mask_for_mmu`): causal, plus every query sees the keys up to
    `<|eoi|>`, so `<|mmu|><|soi|> img <|eoi|>` is a bidirectional prefix. The reference takes the eoi position of
    row 0 for every row; here it is taken per row, which is the same for the equal-layout rows built here."""
    _, length = seq.shape
    if not bool((seq == ids.eoi).any(dim=1).all()):
        raise ValueError("MMU rows need an <|eoi|> token in every row")
    eoi_pos = (seq == ids.eoi).int().argmax(dim=1)
    pos = torch.arange(length, device=seq.device)
    causal = pos[None, :, None] >= pos[None, None, :]
    return causal | (pos[None, None, :] <= eoi_pos[:, None, None])


def additive_bias(allowed: torch.Tensor, dtype: torch.dtype, align: int = 16) -> torch.Tensor:
    """(B, 1, L, L) additive attention bias: 0 where allowed, the dtype's min elsewhere (the reference's form).

    The key dimension is stored padded to a multiple of `align` elements and returned as a view of the first L:
    CUDA's memory-efficient SDPA kernel needs 16-element aligned bias rows. Eager SDPA pads a misaligned bias
    itself, but under torch.compile inductor calls the kernel directly (pytorch/pytorch#121943), so the bias is
    built aligned for both.
    """
    rows, length, keys = allowed.shape
    padded = torch.zeros(rows, 1, length, -(-keys // align) * align, dtype=dtype, device=allowed.device)
    return padded[..., :keys].masked_fill_(~allowed[:, None], torch.finfo(dtype).min)
