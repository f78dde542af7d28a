"""imagefolder sources: a captions JSONL (metadata.jsonl by default) or `.txt` sidecars; missing files and bad
lines come back as None; files split across hosts."""

from __future__ import annotations

import json
import os

import grain
import pytest

from mmjax.data import corpus_writers as cw
from mmjax.data.sources import DataError, make_source
from tests.data.corpora import shape_samples, write_corpus


def test_metadata_jsonl_records_and_bad_lines(tmp_path, caplog):
    samples = shape_samples(6, corrupt=(2,))
    cfg = write_corpus("imagefolder", str(tmp_path / "folder"), samples)
    with open(tmp_path / "folder" / "metadata.jsonl", "a") as f:
        f.write("{broken\n" + json.dumps({"file_name": "gone.jpg", "caption": "x"}) + "\n")
    source = make_source(cfg)
    assert len(source) == 8
    for i, sample in enumerate(samples):
        assert source[i] == {"image": sample["image"], "caption": sample["caption"],
                             "path": f"{sample['key']}.{cw.image_ext(sample['image'])}",
                             "where": f"{tmp_path / 'folder' / 'metadata.jsonl'} line {i + 1}"}
    assert source[6] is None and source[7] is None
    assert "metadata.jsonl line 7" in caplog.text and "gone.jpg" in caplog.text


def test_sidecar_captions_in_nested_folders(tmp_path):
    samples = shape_samples(4)
    cw.write_imagefolder(str(tmp_path / "b"), samples[:2], captions="sidecar")
    cw.write_imagefolder(str(tmp_path / "a" / "deeper"), samples[2:], captions="sidecar")
    os.remove(tmp_path / "a" / "deeper" / f"{samples[3]['key']}.txt")
    source = make_source({"name": "imagefolder", "root": str(tmp_path)})
    records = [source[i] for i in range(len(source))]
    assert [r["path"].split(".")[0] for r in records] == [
        f"a/deeper/{samples[2]['key']}", f"a/deeper/{samples[3]['key']}", f"b/{samples[0]['key']}",
        f"b/{samples[1]['key']}"]
    assert records[0]["caption"] == samples[2]["caption"] and "caption" not in records[1]
    assert records[2]["image"] == samples[0]["image"]


def test_hosts_split_the_files_and_bad_options_are_refused(tmp_path):
    samples = shape_samples(5)
    cfg = write_corpus("imagefolder", str(tmp_path / "folder"), samples)
    for host in (0, 1):
        source = make_source({**cfg, "host_index": host, "host_count": 2})
        assert [r["caption"] for r in grain.MapDataset.source(source)[host::2]] == [
            s["caption"] for s in samples[host::2]]
    with pytest.raises(DataError, match="is not a directory"):
        make_source({"name": "imagefolder", "root": str(tmp_path / "nope")})
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images"):
        make_source({"name": "imagefolder", "root": str(tmp_path / "empty")})
