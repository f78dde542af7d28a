"""webdataset-style tar shards (img2dataset's default output) as a random-access source.

A shard is an uncompressed tar whose members are grouped into samples by key: `000123.jpg`, `000123.txt` and
`000123.json` are one sample with key `000123` (the key is the member path up to the first dot of its base name;
a sample is a run of consecutive members with the same key, as webdataset writes them). A record is
{"image": the encoded bytes of the first member with an image extension, "caption": the `.txt` member, else the
`.json` member's `caption_key` field, "label": the integer in a `.cls` member (classification shards), "key": the
sample key, "where": shard and key for messages}; images are decoded by the consumer's preprocessing,
so a corrupt JPEG is skipped and counted there under `ImageDecodeError`.

Random access (grain's shuffling and its exact resume need it) comes from an index of every shard's members,
built once by reading the tar headers (seeking past the data) and cached as `<shard>.index.npy` beside the shard,
or under `index_dir` (default ~/.cache/mmjax/webdataset) when the shard folder is not writable. An index older
than its shard is rebuilt. The index is a memory-mapped numpy array, so grain's worker processes share one copy
in the page cache. Members are then read with `os.pread` at their offsets.

Bad input: a sample without an image member, or whose text member cannot be read (bad UTF-8, bad JSON, a `.cls`
that is not an integer), comes
back as None (logged with the shard and key, counted by the pipeline as "undecodable"). A damaged shard (a
truncated last member, or a broken header mid-file) keeps the samples before the damage; the rest is reported
when the index is built and every time it is opened. Compressed shards (`.tar.gz`, ...) cannot be read at random
and are refused with a message saying so.

Several hosts: `mmjax.data.sharded` (shard k is read by host k % host_count only).
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import logging
import os
import tarfile
from collections.abc import Sequence
from typing import Any

import numpy as np

from mmjax import configlib
from mmjax.data.sharded import HostStrided, host_share, own_shards
from mmjax.data.sources import DataError, match_files

log = logging.getLogger(__name__)
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
OPTIONS = ("pattern", "image_exts", "caption_key", "index_dir", "host_index", "host_count")
DAMAGE_EXT = b"!damaged"   # the ext of an index's last row when the shard could not be read to its end
COMPRESSED_MAGIC = {b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz", b"(\xb5/\xfd": "zstd"}
INDEX_SUFFIX = ".index.npy"


def default_index_dir() -> str:
    return os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "mmjax", "webdataset")


def split_name(name: str) -> tuple[str, str]:
    """A member path -> (sample key, lower-case extension): `a/000123.seg.png` -> (`a/000123`, `seg.png`)."""
    folder, base = os.path.split(name)
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def _check_uncompressed(path: str) -> None:
    with open(path, "rb") as f:
        head = f.read(6)
    for magic, kind in COMPRESSED_MAGIC.items():
        if head.startswith(magic):
            raise DataError(f"{path} is {kind}-compressed; random access needs uncompressed tar shards "
                            f"(decompress them once, e.g. with `{kind} -d`, or write them with img2dataset's "
                            "default output)")


def _nonzero_after(path: str, offset: int, chunk: int = 1 << 20) -> int | None:
    """The first non-zero byte at or after `offset` (a valid tar ends in zero blocks), or None."""
    with open(path, "rb") as f:
        f.seek(offset)
        while data := f.read(chunk):
            nz = np.flatnonzero(np.frombuffer(data, np.uint8))
            if nz.size:
                return offset + int(nz[0])
            offset += len(data)
    return None


def scan_tar(path: str) -> np.ndarray:
    """The member index of one shard: a structured array (key, ext, offset, size) of its regular files, in tar
    order, plus a final DAMAGE_EXT row (offset = first unread byte, size = bytes not indexed) if it is damaged."""
    _check_uncompressed(path)
    file_size = os.path.getsize(path)
    rows: list[tuple[bytes, bytes, int, int]] = []
    damage = None
    try:
        with tarfile.open(path, mode="r:") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                if member.offset_data + member.size > file_size:
                    damage = member.offset
                    break
                key, ext = split_name(member.name)
                rows.append((key.encode(), ext.encode(), member.offset_data, member.size))
            end = tar.offset
    except (tarfile.TarError, EOFError) as e:  # unreadable from the start: no member to keep
        raise DataError(f"{path} is not a readable tar file: {type(e).__name__}: {e}") from None
    if damage is None:  # tarfile stops quietly at a broken header mid-file: anything but zeros after it is lost
        damage = _nonzero_after(path, end)
    if damage is not None:
        rows.append((b"", DAMAGE_EXT, damage, file_size - damage))
    width = lambda i: max([len(r[i]) for r in rows] + [1])
    dtype = np.dtype([("key", f"S{width(0)}"), ("ext", f"S{width(1)}"), ("offset", "<i8"), ("size", "<i8")])
    return np.array(rows, dtype=dtype)


def _index_paths(shard: str, index_dir: str) -> tuple[str, str]:
    """(beside the shard, in the cache dir) for one shard's index."""
    digest = hashlib.sha1(os.path.abspath(shard).encode()).hexdigest()[:16]
    cached = os.path.join(index_dir, f"{digest}-{os.path.basename(shard)}{INDEX_SUFFIX}")
    return shard + INDEX_SUFFIX, cached


def _fresh(index_path: str, shard: str) -> bool:
    return os.path.isfile(index_path) and os.stat(index_path).st_mtime_ns >= os.stat(shard).st_mtime_ns


def _save(rows: np.ndarray, path: str) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        np.save(f, rows, allow_pickle=False)
    os.replace(tmp, path)   # atomic: a concurrent reader sees the old index or the new one, never half of one


def shard_index(shard: str, index_dir: str | None = None) -> str:
    """The path of an up-to-date index of `shard`, building (and caching) it when there is none."""
    index_dir = index_dir or default_index_dir()
    beside, cached = _index_paths(shard, index_dir)
    for path in (beside, cached):
        if _fresh(path, shard):
            return path
    rows = scan_tar(shard)
    target = beside if os.access(os.path.dirname(os.path.abspath(shard)), os.W_OK) else cached
    _save(rows, target)
    samples = len(np.unique(rows["key"][rows["ext"] != DAMAGE_EXT]))
    log.info("indexed %s: %d members, %d samples -> %s", shard, len(rows), samples, target)
    return target


class WebDatasetShards:
    """The samples of some tar shards (this host's), numbered in shard order; see the module for the records."""

    def __init__(self, paths: Sequence[str], image_exts: Sequence[str] = IMAGE_EXTS, caption_key: str = "caption",
                 index_dir: str | None = None):
        self.paths = list(paths)
        self.image_exts = tuple(e.lower().encode() for e in image_exts)
        self.caption_key = caption_key
        with concurrent.futures.ThreadPoolExecutor(min(16, len(self.paths))) as pool:  # I/O bound: header reads
            self.index_paths = list(pool.map(lambda p: shard_index(p, index_dir), self.paths))
        self._rows = self._load()
        self._starts: dict[int, np.ndarray] = {}
        counts = []
        for i, (shard, rows) in enumerate(zip(self.paths, self._rows)):
            self._starts[i] = _sample_starts(rows)
            counts.append(len(self._starts[i]))
            if len(rows) and rows["ext"][-1] == DAMAGE_EXT:
                log.warning("webdataset shard %s is damaged at byte %d: its last %d bytes are not read (the %d "
                            "samples before the damage are)", shard, rows["offset"][-1], rows["size"][-1], counts[-1])
        self._first = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

    def _load(self) -> list[np.ndarray]:
        return [np.load(p, mmap_mode="r", allow_pickle=False) for p in self.index_paths]

    def __getstate__(self) -> dict[str, Any]:  # worker processes map the indexes themselves
        return {k: v for k, v in self.__dict__.items() if k not in ("_rows", "_starts")}

    def _shard(self, shard: int) -> tuple[np.ndarray, np.ndarray]:
        if "_rows" not in self.__dict__:  # a copy unpickled in a worker process
            self._rows, self._starts = self._load(), {}
        if shard not in self._starts:
            self._starts[shard] = _sample_starts(self._rows[shard])
        return self._rows[shard], self._starts[shard]

    def __len__(self) -> int:
        return int(self._first[-1])

    def _read(self, shard: int, offset: int, size: int) -> bytes:
        """A member's bytes. The shard is opened per read (microseconds against a decode's milliseconds): a host
        may read thousands of shards, more than a process may hold open."""
        fd = os.open(self.paths[shard], os.O_RDONLY)
        try:
            data = os.pread(fd, size, offset)
        finally:
            os.close(fd)
        if len(data) != size:
            raise OSError(f"read {len(data)} of {size} bytes at offset {offset} (the shard shrank?)")
        return data

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        if not 0 <= index < len(self):
            raise IndexError(f"sample {index} out of range [0, {len(self)})")
        shard = int(np.searchsorted(self._first, index, side="right")) - 1
        rows, starts = self._shard(shard)
        sample = index - int(self._first[shard])
        stop = int(starts[sample + 1]) if sample + 1 < len(starts) else _end(rows)
        members = rows[int(starts[sample]):stop]
        key = members["key"][0].decode(errors="replace")
        exts = [e for e in members["ext"]]
        where = f"{self.paths[shard]} sample {key!r}"
        try:
            image = next((i for e in self.image_exts for i, x in enumerate(exts) if x == e), None)
            if image is None:
                raise ValueError(f"no image member ({', '.join(e.decode() for e in exts)} present)")
            read = lambda i: self._read(shard, int(members["offset"][i]), int(members["size"][i]))
            record: dict[str, Any] = {"image": read(image), "key": key, "where": where}
            if b"cls" in exts:
                record["label"] = int(read(exts.index(b"cls")).decode("utf-8").strip())
            if b"txt" in exts:
                record["caption"] = read(exts.index(b"txt")).decode("utf-8")
            elif b"json" in exts:
                meta = json.loads(read(exts.index(b"json")))
                if isinstance(meta, dict) and isinstance(meta.get(self.caption_key), str):
                    record["caption"] = meta[self.caption_key]
            return record
        except (ValueError, OSError) as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            log.warning("skipping a webdataset sample (%s): %s: %s", where, type(e).__name__, e)
            return None


def _end(rows: np.ndarray) -> int:
    """Rows that are members (all but a trailing damage row)."""
    return len(rows) - int(len(rows) > 0 and rows["ext"][-1] == DAMAGE_EXT)


def _sample_starts(rows: np.ndarray) -> np.ndarray:
    """The first row of each sample: where the key changes."""
    keys = np.asarray(rows["key"][: _end(rows)])
    if not keys.size:
        return np.zeros((0,), np.int64)
    return np.flatnonzero(np.concatenate([[True], keys[1:] != keys[:-1]])).astype(np.int64)


def from_config(cfg: dict[str, Any]) -> HostStrided:
    """`config.data.<split>` = {name: "webdataset", pattern, image_exts, caption_key, index_dir, host_index,
    host_count}: this host's shards of the glob `pattern`, numbered for the pipeline's host stride."""
    configlib.check_known(cfg, OPTIONS, "data.<split> (webdataset source)")
    if not cfg.get("pattern"):
        raise DataError("the webdataset source needs `pattern`, a glob of .tar shards")
    paths = match_files(cfg["pattern"], "webdataset shards", skip_suffix=INDEX_SUFFIX)
    index, count = host_share(cfg.get("host_index", -1), cfg.get("host_count", -1))
    shards = WebDatasetShards(own_shards(paths, index, count, f"webdataset {cfg['pattern']!r}"),
                              tuple(cfg.get("image_exts") or IMAGE_EXTS), cfg.get("caption_key", "caption"),
                              cfg.get("index_dir") or None)
    return HostStrided(shards, index, count)
