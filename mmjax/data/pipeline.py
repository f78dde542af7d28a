"""grain input pipelines: per-host sharding, seeded shuffling, preprocessing, skip-and-count, batching, prefetch.

A task supplies a random-access source and `preprocess(record, rng) -> dict of numpy arrays | None` (rng is a
`np.random.Generator` during training and None during evaluation). Records that fail are skipped and counted by
reason, never silently lost: the reason is the class name of the exception `preprocess` raised, "undecodable" for a
source that returned None, "rejected" for `preprocess` returning None. The first few skips of each reason are
logged with their message, prefixed by where the record comes from (`record_where`: shard / file and key / row),
then every `LOG_EVERY`-th with the running count.

A training pipeline that skips nearly everything would spin forever, so it stops with `DataStarvedError`, naming
the reasons with an example record each, once the `StarvationLimits` are exceeded (early: more than half of about
the first 100 records). An empty source is refused before the pipeline starts. Skips are counted where records
are processed (grain's threads, or with `worker_count > 0` each worker process in its own copy of the counter),
so every batch carries the new counts of the process that built it (`SKIPS_KEY`) and the consumer adds them to
the trainer's counter: the counts reach the trainer in both modes.

On several hosts, each host takes its rows of every global batch of one global order (`host_rows`), so P hosts
train on exactly the batches one process would; a sharded source (`sharded.HostStrided`) is split by host first
and each host shuffles its own shards.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
from collections.abc import Callable, Iterator
from typing import Any

import grain
import jax
import numpy as np

from mmjax.data import sharded
from mmjax.data.sources import DataError

log = logging.getLogger(__name__)
Preprocess = Callable[[dict[str, Any], np.random.Generator | None], dict[str, np.ndarray] | None]
SKIPS_KEY = "_skipped"   # a batch's skip counts, from the process that built it; removed before the trainer sees it
# A preprocess that draws several records per element (Show-o's bundles) may return its own accounting under this
# key: {"kept": records used, "skipped": [(reason, detail), ...] records it dropped and replaced}; counted as records.
RECORDS_KEY = "_records"
LOG_FIRST, LOG_EVERY = 3, 1000


class DataStarvedError(DataError):
    """The training data yields (almost) nothing but skipped records; the message names the reasons."""


@dataclasses.dataclass(frozen=True)
class StarvationLimits:
    """When a training pipeline gives up: `max_consecutive` skips in a row, or more than `max_fraction` of the
    records read once at least `check_after` were read, or, early, more than `early_fraction` of about the first
    `early_records` (a misnamed field or a wrong decode skips nearly everything from the start: say so within
    seconds, not after a thousand records). 0 / 1.0 disable the respective test."""

    max_consecutive: int = 1000
    max_fraction: float = 0.9
    check_after: int = 1000
    early_records: int = 100
    early_fraction: float = 0.5


class SkipCounter:
    """Counts skipped (and kept) records by reason, thread-safe; with limits, raises when the input is starved."""

    def __init__(self, limits: StarvationLimits | None = None):
        self._lock = threading.Lock()
        self.limits = limits
        self.counts: dict[str, int] = {}
        self.examples: dict[str, str] = {}   # the first message of each reason, for the starvation error
        self.kept = 0
        self.consecutive = 0
        self.early_checked = False
        self._reported: dict[str, int] = {}

    def __getstate__(self) -> dict:
        return {"limits": self.limits, "counts": dict(self.counts), "examples": dict(self.examples),
                "kept": self.kept}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["limits"])
        self.counts, self.examples, self.kept = state["counts"], state["examples"], state["kept"]

    def add(self, reason: str, detail: str | None = None) -> int:
        """Counts one skipped record; returns how many of this reason so far."""
        with self._lock:
            self.counts[reason] = n = self.counts.get(reason, 0) + 1
            self.consecutive += 1
            if detail is not None:
                self.examples.setdefault(reason, detail)
            return n

    def keep(self) -> None:
        with self._lock:
            self.kept += 1
            self.consecutive = 0

    def merge(self, counts: dict[str, int]) -> None:
        """Adds counts made elsewhere (another thread's or process's counter)."""
        with self._lock:
            for reason, n in counts.items():
                self.counts[reason] = self.counts.get(reason, 0) + n

    def take_new(self) -> dict[str, int]:
        """The counts added since the previous call (what the next batch carries to the consumer)."""
        with self._lock:
            new = {k: n - self._reported.get(k, 0) for k, n in self.counts.items() if n > self._reported.get(k, 0)}
            self._reported = dict(self.counts)
            return new

    def snapshot(self) -> dict[str, int]:
        """A copy of the counts, safe to read while other threads count."""
        with self._lock:
            return dict(self.counts)

    @property
    def total(self) -> int:
        return sum(self.snapshot().values())

    def check_starved(self) -> None:
        """Raises DataStarvedError when the limits are exceeded (never without limits)."""
        lim = self.limits
        if lim is None:
            return
        with self._lock:
            skipped = sum(self.counts.values())
            seen = skipped + self.kept
            # checked at each skip from the `early_records`-th record on, until twice that many were read
            early = bool(lim.early_records) and not self.early_checked and seen >= lim.early_records
            self.early_checked = self.early_checked or seen >= 2 * lim.early_records
            if lim.max_consecutive and self.consecutive >= lim.max_consecutive:
                why = f"the last {self.consecutive} records were all skipped"
            elif early and skipped > lim.early_fraction * seen:
                why = f"{skipped} of the first {seen} records ({skipped / seen:.0%}) were skipped"
            elif seen >= max(lim.check_after, 1) and skipped > lim.max_fraction * seen:
                why = f"{skipped} of {seen} records ({skipped / seen:.0%}) were skipped"
            else:
                return
            reasons = "; ".join(f"{k} x{n}" + (f" (e.g. {self.examples[k]})" if k in self.examples else "")
                                for k, n in sorted(self.counts.items(), key=lambda kv: -kv[1]))
        raise DataStarvedError(
            f"training data starved: {why}. Reasons: {reasons}. Fix the data or its preprocessing (limits: "
            f"config.data_max_consecutive_skips={lim.max_consecutive}, data_max_skip_fraction={lim.max_fraction}; "
            f"more than {lim.early_fraction:.0%} of the first {lim.early_records} records).")


def skip(counter: SkipCounter, reason: str, detail: str | None = None) -> None:
    """Counts a skipped record, logs it (the first few of a reason with `detail`, then every LOG_EVERY-th with
    the count) and stops a starved pipeline."""
    n = counter.add(reason, detail)
    if (detail is not None and n <= LOG_FIRST) or n % LOG_EVERY == 0:
        log.warning("skipping a record: %s%s (%d skipped for this reason so far%s)", reason,
                    f": {detail}" if detail is not None else "", n,
                    f"; showing every {LOG_EVERY}th from now" if n == LOG_FIRST else "", extra={"rate_limited": True})
    counter.check_starved()


class _CountUndecodable:
    """Wraps a source whose undecodable records come back as None (they already logged where), counting them."""

    def __init__(self, source: Any, counter: SkipCounter):
        self.source, self.counter = source, counter

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> Any:
        record = self.source[index]
        if record is None:  # grain drops None elements without calling the later transforms
            skip(self.counter, "undecodable")
        return record


def record_where(record: Any) -> str:
    """Where a record comes from, for messages: its source's "where" (shard / file and key / row), else its key,
    path or id; "" when it carries none."""
    if not isinstance(record, dict):
        return ""
    for field in ("where", "key", "path", "id"):
        if isinstance(record.get(field), str | int) and str(record[field]):
            return str(record["where"]) if field == "where" else f"record {field} {record[field]!r}"
    return ""


def _safe(fn: Preprocess, counter: SkipCounter) -> Callable[..., dict[str, np.ndarray] | None]:
    def apply(record: Any, rng: np.random.Generator | None = None) -> dict[str, np.ndarray] | None:
        try:
            out = fn(record, rng)
        except Exception as e:  # a bad record must not end a long run: skip it, count it, say why
            message, where = f"{e}", record_where(record)
            if where and where not in message:
                message = f"{where}: {message}"
            skip(counter, type(e).__name__, message[:400])
            return None
        if out is None:
            skip(counter, "rejected")
            return None
        records = out.pop(RECORDS_KEY, None)
        if records is None:
            counter.keep()
            return out
        for reason, detail in records["skipped"]:
            skip(counter, reason, detail)
        for _ in range(int(records["kept"])):
            counter.keep()
        return out

    return apply


class _AttachSkips:
    """Puts the counts its process made since the previous batch into the batch (runs where batches are built)."""

    def __init__(self, counter: SkipCounter):
        self.counter = counter

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        return {**batch, SKIPS_KEY: self.counter.take_new()}


class _CollectSkips:
    """Moves a batch's carried counts into the consumer's counter (runs in the consuming process)."""

    def __init__(self, counter: SkipCounter):
        self.counter = counter

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        batch = dict(batch)
        self.counter.merge(batch.pop(SKIPS_KEY))
        return batch


def _worker_logging(worker_index: int, worker_count: int) -> None:
    """grain worker processes start without logging handlers: give them the commands' (rate-limited) logging."""
    from mmjax.cli import setup_logging

    setup_logging()


def host_slice(ds: grain.MapDataset) -> grain.MapDataset:
    """This host's share of a data set (every host reads a disjoint slice)."""
    if jax.process_count() == 1:
        return ds
    return ds[jax.process_index()::jax.process_count()]


class _HostRows:
    """Record j of host p's share: row j % b of global batch j // b, i.e. global record (j // b) * B + p * b + j % b
    (B = P * b); a callable object so that grain's worker processes can pickle it."""

    def __init__(self, ds: grain.MapDataset, host: int, local: int, hosts: int):
        self.ds, self.host, self.local, self.hosts = ds, host, local, hosts

    def __call__(self, j: int) -> Any:
        block, row = divmod(int(j), self.local)
        return self.ds[block * self.local * self.hosts + self.host * self.local + row]


def host_rows(ds: grain.MapDataset, global_batch_size: int) -> grain.MapDataset:
    """This host's rows of every global batch of `ds`, in order: the hosts' local batches stacked in process order
    are the global batch one process would make, row for row (same records, same per-row randomness in the step).
    """
    hosts = jax.process_count()
    if hosts == 1:
        return ds
    local = local_batch_size(global_batch_size)
    return grain.MapDataset.range(len(ds) // hosts).map(_HostRows(ds, jax.process_index(), local, hosts))


def local_batch_size(global_batch_size: int) -> int:
    if global_batch_size % jax.process_count():
        raise ValueError(f"batch size {global_batch_size} not divisible by {jax.process_count()} hosts")
    return global_batch_size // jax.process_count()


def train_dataset(source: Any, preprocess: Preprocess, *, global_batch_size: int, seed: int,
                  counter: SkipCounter, worker_count: int = 0,
                  limits: StarvationLimits | None = StarvationLimits()) -> grain.IterDataset:
    """Infinite, shuffled (new order every epoch), augmented and batched; its iterator state is checkpointable.

    `counter` receives the skip counts of the batches as they are consumed; `limits` stop a starved pipeline.
    """
    if not len(source):
        raise DataError("the training data has no records (an empty corpus: check config.data.train)")
    local = SkipCounter(limits)   # where the records are processed: copied into each worker process
    ds = grain.MapDataset.source(_CountUndecodable(source, local))
    sharded_source = isinstance(source, sharded.HostStrided)   # a host can read only its own shards
    ds = (host_slice(ds) if sharded_source else ds).seed(seed).shuffle().repeat()
    ds = ds.random_map(_safe(preprocess, local)).filter(lambda x: x is not None)
    if not sharded_source:   # one global order, each host taking its rows of every global batch
        ds = host_rows(ds, global_batch_size)
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=64))
    it = it.batch(local_batch_size(global_batch_size), drop_remainder=True).map(_AttachSkips(local))
    if worker_count > 0:
        from absl import flags

        if not flags.FLAGS.is_parsed():  # grain's workers read absl flags; mmjax's CLI does not use absl
            flags.FLAGS.mark_as_parsed()
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count), worker_init_fn=_worker_logging)
    return it.map(_CollectSkips(counter))


def eval_batches(source: Any, preprocess: Preprocess, *, global_batch_size: int, counter: SkipCounter,
                 limit: int | None = None) -> Iterator[dict[str, np.ndarray]]:
    """One pass in order; the last batch is padded to full size with `valid` = 0 rows so shapes never change.

    On several hosts each host takes its rows of every global batch (as `host_rows`), so the hosts' batches stack
    into the one-process batches row for row; a sharded source is split by host (`host_slice`). Every host yields
    the same number of batches (each batch is one global step of collectives), padding with all-invalid batches.
    """
    ds = grain.MapDataset.source(_CountUndecodable(source, counter))
    if limit is not None:
        ds = ds[: min(limit, len(ds))]
    bs = local_batch_size(global_batch_size)
    if jax.process_count() == 1 or isinstance(source, sharded.HostStrided):
        batches = math.ceil(math.ceil(len(ds) / jax.process_count()) / bs)   # for the host with the largest share
        ds = host_slice(ds)
    else:
        batches = math.ceil(len(ds) / global_batch_size)
        mine = [g for g in range(len(ds)) if (g % global_batch_size) // bs == jax.process_index()]
        ds = grain.MapDataset.source(mine).map(ds.__getitem__)
    ds = ds.map(lambda r: _safe(preprocess, counter)(r, None)).filter(lambda x: x is not None)
    batch = None
    for batch in ds.to_iter_dataset().batch(bs, drop_remainder=False):
        n = len(next(iter(batch.values())))
        if n < bs:
            batch = {k: np.concatenate([v, np.repeat(v[-1:], bs - n, axis=0)]) for k, v in batch.items()}
        batch["valid"] = (np.arange(bs) < n).astype(np.float32)
        batches -= 1
        yield batch
    while batches > 0 and batch is not None and jax.process_count() > 1:
        batches -= 1
        yield {**batch, "valid": np.zeros(bs, np.float32)}
