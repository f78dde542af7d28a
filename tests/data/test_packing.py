"""Packing: every token lands exactly once with its own next token, segment ids / positions / masks are right,
long documents are split (not dropped) and counted, overflow is counted; the text sources skip and count bad
records."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mmjax.data import records
from mmjax.data.packing import (
    ArrayRecordText,
    DocumentGroups,
    JsonlText,
    ShapesCaptions,
    make_document_source,
    pack_documents,
    segment_mask,
)
from mmjax.data.sources import DataError


def random_docs(rng: np.random.Generator, n: int, max_len: int) -> list[list[int]]:
    return [[int(t) for t in rng.integers(3, 1000, size=int(rng.integers(0, max_len)))] for _ in range(n)]


def reassemble(packed) -> dict[int, tuple[list[int], list[int]]]:
    """Per document: its (inputs, targets) in slot order, read back from the packed rows."""
    out: dict[int, tuple[list[int], list[int]]] = {}
    for row in range(packed.tokens.shape[0]):
        chunks: dict[int, tuple[list[int], list[int]]] = {}
        for t in np.flatnonzero(packed.weights[row]):
            ins, tgs = chunks.setdefault(int(packed.document[row, t]), ([], []))
            ins.append(int(packed.tokens[row, t]))
            tgs.append(int(packed.targets[row, t]))
        for doc, chunk in chunks.items():
            out.setdefault(doc, []).append(chunk)
    return out


@pytest.mark.parametrize("decreasing", [True, False])
def test_no_token_lost_or_duplicated_and_each_slot_predicts_its_own_next_token(decreasing):
    rng = np.random.default_rng(0)
    docs = random_docs(rng, 40, 70)
    seq_len = 32
    packed = pack_documents(docs, seq_len, num_rows=100, decreasing=decreasing)
    s = packed.stats
    assert s.overflow_tokens == 0
    assert s.short_documents == sum(len(d) < 2 for d in docs)
    assert s.split_documents == sum(len(d) - 1 > seq_len for d in docs)
    assert s.tokens == packed.weights.sum() == sum(max(len(d) - 1, 0) for d in docs)
    found = reassemble(packed)
    assert set(found) == {i for i, d in enumerate(docs) if len(d) >= 2}
    for i, chunks in found.items():
        doc = docs[i]
        pairs = sorted((tuple(ins), tuple(tgs)) for ins, tgs in chunks)
        n = len(doc) - 1  # slots: every token but the last is an input, every token but the first a target
        expected = sorted((tuple(doc[a:min(a + seq_len, n)]), tuple(doc[a + 1:min(a + seq_len, n) + 1]))
                          for a in range(0, n, seq_len))
        assert pairs == expected, f"document {i}"


def test_segment_ids_and_positions_restart_per_document_and_pads_trail():
    docs = [[1, 2, 3, 4], [5, 6], [7, 8, 9], list(range(10, 30))]
    packed = pack_documents(docs, seq_len=8, num_rows=4, decreasing=False)
    for row in range(4):
        seg, pos = packed.segment_ids[row], packed.positions[row]
        n = int((seg > 0).sum())
        assert (seg[n:] == 0).all() and (packed.weights[row, n:] == 0).all(), "pads only at the end"
        assert (np.diff(seg[:n]) >= 0).all() and (seg[:n] > 0).all()
        for s in np.unique(seg[:n]):
            np.testing.assert_array_equal(pos[seg == s], np.arange((seg == s).sum()))
    # first fit in order: [1,2,3 | 5 | 7,8] share row 0 (3 + 1 + 2 slots); the 19-slot doc is 8 + 8 + 3
    np.testing.assert_array_equal(packed.segment_ids[0], [1, 1, 1, 2, 3, 3, 0, 0])
    np.testing.assert_array_equal(packed.tokens[0, :6], [1, 2, 3, 5, 7, 8])
    np.testing.assert_array_equal(packed.targets[0, :6], [2, 3, 4, 6, 8, 9])
    assert packed.stats.split_documents == 1


def test_long_documents_are_split_not_dropped_and_overflow_is_counted():
    docs = [list(range(100)), list(range(50))]                 # 99 + 49 slots; 3 rows of 32 = 96 slots
    packed = pack_documents(docs, seq_len=32, num_rows=3)
    s = packed.stats
    assert s.split_documents == 2 and s.documents == 2
    assert s.tokens == 96 and s.overflow_tokens == 99 + 49 - 96
    assert packed.weights.all()


def test_segment_mask_blocks_cross_document_attention():
    seg = np.array([[1, 1, 2, 2, 2, 3, 0, 0], [1, 1, 1, 1, 1, 1, 1, 1]])
    mask = np.asarray(segment_mask(seg))
    assert mask.shape == (2, 1, 8, 8)
    for b in range(2):
        for q in range(8):
            for k in range(8):
                assert mask[b, 0, q, k] == (seg[b, q] == seg[b, k] and k <= q)
    assert mask[:, 0].any(-1).all(), "no query row is fully masked (pads see pads)"


def test_document_groups_cover_every_document_once():
    groups = DocumentGroups([f"doc {i}" for i in range(10)], docs_per_group=4)
    assert len(groups) == 3
    assert [t for g in range(3) for t in groups[g]["texts"]] == [f"doc {i}" for i in range(10)]
    with pytest.raises(IndexError):
        groups[3]


def test_jsonl_text_skips_bad_lines(tmp_path, caplog):
    path = tmp_path / "a.jsonl"
    lines = [json.dumps({"text": "hello"}), "{not json", json.dumps({"txt": "x"}), "", json.dumps({"text": 3}),
             json.dumps({"text": "wörld", "meta": 1})]
    path.write_text("\n".join(lines) + "\n")
    (tmp_path / "b.jsonl").write_text(json.dumps({"text": "last"}))  # no trailing newline
    src = make_document_source(dict(name="jsonl", pattern=str(tmp_path / "*.jsonl")))
    assert isinstance(src, JsonlText)
    assert [src[i] for i in range(len(src))] == ["hello", None, None, None, "wörld", "last"]
    assert "a.jsonl" in caplog.text
    with pytest.raises(DataError, match="no JSONL files"):
        JsonlText(str(tmp_path / "missing*.jsonl"))


def test_arrayrecord_text_reads_str_and_bytes(tmp_path):
    pytest.importorskip("array_record")
    path = str(tmp_path / "t.array_record")
    records.write_array_record(path, [{"text": "one"}, {"text": b"two"}, {"other": "x"}])
    src = ArrayRecordText(path)
    assert [src[i] for i in range(len(src))] == ["one", "two", None]


def test_shapes_captions_match_the_shapes_source():
    from mmjax.data.shapes import ShapesConfig, ShapesSource

    captions = ShapesCaptions(num_records=5, seed=3, max_objects=2, with_positions=True)
    source = ShapesSource(ShapesConfig(max_objects=2, with_positions=True), num_records=5, seed=3)
    assert [captions[i] for i in range(5)] == [source[i]["caption"] for i in range(5)]
    with pytest.raises(DataError, match="unknown text source"):
        make_document_source(dict(name="nope"))


def test_overflow_cuts_long_document_tails_before_short_documents():
    docs = [list(range(70)), [1, 2, 3], [4, 5, 6, 7]]           # 69 slots = 32 + 32 + 5; then 2 + 3 slots
    packed = pack_documents(docs, seq_len=32, num_rows=2)
    kept = {int(d) for d in np.unique(packed.document) if d >= 0}
    assert kept == {0, 1, 2}, "both short documents are packed"
    assert packed.stats.overflow_tokens == 69 + 2 + 3 - packed.stats.tokens > 0
