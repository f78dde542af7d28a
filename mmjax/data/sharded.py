"""Sharded corpora on several hosts: each host opens, indexes and reads only its own shards.

Shard k of a corpus (its files in sorted path order) belongs to host k % host_count. The trainer's pipeline takes
host p's share of any source as the record stride `ds[p::P]` (`mmjax.data.pipeline.host_slice`), so a sharded
source numbers its records to make exactly that stride land on the host's own shards: global record g = j * P + p
is host p's local record j. A host therefore needs to know nothing about the other hosts' shards (no shared index,
no cross-host listing beyond the glob): its source reports P * n_local records, and asking it for a record of
another host is a bug that raises. Hosts with more local records have longer epochs; since training iterators
repeat forever every host still makes the same number of batches. Evaluation on several hosts needs the same
number of batches on every host: give eval splits an example limit (records are taken from the front, i.e. the
same count from each host) or hosts equal shares.

Consumers that index a source directly instead of through the pipeline (Show-o's bundles draw rows at random)
use `host_local(source)`: this host's records numbered 0 .. n_local - 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mmjax.data.sources import DataError


def host_share(host_index: int = -1, host_count: int = -1) -> tuple[int, int]:
    """(this host's index, the number of hosts): the given values, or JAX's process index / count for -1."""
    if host_index < 0 or host_count < 0:
        import jax

        host_index = jax.process_index() if host_index < 0 else host_index
        host_count = jax.process_count() if host_count < 0 else host_count
    if not 0 <= host_index < host_count:
        raise DataError(f"host_index {host_index} is not in [0, host_count={host_count})")
    return host_index, host_count


def own_shards(paths: Sequence[Any], host_index: int, host_count: int, what: str) -> list[Any]:
    """This host's shards: every host_count-th of `paths` (sorted glob results; a folder's files) from
    host_index."""
    if len(paths) < host_count:
        raise DataError(f"{what}: {len(paths)} shard(s) for {host_count} hosts; every host needs at least one "
                        "shard (write more, smaller shards)")
    return list(paths[host_index::host_count])


class HostStrided:
    """A host-local source as the global numbering the pipeline's host stride expects (see the module)."""

    def __init__(self, local: Any, host_index: int, host_count: int):
        self.local, self.host_index, self.host_count = local, host_index, host_count

    def __len__(self) -> int:
        return self.host_count * len(self.local)

    def __getitem__(self, index: int) -> Any:
        j, host = divmod(int(index), self.host_count)
        if host != self.host_index:
            raise DataError(f"record {index} belongs to host {host}; host {self.host_index} reads only its own "
                            "shards (index through pipeline.host_slice, or use sharded.host_local)")
        return self.local[j]


def host_local(source: Any) -> Any:
    """The records this host reads, numbered from 0: a sharded source's own shards, any other source itself."""
    return source.local if isinstance(source, HostStrided) else source


def moved_position(saved: dict[str, Any], saved_count: int, global_batch_size: int) -> dict[str, Any]:
    """A training iterator position saved by one of `saved_count` processes, for a process of this run's count.

    Every host takes its rows of each global batch (`pipeline.host_rows`), so a saved position j (records of the
    host's share, skipped ones included) is j // (B / saved_count) whole global batches on every host; the hosts of
    the new run start at that global batch. Exact unless the saved host was inside a batch (it had skipped records,
    whose replacements came from the next global batch); sharded sources cannot move (their shares change).
    """
    _, hosts = host_share()
    if set(saved) != {"next_index"}:
        raise DataError(f"cannot move a data position of this form to another process count: {saved}")
    batches = int(saved["next_index"]) // (global_batch_size // saved_count)
    return {"next_index": batches * (global_batch_size // hosts)}
