"""Parquet files (img2dataset's parquet output, Hugging Face exports, RefinedWeb) as random-access sources.

Record i is row i of this host's files in sorted order. Parquet is read by row group, so a row group is the unit
of random access: reading a row decodes its group (only the columns asked for) and the `cache_row_groups` most
recently decoded groups are kept (LRU). Reading consecutive rows (text packing reads a group of consecutive
documents) costs one decode per row group; a global shuffle of an image corpus costs one decode per record, so
write image parquet with small row groups (a few hundred rows) or pre-tokenize it (`mmjax.tokenize_images`) —
docs/data.md has the measured rates.

Image-text records are {"image": encoded bytes, "caption": str, "where": file, row group and row, <column>: value
for each of `columns` (e.g. `columns=("label",)` for classification)}: the image
column holds bytes (img2dataset's `jpg`) or a struct with a `bytes` field (the Hugging Face `Image` feature); a
null image comes back as None (logged, counted by the pipeline as "undecodable"), a null caption leaves the record
without one. Files missing a column are refused when the source opens, naming the file and its columns.
Several hosts: `mmjax.data.sharded` (file k is read by host k % host_count only).
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from mmjax import configlib
from mmjax.data.sharded import HostStrided, host_share, own_shards
from mmjax.data.sources import DataError, match_files

log = logging.getLogger(__name__)
OPTIONS = ("pattern", "image_column", "caption_column", "columns", "cache_row_groups", "host_index", "host_count")


def _pq():
    try:
        import pyarrow.parquet as pq
    except ImportError as e:
        raise DataError("parquet sources need pyarrow (a dependency of mmjax: pip install -e .)") from e
    return pq


class ParquetRows:
    """Rows of some parquet files by global index, `columns` only, through an LRU of decoded row groups."""

    def __init__(self, paths: Sequence[str], columns: Sequence[str], cache_row_groups: int = 4):
        pq = _pq()
        self.paths, self.columns = list(paths), list(columns)
        self.cache_size = max(1, int(cache_row_groups))
        groups, sizes = [], []
        for f, path in enumerate(self.paths):
            try:
                meta = pq.ParquetFile(path).metadata
            except Exception as e:  # pyarrow raises ArrowInvalid / OSError for a file that is not parquet
                raise DataError(f"{path} is not a readable parquet file: {type(e).__name__}: {e}") from None
            names = meta.schema.to_arrow_schema().names   # top-level columns (a struct is one)
            missing = sorted(set(self.columns) - set(names))
            if missing:
                raise DataError(f"{path} has no column(s) {missing}; its columns: {names}")
            for g in range(meta.num_row_groups):
                groups.append((f, g))
                sizes.append(meta.row_group(g).num_rows)
        self.groups = groups
        self._first = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self._cache: collections.OrderedDict[int, dict[str, list]] = collections.OrderedDict()
        self._lock = threading.Lock()
        self.decodes = 0   # row groups decoded (the LRU's misses): what random access costs, for the benchmarks

    def __getstate__(self) -> dict[str, Any]:  # grain workers start with an empty cache of their own
        return {k: v for k, v in self.__dict__.items() if k not in ("_cache", "_lock")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _cache=collections.OrderedDict(), _lock=threading.Lock())

    def __len__(self) -> int:
        return int(self._first[-1])

    def where(self, index: int) -> str:
        f, g = self.groups[self._group_of(index)]
        return f"{self.paths[f]} row group {g} row {index - int(self._first[self._group_of(index)])}"

    def _group_of(self, index: int) -> int:
        return int(np.searchsorted(self._first, index, side="right")) - 1

    def _decoded(self, group: int) -> dict[str, list]:
        with self._lock:
            if group in self._cache:
                self._cache.move_to_end(group)
                return self._cache[group]
        f, g = self.groups[group]   # decoded outside the lock: pyarrow releases the GIL, other threads go on
        with _pq().ParquetFile(self.paths[f]) as pf:
            table = pf.read_row_group(g, columns=self.columns)
        columns = {c: table.column(c).to_pylist() for c in self.columns}
        with self._lock:
            self.decodes += 1
            self._cache[group] = columns
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return columns

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(f"row {index} out of range [0, {len(self)})")
        group = self._group_of(index)
        row = index - int(self._first[group])
        return {c: values[row] for c, values in self._decoded(group).items()}


class ParquetImageText:
    """Image-caption records from parquet rows (see the module)."""

    def __init__(self, rows: ParquetRows, image_column: str, caption_column: str, columns: Sequence[str] = ()):
        self.rows, self.image_column, self.caption_column = rows, image_column, caption_column
        self.extra = tuple(columns)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        row = self.rows[index]
        record = {c: row[c] for c in self.extra}
        record["where"] = self.rows.where(index)
        if self.image_column:
            image = row[self.image_column]
            if isinstance(image, dict):  # the Hugging Face Image feature: {"bytes": ..., "path": ...}
                image = image.get("bytes")
            if not isinstance(image, bytes):
                log.warning("skipping a parquet row without image bytes (%s): column %r is %s",
                            self.rows.where(index), self.image_column, type(image).__name__)
                return None
            record["image"] = image
        caption = row[self.caption_column] if self.caption_column else None
        if isinstance(caption, str):
            record["caption"] = caption
        return record


class ParquetText:
    """One text column as documents (`mmjax.data.packing`): record i -> str, or None for a null / non-string."""

    def __init__(self, rows: ParquetRows, column: str):
        self.rows, self.column = rows, column

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> str | None:
        text = self.rows[index][self.column]
        return text if isinstance(text, str) else None


def own_files(pattern: str, host_index: int = -1, host_count: int = -1) -> tuple[list[str], int, int]:
    """(this host's files of the glob, host index, host count)."""
    paths = match_files(pattern, "parquet files")
    index, count = host_share(host_index, host_count)
    return own_shards(paths, index, count, f"parquet {pattern!r}"), index, count


def from_config(cfg: dict[str, Any]) -> HostStrided:
    """`config.data.<split>` = {name: "parquet", pattern, image_column ("jpg"; "" for text only), caption_column
    ("caption"), columns (passed through), cache_row_groups (4), host_index, host_count}."""
    configlib.check_known(cfg, OPTIONS, "data.<split> (parquet source)")
    if not cfg.get("pattern"):
        raise DataError("the parquet source needs `pattern`, a glob of .parquet files")
    image, caption = cfg.get("image_column", "jpg"), cfg.get("caption_column", "caption")
    extra = tuple(cfg.get("columns") or ())
    files, index, count = own_files(cfg["pattern"], cfg.get("host_index", -1), cfg.get("host_count", -1))
    needed = list(dict.fromkeys(c for c in (image, caption, *extra) if c))
    rows = ParquetRows(files, needed, cfg.get("cache_row_groups", 4))
    return HostStrided(ParquetImageText(rows, image, caption, extra), index, count)
