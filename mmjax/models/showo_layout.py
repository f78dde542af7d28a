"""Show-o's vocabulary layout and prompt layouts, as fixed-shape array code.

Vocabulary: the text tokenizer's ids first, then the special tokens in a fixed order, then one id per image
code, then a single mask token. All numbers derive from three config values (text vocab size, special-token
list, codebook size); the defaults are Show-o's (Phi-1.5 tokenizer, 10 specials, 8192 codes -> image ids
50305 + c, mask 58497, vocab 58498), so released Show-o weights load unchanged.

Layouts (S = max text length, N = image tokens; see showo.md):
  T2I    [PAD]*k <|t2i|> <bos> text <eos> <|soi|> img*N <|eoi|>     text part left-padded to S+1, soi at S+1
  MMU    <|mmu|> <|soi|> img*N <|eoi|> <bos> text <eos> [PAD]...     text part right-padded to S
  LM     <bos> text <eos> [PAD]...                                   right-padded to L
With S=128, N=256 all three rows are L = S + N + 3 = 387, so they stack into one batch.

Text arrives tokenized, as a padded (B, Lt) array plus (B,) lengths (tokens without bos/eos). Every builder
works on those arrays with gathers over static shapes, so it runs inside jit on device, next to the masking
and the model, instead of in Python per example as the reference does. Image inputs are vocabulary ids
(`vocab.image_token(codes)`), so a canvas that already holds mask ids (inpainting, extrapolation, generation)
goes through unchanged.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp

Array = jax.Array

SHOWO_SPECIAL_TOKENS: tuple[str, ...] = (
    "[PAD]", "<|soi|>", "<|eoi|>", "<|sov|>", "<|eov|>",
    "<|t2i|>", "<|mmu|>", "<|t2v|>", "<|v2v|>", "<|lvg|>",
)
_REQUIRED_SPECIALS = ("[PAD]", "<|soi|>", "<|eoi|>", "<|t2i|>", "<|mmu|>")


@dataclasses.dataclass(frozen=True)
class ShowoVocab:
    """Show-o's id layout, derived from the config numbers rather than hard-coded.

    Fields mirror the config; ids are properties so they can never disagree with each other.
    `bos_id`/`eos_id` default to Phi-1.5's `<|endoftext|>` (50256 for both).
    """

    text_vocab_size: int = 50295
    special_tokens: tuple[str, ...] = SHOWO_SPECIAL_TOKENS
    codebook_size: int = 8192
    bos_id: int = 50256
    eos_id: int = 50256
    ignore_id: int = -100

    def __post_init__(self) -> None:
        object.__setattr__(self, "special_tokens", tuple(self.special_tokens))
        if self.text_vocab_size <= 0 or self.codebook_size <= 0:
            raise ValueError(f"text_vocab_size ({self.text_vocab_size}) and codebook_size "
                             f"({self.codebook_size}) must be positive")
        if len(set(self.special_tokens)) != len(self.special_tokens):
            raise ValueError(f"special_tokens has duplicates: {self.special_tokens}")
        missing = [s for s in _REQUIRED_SPECIALS if s not in self.special_tokens]
        if missing:
            raise ValueError(f"special_tokens lacks {missing}; Show-o layouts need "
                             f"{list(_REQUIRED_SPECIALS)}")
        for name in ("bos_id", "eos_id"):
            if not 0 <= getattr(self, name) < self.text_vocab_size:
                raise ValueError(f"{name}={getattr(self, name)} is not a text token "
                                 f"(< text_vocab_size={self.text_vocab_size})")

    def token_id(self, name: str) -> int:
        """Id of a special token by its string, e.g. `token_id("<|t2i|>")`."""
        if name not in self.special_tokens:
            raise KeyError(f"unknown special token {name!r}; known: {list(self.special_tokens)}")
        return self.text_vocab_size + self.special_tokens.index(name)

    @property
    def pad_id(self) -> int:
        """[PAD] (50295): left-pads T2I text, right-pads MMU / LM rows."""
        return self.token_id("[PAD]")

    @property
    def soi_id(self) -> int:
        """<|soi|> (50296): opens an image span."""
        return self.token_id("<|soi|>")

    @property
    def eoi_id(self) -> int:
        """<|eoi|> (50297): closes an image span."""
        return self.token_id("<|eoi|>")

    @property
    def t2i_id(self) -> int:
        """<|t2i|> (50300): task token of text-to-image rows."""
        return self.token_id("<|t2i|>")

    @property
    def mmu_id(self) -> int:
        """<|mmu|> (50301): task token of multimodal-understanding rows."""
        return self.token_id("<|mmu|>")

    @property
    def image_offset(self) -> int:
        """Id of image code 0 (50305 for Show-o): text ids, then the specials, then the codebook."""
        return self.text_vocab_size + len(self.special_tokens)

    @property
    def mask_id(self) -> int:
        """The [MASK] token that MaskGIT training and sampling put at unknown image positions (58497)."""
        return self.image_offset + self.codebook_size

    @property
    def vocab_size(self) -> int:
        """Rows of the embedding and of lm_head (58498)."""
        return self.mask_id + 1

    def image_token(self, codes: Array) -> Array:
        """Image codes (0..codebook_size-1) -> vocabulary ids."""
        return jnp.asarray(codes) + self.image_offset

    def image_code(self, ids: Array) -> Array:
        """Vocabulary ids -> image codes (meaningless for non-image ids; see `is_image_token`)."""
        return jnp.asarray(ids) - self.image_offset

    def is_image_token(self, ids: Array) -> Array:
        """True for ids of image codes (not for the mask token)."""
        ids = jnp.asarray(ids)
        return (ids >= self.image_offset) & (ids < self.mask_id)


def _const(b: int, value: int) -> tuple[Array, Array]:
    """A one-token segment (every row holds `value`) for `pack_segments`."""
    return jnp.full((b, 1), value, jnp.int32), jnp.ones((b,), jnp.int32)


def pack_segments(segments: Sequence[tuple[Array, Array]], total: int, fill: int, *, right_align: bool) -> Array:
    """Concatenates the valid prefix of each segment per row, then pads to `total` with `fill`.

    segments: (values (B, Ls), lengths (B,)). Rows are left-aligned (right-padded) or
    right-aligned (left-padded). Position j takes the first segment whose end is past j; a static loop over
    the few segments, a single gather, no loop over the batch. Lengths are clipped to their segment's width;
    callers clip them further so the content fits in `total`.
    """
    widths = [v.shape[1] for v, _ in segments]
    buf = jnp.concatenate([v.astype(jnp.int32) for v, _ in segments], axis=1)
    offsets = jnp.asarray([sum(widths[:i]) for i in range(len(widths))], jnp.int32)
    lens = [jnp.clip(jnp.asarray(n, jnp.int32), 0, width) for (_, n), width in zip(segments, widths)]
    lens = jnp.stack(lens, axis=1)  # (B, S), each clipped to its segment's width
    ends = jnp.cumsum(lens, axis=1)
    starts = ends - lens
    j = jnp.arange(total, dtype=jnp.int32)[None, :]
    if right_align:
        j = j - (total - ends[:, -1:])
    seg = (j[:, :, None] >= ends[:, None, :]).sum(-1)  # (B, total): index of the segment holding j
    valid = (j >= 0) & (seg < len(segments))
    seg = jnp.minimum(seg, len(segments) - 1)
    src = offsets[seg] + j - jnp.take_along_axis(starts, seg, axis=1)
    src = jnp.clip(src, 0, buf.shape[1] - 1)
    return jnp.where(valid, jnp.take_along_axis(buf, src, axis=1), fill)


def sample_condition_dropout(rng: Array, batch: int, prob: float) -> Array:
    """(B,) bool: which T2I rows drop their caption (classifier-free guidance training), as `rand < prob`."""
    return jax.random.uniform(rng, (batch,)) < prob


def t2i_layout(text_ids: Array, text_len: Array, image_ids: Array, vocab: ShowoVocab, max_text_len: int,
               image_mask: Array | None = None, drop: Array | None = None) -> tuple[Array, Array]:
    """T2I rows `[PAD]*k <|t2i|> <bos> text <eos> <|soi|> img <|eoi|>` of length S + N + 3, and their labels.

    The text part is left-padded to S+1 so `<|soi|>` always sits at index S+1 (the MTP loss reads
    `logits[:, S+1:]`). Too-long text keeps the first S tokens of `<|t2i|> <bos> text` plus `<eos>`.
    `drop` (B,) bool replaces the text by nothing (`<|t2i|><bos><eos>`, left-padded): condition dropout.

    `image_mask` (B, N) bool marks the positions MaskGIT masked: inputs there become `mask_id`, labels there
    are the true image ids, -100 elsewhere; `<|soi|>`/`<|eoi|>` keep their own ids as labels and text labels
    are the text ids (pads -100), as in the reference. Without `image_mask` the image part is used as given
    (generation, inpainting) and its labels are all -100.
    """
    b = text_ids.shape[0]
    s = max_text_len
    n = jnp.minimum(jnp.asarray(text_len, jnp.int32), s - 2)
    if drop is not None:
        n = jnp.where(drop, 0, n)
    segments = [_const(b, vocab.t2i_id), _const(b, vocab.bos_id), (text_ids, n), _const(b, vocab.eos_id)]
    prefix = pack_segments(segments, s + 1, vocab.pad_id, right_align=True)
    prefix_labels = jnp.where(prefix == vocab.pad_id, vocab.ignore_id, prefix)
    image_ids = jnp.asarray(image_ids, jnp.int32)
    if image_mask is None:
        img_in, img_labels = image_ids, jnp.full_like(image_ids, vocab.ignore_id)
    else:
        img_in = jnp.where(image_mask, vocab.mask_id, image_ids)
        img_labels = jnp.where(image_mask, image_ids, vocab.ignore_id)
    soi, eoi = jnp.full((b, 1), vocab.soi_id, jnp.int32), jnp.full((b, 1), vocab.eoi_id, jnp.int32)
    inputs = jnp.concatenate([prefix, soi, img_in, eoi], axis=1)
    labels = jnp.concatenate([prefix_labels, soi, img_labels, eoi], axis=1)
    return inputs, labels


def t2i_uncond_layout(image_ids: Array, vocab: ShowoVocab, max_text_len: int) -> Array:
    """The CFG unconditional prompt `[PAD]*(S-2) <|t2i|> <bos> <eos> <|soi|> img <|eoi|>` (the empty
    caption)."""
    b = image_ids.shape[0]
    empty = jnp.zeros((b, 1), jnp.int32)
    inputs, _ = t2i_layout(empty, jnp.zeros((b,), jnp.int32), image_ids, vocab, max_text_len)
    return inputs


def _image_prefix(image_ids: Array, vocab: ShowoVocab) -> Array:
    """`<|mmu|> <|soi|> img <|eoi|>`, the bidirectional prefix of every MMU row."""
    b = image_ids.shape[0]
    tok = lambda i: jnp.full((b, 1), i, jnp.int32)
    return jnp.concatenate([tok(vocab.mmu_id), tok(vocab.soi_id), jnp.asarray(image_ids, jnp.int32),
                            tok(vocab.eoi_id)], axis=1)


def mmu_layout(image_ids: Array, text_ids: Array, text_len: Array, vocab: ShowoVocab,
               max_text_len: int) -> tuple[Array, Array]:
    """Caption pre-training rows `<|mmu|><|soi|> img <|eoi|> <bos> text <eos> [PAD]...` of length N + 3 + S.

    The text part is right-padded to S; too-long text becomes `<bos> text[:S-2] <eos>`. Labels are -100 on the
    image prefix and on pads; all text (bos included) is supervised. (The reference prepends `eos` where the
    text lacks a bos; for Phi's tokenizer the two are the same id, and mmjax uses `bos_id`.)
    """
    b = text_ids.shape[0]
    n = jnp.minimum(jnp.asarray(text_len, jnp.int32), max_text_len - 2)
    segments = [_const(b, vocab.bos_id), (text_ids, n), _const(b, vocab.eos_id)]
    text = pack_segments(segments, max_text_len, vocab.pad_id, right_align=False)
    prefix = _image_prefix(image_ids, vocab)
    labels = jnp.concatenate([jnp.full_like(prefix, vocab.ignore_id),
                              jnp.where(text == vocab.pad_id, vocab.ignore_id, text)], axis=1)
    return jnp.concatenate([prefix, text], axis=1), labels


def mmu_instruct_layout(image_ids: Array, conv_ids: Array, conv_is_target: Array, conv_len: Array,
                        vocab: ShowoVocab, max_text_len: int) -> tuple[Array, Array]:
    """LLaVA-data tuning rows `<|mmu|><|soi|> img <|eoi|>` + conversation, right-padded to N + 3 + S.

    `conv_ids` is the tokenized phi1.5-template conversation ("USER: q ASSISTANT: a<|endoftext|>..."; no bos)
    and `conv_is_target` (B, Lc) bool marks the answer tokens to supervise; instruction spans, the image
    prefix and pads get -100. Conversations longer than S are cut at S (no eos added), as the reference's
    collate does.
    """
    n = jnp.minimum(jnp.asarray(conv_len, jnp.int32), max_text_len)
    conv_labels = jnp.where(conv_is_target, conv_ids, vocab.ignore_id)
    text = pack_segments([(conv_ids, n)], max_text_len, vocab.pad_id, right_align=False)
    text_labels = pack_segments([(conv_labels, n)], max_text_len, vocab.ignore_id, right_align=False)
    prefix = _image_prefix(image_ids, vocab)
    labels = jnp.concatenate([jnp.full_like(prefix, vocab.ignore_id), text_labels], axis=1)
    return jnp.concatenate([prefix, text], axis=1), labels


def mmu_question_text(question: str) -> str:
    """The string Show-o tokenizes after `<bos>` for an MMU inference prompt."""
    return "USER: \n" + question + " ASSISTANT:"


def mmu_prompt_layout(image_ids: Array, question_ids: Array, question_len: Array, vocab: ShowoVocab) -> Array:
    """MMU inference prompts `<|mmu|><|soi|> img <|eoi|> <bos> question`, left-padded to N + 4 + Lq.

    `question_ids` holds the tokens of `mmu_question_text(q)`. Left padding makes every row end at the same
    index, so batched greedy decoding appends at one position; a row that needs no padding is exactly the
    reference prompt. Build its mask with `showo_mmu_mask(ids, eoi_id=..., pad_id=vocab.pad_id)` (per-row eoi,
    pads hidden).
    """
    b, lq = question_ids.shape
    total = image_ids.shape[1] + 4 + lq
    prefix = _image_prefix(image_ids, vocab)
    full = jnp.full((b,), prefix.shape[1], jnp.int32)
    segments = [(prefix, full), _const(b, vocab.bos_id), (question_ids, jnp.asarray(question_len, jnp.int32))]
    return pack_segments(segments, total, vocab.pad_id, right_align=True)


def lm_layout(text_ids: Array, text_len: Array, vocab: ShowoVocab, seq_len: int) -> tuple[Array, Array]:
    """Language-modelling rows `<bos> text <eos> [PAD]...` of length L, labels -100 on pads. No task token.

    Too-long text keeps `<bos> text[:L-1]` and drops the eos, as the reference does for text.
    """
    b = text_ids.shape[0]
    text_len = jnp.minimum(jnp.asarray(text_len, jnp.int32), text_ids.shape[1])
    n = jnp.minimum(text_len, seq_len - 1)
    eos_len = (text_len + 2 <= seq_len).astype(jnp.int32)
    segments = [_const(b, vocab.bos_id), (text_ids, n), (jnp.full((b, 1), vocab.eos_id), eos_len)]
    inputs = pack_segments(segments, seq_len, vocab.pad_id, right_align=False)
    used = 1 + n + eos_len
    labels = jnp.where(jnp.arange(seq_len)[None, :] < used[:, None], inputs, vocab.ignore_id)
    return inputs, labels


def inpainting_token_mask(mask_image: Array, grid: int) -> Array:
    """A (B, H, W) pixel mask in [0, 1] (1 = repaint) -> (B, grid*grid) bool token mask.

    Resized bicubically to the token grid and thresholded at 0.5, as the reference does. The reference uses
    torch's bicubic (a = -0.75, no antialias); `jax.image.resize` uses a = -0.5, also without antialias here,
    so a token on a soft mask edge may flip. Masks drawn on the token grid are unaffected.
    """
    b = mask_image.shape[0]
    small = jax.image.resize(mask_image.astype(jnp.float32), (b, grid, grid), "cubic", antialias=False)
    return (small >= 0.5).reshape(b, grid * grid)


def inpainting_image_ids(image_ids: Array, token_mask: Array, vocab: ShowoVocab) -> Array:
    """Known tokens kept, positions to repaint set to `mask_id`; feed the result to `t2i_layout`."""
    return jnp.where(token_mask, vocab.mask_id, image_ids)


_DIRECTIONS = ("left", "right", "up", "down")


def _shift(h: int, w: int, direction: str, offset: int) -> tuple[int, int]:
    """(kept, new): how many grid lines of the old image stay on the canvas and how many new ones are
    masked."""
    if direction not in _DIRECTIONS:
        raise ValueError(f"unknown extrapolation direction {direction!r}; known: {list(_DIRECTIONS)}")
    size = w if direction in ("left", "right") else h
    kept = size // 2 - offset
    if not 0 < kept < size:
        raise ValueError(f"offset={offset} keeps {kept} of {size} grid lines; "
                         "need 0 < size // 2 - offset < size")
    return kept, size - kept


def extrapolation_canvas(image_ids: Array, direction: str, vocab: ShowoVocab, offset: int = 0) -> Array:
    """Shift half the tokens out and mask the new half: the next (B, H*W) canvas to generate.

    `image_ids` is (B, H, W). For "right" the canvas is the last W//2 - offset columns followed by W//2 +
    offset new (masked) columns; "left", "up", "down" likewise. Generate on it with `t2i_layout`, then
    `extrapolation_stitch`.
    """
    b, h, w = image_ids.shape
    kept, new = _shift(h, w, direction, offset)
    if direction in ("left", "right"):
        masked = jnp.full((b, h, new), vocab.mask_id, image_ids.dtype)
        if direction == "left":
            parts = [masked, image_ids[:, :, :kept]]
        else:
            parts = [image_ids[:, :, w - kept:], masked]
        canvas = jnp.concatenate(parts, axis=2)
    else:
        masked = jnp.full((b, new, w), vocab.mask_id, image_ids.dtype)
        parts = [masked, image_ids[:, :kept]] if direction == "up" else [image_ids[:, h - kept:], masked]
        canvas = jnp.concatenate(parts, axis=1)
    return canvas.reshape(b, h * w)


def extrapolation_stitch(generated: Array, original: Array, direction: str, offset: int = 0) -> Array:
    """Joins a generated canvas (B, H*W) to the original (B, H, W): the result grows by W//2 + offset columns
    (or rows) on the `direction` side and keeps every original token."""
    b, h, w = original.shape
    kept, _ = _shift(h, w, direction, offset)
    gen = generated.reshape(b, h, w)
    if direction == "left":
        return jnp.concatenate([gen, original[:, :, kept:]], axis=2)
    if direction == "right":
        return jnp.concatenate([original[:, :, :w - kept], gen], axis=2)
    if direction == "up":
        return jnp.concatenate([gen, original[:, kept:]], axis=1)
    return jnp.concatenate([original[:, :h - kept], gen], axis=1)


def image_grid(num_image_tokens: int) -> int:
    """Side of the square token grid (256 -> 16, 1024 -> 32), refusing non-square counts."""
    side = math.isqrt(num_image_tokens)
    if side * side != num_image_tokens:
        raise ValueError(f"num_image_tokens={num_image_tokens} is not a square grid")
    return side
