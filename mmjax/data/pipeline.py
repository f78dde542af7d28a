"""grain input pipelines: per-host sharding, seeded shuffling, preprocessing, skip-and-count, batching, prefetch.

A task supplies a random-access source and `preprocess(record, rng) -> dict of numpy arrays | None` (rng is a
`np.random.Generator` during training and None during evaluation). Records that fail to decode or preprocess are
skipped and counted (`SkipCounter`), never silently lost: the trainer logs the count with the metrics.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

import grain
import jax
import numpy as np

log = logging.getLogger(__name__)
Preprocess = Callable[[dict[str, Any], np.random.Generator | None], dict[str, np.ndarray] | None]


class SkipCounter:
    """Counts skipped records by reason; shared by the pipeline's transforms (thread-safe).

    With `data_workers > 0` each grain worker process counts (and logs) its own skips in its own copy.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self.counts: dict[str, int] = {}

    def __getstate__(self) -> dict:
        return {"counts": dict(self.counts)}

    def __setstate__(self, state: dict) -> None:
        self._lock, self.counts = threading.Lock(), state["counts"]

    def add(self, reason: str) -> None:
        with self._lock:
            self.counts[reason] = self.counts.get(reason, 0) + 1

    @property
    def total(self) -> int:
        return sum(self.counts.values())


class _CountUndecodable:
    """Wraps a source whose undecodable records come back as None (they already logged where), counting them."""

    def __init__(self, source: Any, counter: SkipCounter):
        self.source, self.counter = source, counter

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> Any:
        record = self.source[index]
        if record is None:
            self.counter.add("undecodable")
        return record


def _safe(fn: Preprocess, counter: SkipCounter) -> Callable[..., dict[str, np.ndarray] | None]:
    def apply(record: Any, rng: np.random.Generator | None = None) -> dict[str, np.ndarray] | None:
        try:
            out = fn(record, rng)
        except Exception as e:  # a bad record must not end a long run: skip it, count it, say why once
            counter.add(type(e).__name__)
            if counter.counts[type(e).__name__] <= 3:
                log.warning("skipping a record: %s: %s", type(e).__name__, e)
            return None
        if out is None:
            counter.add("rejected")
        return out

    return apply


def host_slice(ds: grain.MapDataset) -> grain.MapDataset:
    """This host's share of a data set (every host reads a disjoint slice)."""
    if jax.process_count() == 1:
        return ds
    return ds[jax.process_index()::jax.process_count()]


def local_batch_size(global_batch_size: int) -> int:
    if global_batch_size % jax.process_count():
        raise ValueError(f"batch size {global_batch_size} not divisible by {jax.process_count()} hosts")
    return global_batch_size // jax.process_count()


def train_dataset(source: Any, preprocess: Preprocess, *, global_batch_size: int, seed: int,
                  counter: SkipCounter, worker_count: int = 0) -> grain.IterDataset:
    """Infinite, shuffled (new order every epoch), augmented and batched; its iterator state is checkpointable."""
    ds = host_slice(grain.MapDataset.source(_CountUndecodable(source, counter))).seed(seed).shuffle().repeat()
    ds = ds.random_map(_safe(preprocess, counter)).filter(lambda x: x is not None)
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=64))
    it = it.batch(local_batch_size(global_batch_size), drop_remainder=True)
    if worker_count > 0:
        from absl import flags

        if not flags.FLAGS.is_parsed():  # grain's workers read absl flags; mmjax's CLI does not use absl
            flags.FLAGS.mark_as_parsed()
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
    return it


def eval_batches(source: Any, preprocess: Preprocess, *, global_batch_size: int, counter: SkipCounter,
                 limit: int | None = None) -> Iterator[dict[str, np.ndarray]]:
    """One pass in order; the last batch is padded to full size with `valid` = 0 rows so shapes never change."""
    ds = grain.MapDataset.source(_CountUndecodable(source, counter))
    if limit is not None:
        ds = ds[: min(limit, len(ds))]
    ds = host_slice(ds).map(lambda r: _safe(preprocess, counter)(r, None)).filter(lambda x: x is not None)
    bs = local_batch_size(global_batch_size)
    for batch in ds.to_iter_dataset().batch(bs, drop_remainder=False):
        n = len(next(iter(batch.values())))
        if n < bs:
            batch = {k: np.concatenate([v, np.repeat(v[-1:], bs - n, axis=0)]) for k, v in batch.items()}
        batch["valid"] = (np.arange(bs) < n).astype(np.float32)
        yield batch
