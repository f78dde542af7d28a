"""webdataset tar shards: samples grouped by key, a cached member index (beside the shards or in a cache dir),
damaged and compressed shards, per-host shards through the pipeline's stride, pickling for grain workers."""

from __future__ import annotations

import gzip
import os
import pathlib
import pickle

import grain
import pytest

from mmjax.data import webdataset
from mmjax.data.corpus_writers import write_webdataset
from mmjax.data.sharded import host_local
from mmjax.data.sources import DataError, make_source
from tests.data.corpora import shape_samples, write_corpus


@pytest.fixture
def corpus(tmp_path):
    samples = shape_samples(10, corrupt=(4,), no_image=(7,))
    return samples, write_corpus("webdataset", str(tmp_path / "wds"), samples)


def test_records_are_the_samples_in_order_and_a_sample_without_image_is_none(corpus, caplog):
    samples, cfg = corpus
    source = make_source(cfg)
    assert len(source) == 10
    for i, sample in enumerate(samples):
        record = source[i]
        if i == 7:
            assert record is None
            continue
        shard = os.path.join(os.path.dirname(cfg["pattern"]), f"{i // 5:05d}.tar")
        assert record == {"image": sample["image"], "caption": sample["caption"], "key": sample["key"],
                          "where": f"{shard} sample {sample['key']!r}"}
    assert "no image member (txt, json present)" in caplog.text and "0000007" in caplog.text
    assert sorted(os.listdir(os.path.dirname(cfg["pattern"]))) == [
        "00000.tar", "00000.tar.index.npy", "00001.tar", "00001.tar.index.npy"]


def test_the_index_is_built_once_and_rebuilt_when_the_shard_changes(corpus, monkeypatch):
    samples, cfg = corpus
    make_source(cfg)
    scans = []
    real_scan = webdataset.scan_tar
    monkeypatch.setattr(webdataset, "scan_tar", lambda path: scans.append(path) or real_scan(path))
    assert make_source(cfg)[0]["key"] == samples[0]["key"] and scans == []          # cached
    shard = os.path.join(os.path.dirname(cfg["pattern"]), "00000.tar")
    write_webdataset(shard, samples[:2])
    os.utime(shard, ns=(os.stat(shard).st_atime_ns, os.stat(shard + ".index.npy").st_mtime_ns + 10**9))
    source = make_source(cfg)
    assert scans == [shard] and len(source) == 2 + 5


def test_a_read_only_shard_folder_keeps_its_index_in_the_cache_dir(corpus, tmp_path, monkeypatch):
    samples, cfg = corpus
    monkeypatch.setattr(webdataset.os, "access", lambda path, mode: False)   # root ignores chmod; say read-only
    cache = tmp_path / "cache"
    source = make_source({**cfg, "index_dir": str(cache)})
    assert source[3]["caption"] == samples[3]["caption"]
    assert len(os.listdir(cache)) == 2 and not any(f.endswith(".npy") for f in os.listdir(os.path.dirname(
        cfg["pattern"])))


def test_a_truncated_shard_keeps_the_samples_before_the_damage(tmp_path, caplog):
    samples = shape_samples(6)
    cfg = write_corpus("webdataset", str(tmp_path / "wds"), samples, shards=1)
    shard = cfg["pattern"].replace("*", "00000")
    data = pathlib.Path(shard).read_bytes()
    cut = data.index(f"{samples[4]['key']}.jpg".encode()) + 512 + 10   # inside the 5th sample's image data
    pathlib.Path(shard).write_bytes(data[:cut])
    source = make_source(cfg)
    assert [source[i]["key"] for i in range(len(source))] == [s["key"] for s in samples[:4]]
    assert "is damaged at byte" in caplog.text


def test_a_broken_header_mid_shard_is_reported_not_silently_dropped(tmp_path, caplog):
    samples = shape_samples(6)
    cfg = write_corpus("webdataset", str(tmp_path / "wds"), samples, shards=1)
    shard = cfg["pattern"].replace("*", "00000")
    data = bytearray(pathlib.Path(shard).read_bytes())
    header = data.index(f"{samples[3]['key']}.".encode())   # the name field of sample 3's first header
    data[header:header + 512] = b"\x07" * 512
    pathlib.Path(shard).write_bytes(bytes(data))
    source = make_source(cfg)
    assert len(source) == 3 and "is damaged at byte" in caplog.text


def test_compressed_shards_are_refused_with_the_reason(tmp_path):
    path = tmp_path / "00000.tar.gz"
    path.write_bytes(gzip.compress(b"x" * 100))
    with pytest.raises(DataError, match="gzip-compressed; random access needs uncompressed tar"):
        make_source({"name": "webdataset", "pattern": str(path)})
    with pytest.raises(DataError, match="no webdataset shards match"):
        make_source({"name": "webdataset", "pattern": str(tmp_path / "*.tar")})
    with pytest.raises(Exception, match="unknown field"):
        make_source({"name": "webdataset", "pattern": str(path), "shuffle": True})


def test_each_host_reads_only_its_own_shards_through_the_pipeline_stride(tmp_path):
    samples = shape_samples(13)
    cfg = write_corpus("webdataset", str(tmp_path / "wds"), samples, shards=3)   # 5 + 5 + 3 samples
    keys = lambda part: [s["key"] for s in part]
    expected = {0: keys(samples[:5] + samples[10:]), 1: keys(samples[5:10])}   # shards 0, 2 | shard 1
    for host in (0, 1):
        source = make_source({**cfg, "host_index": host, "host_count": 2})
        mine = grain.MapDataset.source(source)[host::2]     # what pipeline.host_slice takes on host `host`
        assert [r["key"] for r in mine] == expected[host]
        assert [host_local(source)[j]["key"] for j in range(len(host_local(source)))] == expected[host]
        with pytest.raises(DataError, match=f"belongs to host {1 - host}"):
            source[1 - host]
    with pytest.raises(DataError, match="3 shard\\(s\\) for 4 hosts"):
        make_source({**cfg, "host_index": 0, "host_count": 4})


def test_a_pickled_source_reads_the_same_records(corpus):
    _, cfg = corpus
    source = make_source(cfg)
    source[0]
    copy = pickle.loads(pickle.dumps(source))   # what grain's worker processes receive
    assert all(copy[i] == source[i] for i in range(len(source)))
