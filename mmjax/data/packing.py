"""Packed text input for LM pre-training: text documents -> fixed-size groups -> packed (rows, seq_len) blocks.

Why packing: web documents are mostly much shorter than a training row (RefinedWeb averages a few hundred
tokens against 2048), so one document per row would spend most FLOPs on padding. Packing puts several
documents into a row; `segment_ids` (1, 2, ... per document, 0 = padding) let the model block attention across
document boundaries (`segment_mask`, built inside jit), and `positions` restart at 0 for every document so
RoPE sees each one as if it were alone. A document longer than a row is split into row-sized chunks (never
dropped), each its own segment; splits are counted.

Why packing happens per *group of documents* (record i of `DocumentGroups` = documents [i*G, (i+1)*G)) rather
than over a stream: the trainer's input contract is a random-access source plus a per-record `preprocess`,
which is what makes the grain iterator state a single index (exact resume, any number of hosts). A streaming
packer would need a trainer hook for an IterDataset stage. The trade-off of group-local packing: rows are only
filled from the G documents of one group, so the fill is lower than a stream packer's (measured and logged as
`fill`), and if a group holds more tokens than its `rows * seq_len` slots the remainder is cut and counted
(`overflow_tokens`). Size G and rows so that overflow stays rare (see docs/lm.md).

Slot layout: slot t of a row holds input token `tokens[t]` and the token after it *in the same document*,
`targets[t]`. A document d_0 .. d_{n-1} therefore fills n - 1 slots (d_0..d_{n-2} predicting d_1..d_{n-1}), so
no slot ever has a target from another document and a split loses no prediction at a chunk boundary.
`weights` is 1 on real slots and 0 on padding.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mmjax.data.jsonl import JsonlLines
from mmjax.data.sharded import HostStrided
from mmjax.data.sources import ArrayRecordSource, DataError

log = logging.getLogger(__name__)


@dataclasses.dataclass
class PackStats:
    """What happened to one group's documents; every count travels with the batch into the metrics."""

    documents: int = 0        # documents with at least one prediction (>= 2 tokens)
    short_documents: int = 0  # documents with fewer than 2 tokens: nothing to predict, not packed
    split_documents: int = 0  # documents longer than a row, split into chunks
    overflow_tokens: int = 0  # slots that did not fit into the group's rows (cut)
    tokens: int = 0           # slots packed (= weighted predictions)


@dataclasses.dataclass
class PackedRows:
    """(rows, seq_len) arrays; `document` (index into the input list, -1 = padding) is for tests/debugging."""

    tokens: np.ndarray
    targets: np.ndarray
    segment_ids: np.ndarray
    positions: np.ndarray
    weights: np.ndarray
    document: np.ndarray
    stats: PackStats

    def arrays(self) -> dict[str, np.ndarray]:
        """The model inputs (what a training example carries)."""
        return {"tokens": self.tokens, "targets": self.targets, "segment_ids": self.segment_ids,
                "positions": self.positions, "weights": self.weights}


def pack_documents(docs: Sequence[Sequence[int]], seq_len: int, num_rows: int, pad_id: int = 0, *,
                   decreasing: bool = True) -> PackedRows:
    """Greedy first-fit packing of tokenized documents into `num_rows` rows of `seq_len` slots.

    Each document is cut into chunks of at most `seq_len` slots; each chunk goes into the first row with room
    for it. With `decreasing` (the default) chunks are placed first-fit decreasing (short ones fill the gaps
    the long ones leave, which keeps padding and overflow low), with every document's first chunk before any
    continuation chunk: when a group has more tokens than slots, the tails of long documents are cut (like
    truncation) rather than whole short documents. Otherwise chunks go in the given order. Chunks that fit
    nowhere are counted in `stats.overflow_tokens`.
    """
    if seq_len < 1 or num_rows < 1:
        raise ValueError(f"packing needs seq_len >= 1 and num_rows >= 1, got {seq_len}, {num_rows}")
    shape = (num_rows, seq_len)
    tokens = np.full(shape, pad_id, np.int32)
    targets = np.full(shape, pad_id, np.int32)
    segment_ids = np.zeros(shape, np.int32)
    positions = np.zeros(shape, np.int32)
    document = np.full(shape, -1, np.int32)
    used = [0] * num_rows     # filled slots per row (segments are contiguous from the row start)
    segments = [0] * num_rows
    stats = PackStats()
    chunks: list[tuple[int, np.ndarray, int, int]] = []  # (document index, ids, start, size)
    for index, doc in enumerate(docs):
        doc = np.asarray(doc, np.int32)
        if doc.size < 2:
            stats.short_documents += 1
            continue
        stats.documents += 1
        n = doc.size - 1
        stats.split_documents += int(n > seq_len)
        chunks += [(index, doc, start, min(seq_len, n - start)) for start in range(0, n, seq_len)]
    if decreasing:  # stable sort: equal keys keep the caller's (shuffled) order
        chunks.sort(key=lambda c: (c[2] > 0, -c[3]))
    for index, doc, start, size in chunks:
        row = next((r for r in range(num_rows) if used[r] + size <= seq_len), None)
        if row is None:
            stats.overflow_tokens += size
            continue
        at = slice(used[row], used[row] + size)
        segments[row] += 1
        tokens[row, at] = doc[start:start + size]
        targets[row, at] = doc[start + 1:start + size + 1]
        segment_ids[row, at] = segments[row]
        positions[row, at] = np.arange(size, dtype=np.int32)
        document[row, at] = index
        used[row] += size
        stats.tokens += size
    weights = (segment_ids > 0).astype(np.float32)
    return PackedRows(tokens, targets, segment_ids, positions, weights, document, stats)


def segment_mask(segment_ids: jax.Array) -> jax.Array:
    """(B, T) segment ids -> (B, 1, T, T) bool "may attend": same segment and causal.

    Built inside jit (O(B T^2) compares that XLA fuses) instead of shipped with the batch. Padding (segment 0)
    forms its own segment, so a real token never sees a pad and a pad row still sees itself: no row is fully
    masked (which is NaN in some fused kernels). Pad outputs carry zero loss weight.
    """
    t = segment_ids.shape[-1]
    causal = jnp.arange(t)[:, None] >= jnp.arange(t)[None, :]
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    return (same & causal[None])[:, None]


# -- document sources: random access, record i -> str (or None for a bad record, which is counted) -------------

class ShapesCaptions:
    """The captions of `mmjax.data.shapes` scenes (no image is rendered): the embedded tiny text corpus."""

    def __init__(self, num_records: int = 10_000, seed: int = 0, **shapes_options: Any):
        from mmjax.data.shapes import ShapesConfig, ShapesSource

        options = {k: tuple(v) if isinstance(v, list) else v for k, v in shapes_options.items()}
        self._shapes = ShapesSource(ShapesConfig(**options), num_records=num_records, seed=seed)

    def __len__(self) -> int:
        return len(self._shapes)

    def __getitem__(self, index: int) -> str:
        from mmjax.data.shapes import caption

        return caption(self._shapes.scene(index), self._shapes.config.with_positions)


class JsonlText:
    """JSON-lines files, one `{"<text_field>": str, ...}` per line (`mmjax.data.jsonl` indexes and reads them).
    A line that is not JSON or has no string field comes back as None (logged for the first few, counted by the
    task as `bad_documents`)."""

    def __init__(self, pattern: str, text_field: str = "text"):
        self.lines = JsonlLines(pattern)
        self.text_field = text_field
        self._warned = 0

    def __len__(self) -> int:
        return len(self.lines)

    def __getitem__(self, index: int) -> str | None:
        try:
            text = json.loads(self.lines.line(index))[self.text_field]
            if not isinstance(text, str):
                raise TypeError(f"field {self.text_field!r} is a {type(text).__name__}, not a string")
            return text
        except (ValueError, KeyError, TypeError, IndexError) as e:
            self._warned += 1
            if self._warned <= 3:
                log.warning("skipping a bad JSONL line (%s): %s: %s", self.lines.where(index), type(e).__name__, e)
            return None


class ArrayRecordText:
    """ArrayRecord shards of msgpack dict records (`mmjax.data.records`) with a string/bytes text field."""

    def __init__(self, pattern: str, text_field: str = "text"):
        self._records = ArrayRecordSource(pattern)
        self.text_field = text_field

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index: int) -> str | None:
        record = self._records[index]
        text = None if record is None else record.get(self.text_field)
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="replace")
        return text if isinstance(text, str) else None


def make_document_source(cfg: Any) -> Any:
    """A text source from one `config.data.<split>` section: name = shapes_captions | jsonl | arrayrecord |
    parquet (text_field defaults to "text"; RefinedWeb's parquet files hold it in "content")."""
    cfg = dict(cfg)
    name = cfg.pop("name", None)
    if name == "shapes_captions":
        return ShapesCaptions(**cfg)
    if name == "parquet":
        return parquet_text(cfg)
    if name in ("jsonl", "arrayrecord"):
        unknown = sorted(set(cfg) - {"pattern", "text_field"})
        if unknown or "pattern" not in cfg:
            raise DataError(f"{name} text source takes pattern (required) and text_field; got {sorted(cfg)}")
        return (JsonlText if name == "jsonl" else ArrayRecordText)(cfg["pattern"], cfg.get("text_field", "text"))
    raise DataError(f"unknown text source {name!r} (shapes_captions | jsonl | arrayrecord | parquet)")


def parquet_text(cfg: dict[str, Any]) -> HostStrided:
    """Parquet documents: {pattern, text_field, cache_row_groups, host_index, host_count}; this host's files
    only (`mmjax.data.sharded`), read one row group at a time (consecutive documents share it)."""
    from mmjax.data import parquet

    allowed = ("pattern", "text_field", "cache_row_groups", "host_index", "host_count")
    unknown = sorted(set(cfg) - set(allowed))
    if unknown or "pattern" not in cfg:
        raise DataError(f"parquet text source takes pattern (required) and {allowed[1:]}; got {sorted(cfg)}")
    files, index, count = parquet.own_files(cfg["pattern"], cfg.get("host_index", -1), cfg.get("host_count", -1))
    column = cfg.get("text_field", "text")
    rows = parquet.ParquetRows(files, [column], cfg.get("cache_row_groups", 4))
    return HostStrided(parquet.ParquetText(rows, column), index, count)


def document_groups(documents: Any, docs_per_group: int) -> Any:
    """`DocumentGroups` of a text source; a host-sharded source is grouped within this host's documents, so a
    group never spans hosts and the pipeline's host stride hands each host its own groups."""
    if isinstance(documents, HostStrided):
        groups = DocumentGroups(documents.local, docs_per_group)
        return HostStrided(groups, documents.host_index, documents.host_count)
    return DocumentGroups(documents, docs_per_group)


class DocumentGroups:
    """Random-access groups of consecutive documents: record i = {"texts": documents [i*G, (i+1)*G)}.

    The unit the trainer shuffles, preprocesses (tokenize + pack) and checkpoints; the last group may be short.
    """

    def __init__(self, documents: Any, docs_per_group: int):
        if docs_per_group < 1:
            raise ValueError(f"docs_per_group must be >= 1, got {docs_per_group}")
        self.documents, self.docs_per_group = documents, int(docs_per_group)

    def __len__(self) -> int:
        return -(-len(self.documents) // self.docs_per_group)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(f"document group {index} out of range [0, {len(self)})")
        start = index * self.docs_per_group
        stop = min(start + self.docs_per_group, len(self.documents))
        return {"texts": [self.documents[i] for i in range(start, stop)]}
