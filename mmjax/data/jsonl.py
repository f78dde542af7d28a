"""JSON-lines files as random-access records: line offsets indexed once (a sequential scan), lines read with
`os.pread`. The offset index costs 16 bytes per line; for corpora of billions of lines prefer ArrayRecord.

`JsonlRecords` (`make_source` name "jsonl": record i = the JSON object on non-empty line i) serves any consumer
that reads fields by name (Show-o's text part reads `text_field`); `mmjax.data.packing.JsonlText` reads one text
field for LM packing. A line that is not a JSON object comes back as None (logged with the file and byte offset,
counted by the pipeline as "undecodable").
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import numpy as np

from mmjax import configlib
from mmjax.data.sources import DataError, match_files

log = logging.getLogger(__name__)
OPTIONS = ("pattern", "image_field", "images")


def line_spans(path: str, chunk_bytes: int = 1 << 26) -> tuple[np.ndarray, np.ndarray]:
    """(start, end) byte offsets of the non-empty lines of a file, found in chunks (bounded memory)."""
    ends: list[np.ndarray] = []
    offset = 0
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            ends.append(np.flatnonzero(np.frombuffer(chunk, np.uint8) == 10).astype(np.int64) + offset)
            offset += len(chunk)
    end = np.concatenate([*ends, np.array([offset], np.int64)])
    start = np.concatenate([[0], end[:-1] + 1]).astype(np.int64)
    keep = end > start
    return start[keep], end[keep]


class JsonlLines:
    """The non-empty lines of the files matching a glob (sorted), by global index."""

    def __init__(self, pattern: str):
        self.paths = match_files(pattern, "JSONL files")
        spans = [line_spans(p) for p in self.paths]
        self._file = np.concatenate([np.full(len(s), i, np.int32) for i, (s, _) in enumerate(spans)])
        self._start = np.concatenate([s for s, _ in spans])
        self._end = np.concatenate([e for _, e in spans])
        self._fds: dict[tuple[int, int], int] = {}

    def __len__(self) -> int:
        return len(self._start)

    def where(self, index: int) -> str:
        return f"{self.paths[int(self._file[index])]}, byte {int(self._start[index])}"

    def line(self, index: int) -> bytes:
        file, start, end = int(self._file[index]), int(self._start[index]), int(self._end[index])
        key = (os.getpid(), file)  # grain worker processes must not share a parent's descriptors
        if key not in self._fds:
            self._fds[key] = os.open(self.paths[file], os.O_RDONLY)
        return os.pread(self._fds[key], end - start, start)


class JsonlRecords:
    """Record i = the JSON object on line i, or None when the line is not one (logged), with "where" (file and
    byte offset) added. A string in `image_field` is an image path: relative ones are resolved against `images`,
    by default the JSONL file's own folder, so the record's image reaches `mmjax.data.images.decode_image` as a
    path it can open."""

    def __init__(self, pattern: str, image_field: str = "image", images: str = ""):
        self.lines = JsonlLines(pattern)
        self.image_field, self.images = image_field, images

    def __len__(self) -> int:
        return len(self.lines)

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        try:
            record = json.loads(self.lines.line(index))
            if not isinstance(record, dict):
                raise TypeError(f"the line is a JSON {type(record).__name__}, not an object")
            record.setdefault("where", self.lines.where(index))
            path = record.get(self.image_field)
            if isinstance(path, str):
                root = self.images or os.path.dirname(self.lines.paths[int(self.lines._file[index])])
                record[self.image_field] = os.path.join(root, os.path.expanduser(path))
            return record
        except (ValueError, TypeError) as e:
            log.warning("skipping a bad JSONL line (%s): %s: %s", self.lines.where(index), type(e).__name__, e)
            return None


def from_config(cfg: dict[str, Any]) -> JsonlRecords:
    """`config.data.<split>` = {name: "jsonl", pattern, image_field ("image"), images (folder of relative image
    paths; "": each JSONL file's folder)}."""
    configlib.check_known(cfg, OPTIONS, "data.<split> (jsonl source)")
    if not cfg.get("pattern"):
        raise DataError("the jsonl source needs `pattern`, a glob of .jsonl files")
    return JsonlRecords(cfg["pattern"], cfg.get("image_field") or "image", cfg.get("images") or "")
