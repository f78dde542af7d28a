"""The pre-tokenization job behind `python -m mmjax.tokenize_images --data ...`: resumable, one writer per host.

Work split. Host h of H takes its records of the source (its own shards of a webdataset / parquet / imagefolder
corpus, `mmjax.data.sharded`; every H-th record of any other source) and cuts them into output shards of
`records_per_shard` consecutive input records: shard k holds the tokenized records of inputs
[k * R, (k + 1) * R), in input order, as `ids-h<h>-<k>.array_record` (msgpack records {"ids": int32 (h, w), plus
the record's scalar and string fields: caption, key, ...}), beside `ids-h<h>-<k>.json` (its record count and
skips by reason). A shard is written under a temporary name and renamed when complete, so a shard file that
exists is whole.

Resume. A restarted job (same arguments) skips the shards that exist and redoes the one that was in progress.
Batches never cross a shard boundary and the last batch of a shard is padded to full size, so every image meets
the same batch, the same jit-compiled encoder and the same device layout as in an uninterrupted run: the output
is byte-identical (tests/test_tokenize_images.py kills a job half-way and compares). SIGTERM stops the job at
the next batch, as a kill would, and the command exits 75 (run it again to continue).

Identity. What the shards depend on (the tokenizer's checkpoint step and a digest of its parameters, the source,
shard size, host count) is the job's spec. `tokenizer.json` holds it for readers and is written just before the
first shard is put in place, so a job that fails before writing a shard leaves nothing that a corrected rerun
would trip over. Every shard's `.json` carries the spec's digest: a restart whose spec differs from the shards
already there (another tokenizer, or the same one trained further) is refused before the data is opened, unless
it asks to start over (`restart=True` removes this host's shards first).

Bad records (undecodable images, records without an image, records without any text or label field) are skipped
and counted per reason, as in training. Progress is a bar on a terminal and a log line every `log_every_s` seconds
otherwise; the summary gives images/s of this run and the skips of all shards.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import glob
import hashlib
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from mmjax.data import records
from mmjax.data.images import decode_image
from mmjax.data.sharded import HostStrided, host_local
from mmjax.data.sources import HOST_SHARDED, DataError, NoImageError, make_source

log = logging.getLogger("mmjax.tokenize_images")
Prepare = Callable[[Any], np.ndarray]        # an image field (array, encoded bytes, path) -> model input
Encode = Callable[[np.ndarray], np.ndarray]  # a full batch of model inputs -> int codes (B, h, w)


class MultiImageError(ValueError):
    """A LLaVA record with several images: a pre-tokenized record holds the codes of one image."""


class NoTextError(ValueError):
    """A record with none of the text or label fields that training pairs with its codes (a captionless image):
    skipped and counted under this name, instead of failing later in the training job."""


TEXT_FIELDS = ("caption", "text", "conversations", "label")   # a record needs one of these (see `check_text`)


def check_text(record: dict[str, Any], fields: Sequence[str]) -> None:
    """Raises NoTextError when `record` has none of `fields` with a non-empty value (no check when `fields` is
    empty); a bytes caption must be UTF-8 (UnicodeDecodeError otherwise, counted under that name)."""
    for field in fields:
        if isinstance(record.get(field), bytes):
            record[field].decode("utf-8")
    present = lambda v: v is not None and not (isinstance(v, str | bytes | list | dict) and len(v) == 0)
    if fields and not any(present(record.get(f)) for f in fields):
        raise NoTextError(f"record {record_name(record)} has none of the fields {', '.join(fields)} "
                          f"(has {sorted(record)})")


def record_name(record: dict[str, Any]) -> str:
    """How a log line names a record: its key or id (and where it came from, when the source says)."""
    name = record.get("key", record.get("id", ""))
    return f"{name!r}" + (f" ({record['where']})" if record.get("where") else "")


class HostRecords:
    """Every `count`-th record of a source from `index`: one host's share of a source that is not sharded."""

    def __init__(self, source: Any, index: int, count: int):
        self.source, self.index, self.count = source, index, count

    def __len__(self) -> int:
        return len(range(self.index, len(self.source), self.count))

    def __getitem__(self, j: int) -> Any:
        return self.source[self.index + j * self.count]


def host_records(data_cfg: dict[str, Any], host_index: int, host_count: int) -> Any:
    """This host's records of the source `data_cfg` (see the module)."""
    data_cfg = dict(data_cfg)
    if data_cfg.get("name") in HOST_SHARDED:
        source = make_source({**data_cfg, "host_index": host_index, "host_count": host_count})
        return host_local(source)
    source = make_source(data_cfg)
    if isinstance(source, HostStrided):
        raise DataError(f"source {data_cfg.get('name')!r} is sharded by host but not listed in HOST_SHARDED")
    return HostRecords(source, host_index, host_count)


def image_of(record: dict[str, Any]) -> Any:
    """A record's one image: its `image` field (array, encoded bytes, path) or its single LLaVA `image_paths`."""
    if "image" in record:
        return record["image"]
    paths = record.get("image_paths") or []
    if not paths:
        raise NoImageError(f"record {record.get('id', '')!r} has no image (fields {sorted(record)})")
    if len(paths) > 1:
        raise MultiImageError(f"record {record.get('id', '')!r} has {len(paths)} images")
    return paths[0]


def passthrough(record: dict[str, Any]) -> dict[str, Any]:
    """The record's other fields as msgpack-friendly values: scalars, strings and small vectors as they are,
    lists and dicts (LLaVA's `conversations`) as JSON strings, which Show-o's MMU reader accepts."""
    out = {}
    for key, value in record.items():
        if key in ("image", "ids", "image_paths", "where"):
            continue
        if isinstance(value, str | bytes | bool | int | float):
            out[key] = value
        elif isinstance(value, np.generic):
            out[key] = value.item()
        elif isinstance(value, np.ndarray) and value.ndim <= 1:
            out[key] = value
        elif isinstance(value, list | dict):
            out[key] = json.dumps(value)
        if isinstance(out.get(key), bytes):   # text as text (a UTF-8 caption); other bytes stay bytes
            with contextlib.suppress(UnicodeDecodeError):
                out[key] = out[key].decode("utf-8")
    return out


class Progress:
    """A tqdm bar on a terminal, else a log line every `every_s` seconds (records, images/s, ETA, skips)."""

    def __init__(self, total: int, done: int, every_s: float):
        self.total, self.done, self.every_s = total, done, every_s
        self.start = self.last = time.perf_counter()
        self.new = self.skipped = 0
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=done, unit="img", dynamic_ncols=True)

    def advance(self, n: int, skipped: int) -> None:
        """`n` more inputs done, `skipped` of them skipped."""
        self.done += n
        self.new += n
        self.skipped += skipped
        if self.bar is not None:
            self.bar.update(n)
            self.bar.set_postfix(skipped=self.skipped)
            return
        now = time.perf_counter()
        if now - self.last >= self.every_s:
            self.last = now
            rate = self.new / max(now - self.start, 1e-9)
            eta = (self.total - self.done) / rate if rate else float("inf")
            log.info("tokenized %d/%d records (%.1f images/s, ETA %.0f s), %d skipped in this run", self.done,
                     self.total, rate, eta, self.skipped)

    def close(self) -> float:
        """Records per second of this run."""
        if self.bar is not None:
            self.bar.close()
        return self.new / max(time.perf_counter() - self.start, 1e-9)


def _write_json(path: str, value: dict[str, Any]) -> None:
    tmp = f"{path}.tmp{os.getpid()}"   # hosts sharing the folder may write tokenizer.json at the same time
    with open(tmp, "w") as f:
        json.dump(value, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


def params_digest(variables: Any) -> str:
    """sha256 of every array of a variable tree (paths, dtypes, shapes and bytes): two tokenizers share it only
    when they encode identically."""
    import jax

    digest = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(variables)[0]:
        array = np.ascontiguousarray(np.asarray(leaf))
        digest.update(f"{jax.tree_util.keystr(path)}:{array.dtype.str}:{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def spec_digest(spec: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]


def host_files(out_dir: str, host: int | None = None) -> list[str]:
    """The shard files (finished or not) of one host, or of every host."""
    pattern = "ids-h*-*" if host is None else f"ids-h{host:04d}-*"
    return sorted(glob.glob(os.path.join(glob.escape(out_dir), pattern)))


def prepare_output(out_dir: str, host: int, spec: dict[str, Any], restart: bool = False) -> None:
    """Checks, before any data is opened, that `out_dir` holds no shards of another job (see the module); with
    `restart`, removes this host's shards and summary (and `tokenizer.json` once no host's shards remain).
    A `tokenizer.json` without shards (a job that failed before its first shard) is removed: the first shard of
    this job writes it again."""
    os.makedirs(out_dir, exist_ok=True)
    info = os.path.join(out_dir, "tokenizer.json")
    if restart:
        for f in host_files(out_dir, host) + glob.glob(os.path.join(glob.escape(out_dir), f"summary-h{host:04d}.json")):
            os.remove(f)
    if not any(f.endswith(".array_record") for f in host_files(out_dir)):
        if os.path.isfile(info):
            os.remove(info)
        return
    if not os.path.isfile(info):
        raise DataError(f"{out_dir} holds shards but no tokenizer.json (not written by this tool?); write to a new "
                        "--out, or run with --restart to delete this host's shards and start over")
    with open(info) as f:
        old = json.load(f)
    changed = sorted(k for k in set(old) | set(spec) if old.get(k) != spec.get(k))
    if changed:
        remedy = ("other hosts' shards of that job remain: run --restart on every host, or write to a new --out"
                  if restart else "write to a new --out, or run with --restart to delete this host's shards and "
                  "start over")
        raise DataError(f"{out_dir} holds shards of another tokenization job ({', '.join(changed)} differ from "
                        f"{info}); {remedy}")


@contextlib.contextmanager
def stop_on_sigterm() -> Iterator[threading.Event]:
    """An event set by SIGTERM (a preempted or cancelled job) while the block runs; the writer checks it between
    batches and leaves the shard in progress unfinished, as a kill would. The previous handler is restored."""
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    try:
        yield stop
    finally:
        signal.signal(signal.SIGTERM, previous)


class ShardWriter:
    """Tokenizes one host's records into its shards; see the module."""

    def __init__(self, source: Any, prepare: Prepare, encode: Encode, out_dir: str, host_index: int,
                 records_per_shard: int, batch: int, workers: int = 8, limit: int | None = None, *,
                 spec: dict[str, Any] | None = None, text_fields: Sequence[str] = (),
                 stop: threading.Event | None = None):
        self.source, self.prepare, self.encode = source, prepare, encode
        self.spec, self.job = spec or {}, spec_digest(spec or {})
        self.text_fields, self.stop = tuple(text_fields), stop
        self.out_dir, self.host, self.per_shard, self.batch = out_dir, host_index, records_per_shard, batch
        self.total = min(len(source), limit) if limit else len(source)
        self.pool = concurrent.futures.ThreadPoolExecutor(workers)   # decoding and resizing release the GIL

    def name(self, shard: int) -> str:
        return os.path.join(self.out_dir, f"ids-h{self.host:04d}-{shard:06d}")

    @property
    def num_shards(self) -> int:
        return -(-self.total // self.per_shard)

    def done(self, shard: int) -> dict[str, Any] | None:
        """A finished shard's stats, or None."""
        name = self.name(shard)
        if not (os.path.isfile(name + ".array_record") and os.path.isfile(name + ".json")):
            return None
        with open(name + ".json") as f:
            stats = json.load(f)
        if stats.get("job") != self.job:   # prepare_output checked tokenizer.json; this catches a mixed folder
            raise DataError(f"{name}.array_record was written by another tokenization job than this one (see "
                            f"{self.out_dir}/tokenizer.json); run with --restart to start over, or use a new --out")
        return stats

    def _load(self, index: int) -> tuple[np.ndarray | None, dict[str, Any] | str]:
        """(model input, passthrough fields) or (None, skip reason) for one input record."""
        record = None
        try:
            record = self.source[index]
            if record is None:
                return None, "undecodable"
            check_text(record, self.text_fields)
            return self.prepare(image_of(record)), passthrough(record)
        except Exception as e:  # one bad record never ends a long job: skip it, count it by its class, say why
            name = f" {record_name(record)}" if isinstance(record, dict) else ""
            log.warning("skipping record %d%s: %s: %s", index, name, type(e).__name__, str(e)[:300])
            return None, type(e).__name__

    def write_shard(self, shard: int, progress: Progress, budget: int | None) -> dict[str, Any] | None:
        """Writes shard `shard`; returns its stats, or None when `budget` records ran out first (the shard stays
        unfinished, as in a killed job)."""
        from array_record.python.array_record_module import ArrayRecordWriter

        lo, hi = shard * self.per_shard, min((shard + 1) * self.per_shard, self.total)
        name = self.name(shard)
        writer = ArrayRecordWriter(name + ".array_record.tmp", "group_size:1")
        stats: dict[str, Any] = {"inputs": [lo, hi], "records": 0, "skipped": {}, "job": self.job}
        starts = list(range(lo, hi, self.batch))
        submit = lambda start: [self.pool.submit(self._load, i) for i in range(start, min(start + self.batch, hi))]
        pending = submit(starts[0]) if starts else []
        try:
            for n, start in enumerate(starts):
                if (budget is not None and start - lo >= budget) or (self.stop is not None and self.stop.is_set()):
                    return None
                loaded = [f.result() for f in pending]
                pending = submit(starts[n + 1]) if n + 1 < len(starts) else []   # read ahead while encoding
                kept = [(x, extra) for x, extra in loaded if x is not None]
                for x, reason in loaded:
                    if x is None:
                        stats["skipped"][reason] = stats["skipped"].get(reason, 0) + 1
                if kept:
                    images = np.stack([x for x, _ in kept] + [kept[-1][0]] * (self.batch - len(kept)))
                    codes = np.asarray(self.encode(images)).astype(np.int32)
                    for (_, extra), row in zip(kept, codes):
                        writer.write(records.encode({"ids": row, **extra}))
                stats["records"] += len(kept)
                progress.advance(len(loaded), len(loaded) - len(kept))
        finally:
            writer.close()
        info = os.path.join(self.out_dir, "tokenizer.json")
        if self.spec and not os.path.isfile(info):   # with the first shard, never before (see the module)
            _write_json(info, self.spec)
        _write_json(name + ".json", stats)
        os.replace(name + ".array_record.tmp", name + ".array_record")   # the shard exists only when whole
        return stats

    def run(self, log_every_s: float = 30.0, stop_after: int | None = None) -> dict[str, Any]:
        """Writes every missing shard; the summary of all of them (and of this run's speed)."""
        os.makedirs(self.out_dir, exist_ok=True)
        finished = {k: s for k in range(self.num_shards) if (s := self.done(k)) is not None}
        first_new = sum(s["inputs"][1] - s["inputs"][0] for s in finished.values())
        progress = Progress(self.total, first_new, log_every_s)
        complete = True
        for k in range(self.num_shards):
            if k in finished:
                continue
            budget = None if stop_after is None else stop_after - progress.new
            stats = self.write_shard(k, progress, budget)
            if stats is None:
                complete = False
                break
            finished[k] = stats
        rate = progress.close()
        self.pool.shutdown()
        if complete and not any(s["records"] for s in finished.values()):
            self._remove_empty_output()
        skipped: dict[str, int] = {}
        for s in finished.values():
            for reason, n in s["skipped"].items():
                skipped[reason] = skipped.get(reason, 0) + n
        return {"host": self.host, "shards": len(finished), "of_shards": self.num_shards, "complete": complete,
                "records": sum(s["records"] for s in finished.values()), "inputs": self.total,
                "skipped": skipped, "images_per_s": rate, "new_inputs": progress.new,
                "preempted": bool(self.stop is not None and self.stop.is_set() and not complete)}

    def _remove_empty_output(self) -> None:
        """A job that wrote no record leaves no shards (nor `tokenizer.json`, unless another host wrote shards):
        a rerun on corrected data starts afresh instead of resuming into empty shards."""
        for f in host_files(self.out_dir, self.host):
            os.remove(f)
        info = os.path.join(self.out_dir, "tokenizer.json")
        if os.path.isfile(info) and not host_files(self.out_dir):
            os.remove(info)


def decoded(prepare_array: Prepare) -> Prepare:
    """A Prepare that first decodes encoded bytes or a path (ImageDecodeError names the failure)."""
    def prepare(image: Any) -> np.ndarray:
        if not isinstance(image, np.ndarray):
            image = decode_image(image)
        return prepare_array(image)

    return prepare
