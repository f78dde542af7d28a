"""JSON-lines records (`make_source` name "jsonl"): one object per non-empty line, anything else None and logged;
and one host's share of a source that is not sharded (`pretokenize.host_records`)."""

from __future__ import annotations

import json

import pytest

from mmjax.data.sources import DataError, make_source
from mmjax.pretokenize import host_records


def test_lines_are_records_and_bad_lines_are_none(tmp_path, caplog):
    lines = [json.dumps({"text": "first", "n": 1}), "", "{broken", json.dumps([1, 2]), json.dumps({"text": "last"})]
    (tmp_path / "a.jsonl").write_text("\n".join(lines))   # no trailing newline
    source = make_source({"name": "jsonl", "pattern": str(tmp_path / "*.jsonl")})
    path = tmp_path / "a.jsonl"
    assert [source[i] for i in range(len(source))] == [{"text": "first", "n": 1, "where": f"{path}, byte 0"}, None,
                                                       None, {"text": "last", "where": f"{path}, byte 42"}]
    assert "a.jsonl, byte" in caplog.text and "not an object" in caplog.text
    with pytest.raises(DataError, match="no JSONL files"):
        make_source({"name": "jsonl", "pattern": str(tmp_path / "*.json")})
    with pytest.raises(Exception, match="unknown field"):
        make_source({"name": "jsonl", "pattern": str(tmp_path / "*.jsonl"), "text_field": "text"})


def test_hosts_of_an_unsharded_source_take_a_record_stride():
    shapes = {"name": "shapes", "resolution": 16, "num_records": 10, "seed": 0}
    every = make_source(shapes)
    for host, expected in ((0, [0, 3, 6, 9]), (2, [2, 5, 8])):
        mine = host_records(shapes, host, 3)
        assert [mine[j]["caption"] for j in range(len(mine))] == [every[i]["caption"] for i in expected]
