"""The record format of mmjax's ArrayRecord files: one msgpack-encoded dict per record.

Values may be numpy arrays, bytes (e.g. encoded PNG/JPEG), strings and numbers. msgpack (not pickle) keeps files
readable from any language and safe to load. A record that fails to decode is reported once and skipped.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from flax import serialization

log = logging.getLogger(__name__)


def encode(record: dict[str, Any]) -> bytes:
    return serialization.msgpack_serialize(record)


def decode(data: bytes) -> dict[str, Any]:
    out = serialization.msgpack_restore(data)
    if not isinstance(out, dict):
        raise ValueError(f"record is a {type(out).__name__}, not a dict")
    return out


def decode_or_none(data: bytes, where: str) -> dict[str, Any] | None:
    try:
        return decode(data)
    except Exception as e:  # any decoding failure means one bad record, never a crashed run
        log.warning("skipping undecodable record (%s): %s: %s", where, type(e).__name__, e)
        return None


def write_array_record(path: str, recs: Iterable[dict[str, Any]]) -> int:
    """Writes records to one ArrayRecord file; returns how many were written."""
    from array_record.python.array_record_module import ArrayRecordWriter

    writer = ArrayRecordWriter(path, "group_size:1")
    n = 0
    for rec in recs:
        writer.write(encode(rec))
        n += 1
    writer.close()
    return n
