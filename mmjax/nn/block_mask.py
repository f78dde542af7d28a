"""Attention masks as structure, not values: a static pattern per row type plus per-token segment ids.

A dense (B, 1, T, S) boolean mask computed from token ids is data: a kernel cannot know at compile time which
(query block, key block) tiles are empty, so block-sparse kernels (TPU splash attention, `mmjax.nn.splash`) cannot
take it. Most masks in this project are structure plus a little data:
- a causal LM, packed or padded: the causal pattern, plus segment ids (a token sees only its own document; pads
  form their own segment);
- Show-o's omni-attention: once text is padded to its fixed length, each row type (T2I, LM, MMU) has its image
  span at fixed positions, so each type is one static pattern; left pads of T2I rows are a segment of their own.

`MaskPattern` is the static part (hashable, a numpy (T, S) array on demand); `BlockMask` is a batch whose rows come
in consecutive groups, each with its pattern, plus optional (B, T) segment ids. `attention_op` hands a BlockMask to
splash as it is and turns it into the equivalent dense mask for the XLA / cuDNN paths (`BlockMask.dense`), so a
model or task builds one mask for every backend.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class MaskPattern:
    """Query row q may attend key k when (causal and k <= q) or q >= full_rows_from or k < prefix_keys.

    `full_rows_from`: rows from there on see every key (Show-o's image span at the end of a T2I row);
    `prefix_keys`: keys before it are seen by every row (a bidirectional prefix: Show-o's MMU image, prefix LMs).
    Every row must see at least itself, so a non-causal pattern must be fully bidirectional (full_rows_from=0).
    """

    causal: bool = True
    full_rows_from: int | None = None
    prefix_keys: int = 0

    def __post_init__(self):
        if not self.causal and self.full_rows_from != 0:
            raise ValueError(f"{self}: without `causal`, rows before full_rows_from would see no key; a non-causal "
                             "pattern must have full_rows_from=0 (every row sees every key)")

    def dense(self, q_len: int, kv_len: int) -> np.ndarray:
        """The (q_len, kv_len) boolean mask, True = may attend."""
        q, k = np.arange(q_len)[:, None], np.arange(kv_len)[None, :]
        allowed = (k < self.prefix_keys) | np.zeros((q_len, kv_len), bool)
        if self.causal:
            allowed |= k <= q
        if self.full_rows_from is not None:
            allowed |= q >= self.full_rows_from
        return allowed


CAUSAL = MaskPattern()
BIDIRECTIONAL = MaskPattern(causal=False, full_rows_from=0)


@flax.struct.dataclass
class BlockMask:
    """Rows in consecutive groups `((pattern, rows), ...)` (rows -1: all remaining rows), plus `segment_ids`.

    With `periodic`, the groups describe one period of rows that repeats through the batch (Show-o's bundles:
    15 T2I, 4 LM, 10 MMU rows, then the next bundle): a shard holding whole periods then groups its rows locally.
    segment_ids: (B, T) int or None; a query sees a key only if both have the same id (and the pattern allows
    it). It is a pytree whose only leaf is `segment_ids`, so it passes through `nn.scan` and remat like an array.
    """

    segment_ids: jax.Array | None
    groups: tuple[tuple[MaskPattern, int], ...] = flax.struct.field(pytree_node=False)
    periodic: bool = flax.struct.field(pytree_node=False, default=False)

    @classmethod
    def uniform(cls, pattern: MaskPattern, segment_ids: jax.Array | None = None) -> BlockMask:
        """One pattern for every row."""
        return cls(segment_ids, ((pattern, -1),))

    @classmethod
    def from_lengths(cls, lengths: jax.Array, length: int, pattern: MaskPattern = CAUSAL) -> BlockMask:
        """Right-padded rows of `lengths` (B,) real tokens: real tokens are segment 1, pads segment 0."""
        segment_ids = (jnp.arange(length)[None, :] < jnp.asarray(lengths)[:, None]).astype(jnp.int32)
        return cls.uniform(pattern, segment_ids)

    def period_groups(self, batch: int) -> tuple[list[tuple[MaskPattern, int, int]], int]:
        """((pattern, first row, end row) of each group within a period, number of periods), checked to cover
        exactly `batch` rows. Without `periodic` the whole batch is one period."""
        period = sum(rows for _, rows in self.groups) if self.periodic else batch
        if self.periodic and (min(rows for _, rows in self.groups) < 0 or not period or batch % period):
            raise ValueError(f"BlockMask: periodic groups {[(p, n) for p, n in self.groups]} do not tile a batch "
                             f"of {batch}")
        out, start = [], 0
        for i, (pattern, rows) in enumerate(self.groups):
            if rows < 0:
                if i != len(self.groups) - 1:
                    raise ValueError(f"BlockMask: only the last group may take the remaining rows, got {self.groups}")
                rows = period - start
            out.append((pattern, start, start + rows))
            start += rows
        if start != period or any(stop < first for _, first, stop in out):
            raise ValueError(f"BlockMask groups {[(p, n) for p, n in self.groups]} do not cover a batch of {batch}")
        return out, batch // period

    @property
    def all_causal(self) -> bool:
        return all(p.causal for p, _ in self.groups)

    def dense(self, batch: int, q_len: int, kv_len: int) -> jax.Array:
        """The equivalent (B, 1, T, S) boolean mask (True = may attend), for kernels that take dense masks.

        Built by comparisons from each row's pattern numbers ((B,) constants), not by indexing stacked (T, S)
        patterns, so no (B, T, S) constant can be folded into the program."""
        groups, periods = self.period_groups(batch)
        per_row = lambda field: jnp.asarray(np.tile(np.concatenate(
            [np.full(stop - first, field(p)) for p, first, stop in groups]), periods))[:, None, None, None]
        causal = per_row(lambda p: p.causal)
        full_from = per_row(lambda p: q_len if p.full_rows_from is None else p.full_rows_from)
        prefix = per_row(lambda p: p.prefix_keys)
        q, k = jnp.arange(q_len)[:, None], jnp.arange(kv_len)[None, :]
        mask = (causal & (k <= q)) | (q >= full_from) | (k < prefix)
        if self.segment_ids is not None:
            seg = jnp.asarray(self.segment_ids)
            mask = mask & (seg[:, None, :q_len, None] == seg[:, None, None, :kv_len])
        return mask


def showo_block_mask(ids: jax.Array, rows: Mapping[str, int], *, max_text_len: int, num_image_tokens: int,
                     pad_id: int) -> BlockMask:
    """Show-o's omni-attention for a training batch of bundles, each `[t2i; lm; mmu]` rows in turn (`rows`: part
    -> rows per bundle, in that order; the batch is whole bundles).

    T2I rows `[PAD]* <|t2i|> <bos> text <eos> <|soi|> img <|eoi|>`: causal text, the image span from index S+1 on
    sees every key; the left pads are segment 0, so real tokens never see them (and pads see only pads, as in
    `masks.showo_t2i_mask`). LM rows: causal (right pads come after every real token). MMU rows
    `<|mmu|><|soi|> img <|eoi|> text [PAD]*`: causal plus the N+3-token image prefix visible to every row. This is
    exactly `masks.showo_mask` on these layouts, as a static pattern per row type.
    """
    patterns = {"t2i": MaskPattern(full_rows_from=max_text_len + 1), "lm": CAUSAL,
                "mmu": MaskPattern(prefix_keys=num_image_tokens + 3)}
    unknown = set(rows) - set(patterns)
    if unknown:
        raise ValueError(f"showo_block_mask: unknown row types {sorted(unknown)}; known: {list(patterns)}")
    parts = [p for p in patterns if rows.get(p)]
    mask = BlockMask(None, tuple((patterns[p], int(rows[p])) for p in parts), periodic=True)
    _, bundles = mask.period_groups(ids.shape[0])
    is_t2i = np.tile(np.concatenate([np.full(int(rows[p]), p == "t2i") for p in parts]), bundles)
    segment_ids = jnp.where(jnp.asarray(is_t2i)[:, None], ids != pad_id, True).astype(jnp.int32)
    return mask.replace(segment_ids=segment_ids)
