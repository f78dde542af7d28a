"""parquet sources: image-caption rows (img2dataset columns, the Hugging Face Image struct), row groups decoded
once through the LRU, missing columns refused, per-host files, and parquet text (RefinedWeb's `content`) packed
for the LM task."""

from __future__ import annotations

import os
import pickle

import grain
import ml_collections
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mmjax import configlib
from mmjax.data import packing, pipeline
from mmjax.data.sharded import host_local
from mmjax.data.sources import DataError, make_source
from mmjax.train.tasks.lm import LMTask
from tests.data.corpora import shape_samples, write_corpus
from tests.helpers import REPO


def test_rows_become_image_caption_records_and_a_null_image_is_none(tmp_path, caplog):
    samples = shape_samples(20, corrupt=(3,), no_image=(5,))
    samples[6].pop("caption")
    cfg = write_corpus("parquet", str(tmp_path / "pq"), samples)
    source = make_source({**cfg, "columns": ["key"]})
    assert len(source) == 20
    for i, sample in enumerate(samples):
        if i == 5:
            assert source[i] is None
            continue
        record = source[i]
        assert record.pop("where") == source.local.rows.where(i)
        assert record == {k: sample[k] for k in ("key", "image", "caption") if k in sample}
    assert "without image bytes" in caplog.text and "row group 0 row 5" in caplog.text


def test_consecutive_rows_decode_each_row_group_once(tmp_path):
    cfg = write_corpus("parquet", str(tmp_path / "pq"), shape_samples(40), shards=1)   # 5 groups of 8
    source = host_local(make_source({**cfg, "cache_row_groups": 2}))
    for i in range(40):
        source[i]
    assert source.rows.decodes == 5
    for i in (0, 39, 1, 16, 39):   # LRU of 2: 0 misses (4 kept), 39 and 1 hit, 16 misses (evicts 4), 39 misses
        source[i]
    assert source.rows.decodes == 8
    copy = pickle.loads(pickle.dumps(source))   # grain workers: the same rows, an empty cache of their own
    assert copy[17] == source[17] and copy.rows.decodes == 8 + 1   # its cache started empty


def test_the_hugging_face_image_struct_and_missing_columns(tmp_path):
    samples = shape_samples(4)
    images = pa.array([{"bytes": s["image"], "path": f"{i}.jpg"} for i, s in enumerate(samples)])
    pq.write_table(pa.table({"image": images, "text": [s["caption"] for s in samples]}), tmp_path / "a.parquet")
    cfg = {"name": "parquet", "pattern": str(tmp_path / "*.parquet")}
    source = make_source({**cfg, "image_column": "image", "caption_column": "text"})
    assert source[2] == {"image": samples[2]["image"], "caption": samples[2]["caption"],
                         "where": f"{tmp_path / 'a.parquet'} row group 0 row 2"}
    with pytest.raises(DataError, match=r"has no column\(s\) \['caption', 'jpg'\]; its columns: \['image', 'text'\]"):
        make_source(cfg)
    (tmp_path / "b.parquet").write_bytes(b"not parquet")
    with pytest.raises(DataError, match=r"b\.parquet is not a readable parquet file"):
        make_source({**cfg, "image_column": "image", "caption_column": "text"})


def test_each_host_reads_only_its_own_files(tmp_path):
    samples = shape_samples(12)
    cfg = write_corpus("parquet", str(tmp_path / "pq"), samples, shards=3)   # 4 rows per file
    for host, files in ((0, (0, 2)), (1, (1,))):
        source = make_source({**cfg, "host_index": host, "host_count": 2, "columns": ["key"]})
        mine = grain.MapDataset.source(source)[host::2]
        assert [r["key"] for r in mine] == [s["key"] for f in files for s in samples[4 * f:4 * f + 4]]


def test_parquet_text_is_packed_by_the_lm_task_and_grouped_per_host(tmp_path):
    docs = [f"document number {i} " * (1 + i % 4) for i in range(30)]
    docs[7] = None
    for k in range(2):   # RefinedWeb's layout: the text in `content`, other columns beside it
        part = docs[15 * k:15 * (k + 1)]
        pq.write_table(pa.table({"content": pa.array(part, pa.string()), "url": [f"u{i}" for i in range(15)]}),
                       tmp_path / f"rw-{k}.parquet", row_group_size=4)
    cfg = {"name": "parquet", "pattern": str(tmp_path / "rw-*.parquet"), "text_field": "content"}
    documents = packing.make_document_source(cfg)
    assert [documents[i] for i in range(30)] == docs
    groups = packing.document_groups(documents, 4)
    assert [t for g in range(len(groups)) for t in groups[g]["texts"]][:15] == docs[:15]
    for host in (0, 1):   # each host groups its own file's documents: no group spans two hosts
        split = packing.document_groups(packing.make_document_source({**cfg, "host_index": host,
                                                                       "host_count": 2}), 4)
        mine = list(grain.MapDataset.source(split)[host::2])
        assert [t for g in mine for t in g["texts"]] == docs[15 * host:15 * (host + 1)]

    config = configlib.load_config_file(os.path.join(REPO, "configs/lm/tiny.py"))
    config.data.train = config.data.eval = ml_collections.ConfigDict(cfg)
    task = LMTask(config)   # the LM task's own source + preprocess: tokenize and pack groups of 12 documents
    batches = pipeline.train_dataset(task.source("train"), task.preprocess, global_batch_size=3, seed=0,
                                     counter=pipeline.SkipCounter())
    batch = next(iter(batches))   # the 3 groups of one epoch: every document once
    assert int(batch["documents"].sum()) == 29 and int(batch["bad_documents"].sum()) == 1
    packed = {int(t) for t in batch["tokens"][batch["weights"] > 0]}
    assert packed <= set(task.tokenizer.encode("".join(d for d in docs if d))) | {task.tokenizer.bos_id}
    assert task.unigram_baseline()["unigram_entropy"] > 0
