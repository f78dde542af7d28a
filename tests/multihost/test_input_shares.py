"""Each host's share of the input, checked by record keys without starting several processes (the host index and
count are given, or JAX's are patched): disjoint shares whose union is the corpus for the sharded sources
(webdataset, parquet, imagefolder) and for the pipeline's split of every other source, also with shard counts that
are not multiples of the host count; a host without a shard is refused; pre-tokenization writes each record once;
a data position moves between process counts."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from mmjax.data import pipeline, sharded
from mmjax.data.sources import DataError, make_source
from mmjax.pretokenize import host_records
from tests.data.corpora import shape_samples, write_corpus

SHARDED = ("webdataset", "parquet", "imagefolder")


@pytest.fixture(scope="module")
def samples():
    found = shape_samples(7)
    assert len({s["image"] for s in found}) == 7   # the image bytes are the record keys
    return found


def shares(cfg: dict, hosts: int) -> list[list[bytes]]:
    return [[r["image"] for r in sharded.host_local(make_source({**cfg, "host_index": h, "host_count": hosts}))]
            for h in range(hosts)]


@pytest.mark.parametrize("kind", SHARDED)
def test_sharded_sources_split_into_disjoint_host_shares_covering_the_corpus(kind, samples, tmp_path):
    cfg = write_corpus(kind, str(tmp_path / kind), samples, shards=3)   # imagefolder: one shard per image
    everything = sorted(s["image"] for s in samples)
    for hosts in (1, 2, 3):                                               # 3 shards over 2 hosts: 2 + 1
        found = shares(cfg, hosts)
        assert sorted(k for share in found for k in share) == everything, hosts
        assert all(found), hosts
        pretokenized = [[r["image"] for r in host_records(cfg, h, hosts)] for h in range(hosts)]
        assert pretokenized == found
    if kind != "imagefolder":
        with pytest.raises(DataError, match="3 shard\\(s\\) for 4 hosts; every host needs at least one shard"):
            shares(cfg, 4)


def test_pretokenizing_an_unsharded_source_writes_each_record_once():
    cfg = {"name": "shapes", "resolution": 8, "num_records": 11, "seed": 0}
    whole = [r["caption"] + str(np.asarray(r["image"]).tobytes()) for r in host_records(cfg, 0, 1)]
    split = [r["caption"] + str(np.asarray(r["image"]).tobytes()) for h in range(3) for r in host_records(cfg, h, 3)]
    assert sorted(split) == sorted(whole) and len(split) == 11


def local_batches(monkeypatch, records: int, global_batch: int, host: int, hosts: int, steps: int) -> list:
    monkeypatch.setattr(jax, "process_index", lambda: host)
    monkeypatch.setattr(jax, "process_count", lambda: hosts)
    source = [{"key": i} for i in range(records)]
    data = pipeline.train_dataset(source, lambda r, rng: {"key": np.int64(r["key"])}, global_batch_size=global_batch,
                                  seed=3, counter=pipeline.SkipCounter())
    it = iter(data)
    return [next(it)["key"] for _ in range(steps)]


@pytest.mark.parametrize("records,global_batch,hosts", [(24, 6, 2), (27, 9, 3), (25, 4, 2)])
def test_hosts_take_their_rows_of_the_one_process_batches(monkeypatch, records, global_batch, hosts):
    steps = 2 * records // global_batch + 1                     # past an epoch boundary
    single = local_batches(monkeypatch, records, global_batch, 0, 1, steps)
    per_host = [local_batches(monkeypatch, records, global_batch, h, hosts, steps) for h in range(hosts)]
    for k in range(steps):
        np.testing.assert_array_equal(np.concatenate([p[k] for p in per_host]), single[k])
    epoch = np.concatenate(single)[:records]
    assert sorted(epoch.tolist()) == list(range(records))      # the first `records` rows are one epoch


def test_a_sharded_source_is_read_by_its_own_host_only(monkeypatch, samples, tmp_path):
    cfg = write_corpus("webdataset", str(tmp_path / "wds"), samples, shards=3)
    for host, count in ((0, 4), (1, 3)):                        # shards {0, 2} and {1}: 3 + 1 and 3 records
        monkeypatch.setattr(jax, "process_index", lambda h=host: h)
        monkeypatch.setattr(jax, "process_count", lambda: 2)
        source = make_source(cfg)
        assert len(sharded.host_local(source)) == count
        data = pipeline.train_dataset(source, lambda r, rng: {"key": np.frombuffer(r["key"].encode(), np.uint8)},
                                      global_batch_size=2, seed=0, counter=pipeline.SkipCounter())
        it = iter(data)
        keys = {bytes(row).decode() for _ in range(count) for row in next(it)["key"]}
        assert keys == {r["key"] for r in sharded.host_local(source)}


def test_a_data_position_moves_between_process_counts():
    assert sharded.moved_position({"next_index": 48}, 2, 32) == {"next_index": 96}      # 2 hosts -> 1, 3 batches
    assert sharded.moved_position({"next_index": 96}, 1, 32) == {"next_index": 96}
    with pytest.raises(DataError, match="cannot move"):
        sharded.moved_position({"next_index": 4, "epoch": 1}, 2, 32)


@pytest.mark.parametrize("records,skipped", [(17, ()), (40, (0, 2, 4, 6, 8, 10, 12))])
def test_every_host_evaluates_its_share_in_the_same_number_of_batches(monkeypatch, records, skipped):
    """Evaluation is a collective per batch: a host with fewer batches would leave the others waiting."""
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    source = [{"key": i} for i in range(records)]
    preprocess = lambda r, rng: None if r["key"] in skipped else {"key": np.int64(r["key"])}
    per_host = []
    for host in range(2):
        monkeypatch.setattr(jax, "process_index", lambda h=host: h)
        per_host.append(list(pipeline.eval_batches(source, preprocess, global_batch_size=16,
                                                   counter=pipeline.SkipCounter())))
    assert len(per_host[0]) == len(per_host[1])
    keys = [int(k) for batches in per_host for b in batches for k, v in zip(b["key"], b["valid"]) if v]
    assert sorted(keys) == [i for i in range(records) if i not in skipped]


def test_the_hosts_eval_batches_stack_into_the_one_process_batches(monkeypatch):
    """Row for row, so per-row randomness in an evaluation (D3PM's noise) is the same on any number of hosts."""
    source = [{"key": i} for i in range(21)]
    preprocess = lambda r, rng: {"key": np.int64(r["key"])}
    batches = lambda: list(pipeline.eval_batches(source, preprocess, global_batch_size=8,
                                                 counter=pipeline.SkipCounter()))
    single = batches()
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    per_host = []
    for host in range(2):
        monkeypatch.setattr(jax, "process_index", lambda h=host: h)
        per_host.append(batches())
    assert len(per_host[0]) == len(per_host[1]) == len(single) == 3
    for k, whole in enumerate(single):
        valid = np.concatenate([h[k]["valid"] for h in per_host])
        np.testing.assert_array_equal(valid, whole["valid"])
        np.testing.assert_array_equal(np.concatenate([h[k]["key"] for h in per_host])[valid > 0],
                                      whole["key"][whole["valid"] > 0])
