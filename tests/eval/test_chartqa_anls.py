"""ChartQA's relaxed accuracy (pix2struct's definition) and DocVQA / InfoVQA's ANLS (threshold 0.5), by hand."""

import json

import pytest

from mmjax.eval import anls, chartqa


@pytest.mark.parametrize(
    ("prediction", "target", "right"),
    [
        ("10.4", "10", True),  # 4% off
        ("10.6", "10", False),  # 6% off
        ("9.5", "10", True),  # exactly 5%
        ("50%", "0.5", True),  # a trailing % divides by 100
        ("0.0", "0", False),  # a zero target needs an exact (string) match
        ("1,000", "1000", False),  # not a float: exact match
        ("Yes", "yes", True),  # strings: case-insensitive equality
    ],
)
def test_relaxed_correct(prediction, target, right):
    assert chartqa.relaxed_correct(prediction, target) is right


def test_chartqa_reader_and_per_split_scores(tmp_path):
    (tmp_path / "test").mkdir()
    (tmp_path / "test" / "test_human.json").write_text(json.dumps([{"imgname": "a.png", "query": "Max?",
                                                                     "label": "40"}]))
    (tmp_path / "test" / "test_augmented.json").write_text(json.dumps([{"imgname": "b.png", "query": "Min?",
                                                                         "label": "2"}] * 3))
    records = chartqa.read_chartqa(str(tmp_path / "test"), "png")
    assert len(records) == 4 and records[0]["images"] == ["png/a.png"] and records[1]["split"] == "test_augmented"
    assert chartqa.BENCHMARKS["chartqa"].prompt(records[0]) == "Max?\nAnswer the question with a single word."
    records = [{**r, "prediction": p, "prompt": ""} for r, p in zip(records, ["41", "2", "3", "2.05"])]
    scores = chartqa.BENCHMARKS["chartqa"].write_and_score(records, tmp_path, None)
    assert scores["relaxed_accuracy"] == 75.0
    assert scores["per_split"] == pytest.approx({"test_human": 100.0, "test_augmented": 200 / 3})


def test_levenshtein():
    assert anls.levenshtein("kitten", "sitting") == 3
    assert anls.levenshtein("", "abc") == 3 and anls.levenshtein("abc", "abc") == 0


def test_anls_by_hand():
    assert anls.anls("  Hello   World ", ["hello world"]) == 1.0  # case and whitespace do not count
    assert anls.anls("helo", ["hello"]) == pytest.approx(0.8)  # 1 edit over 5 characters
    assert anls.anls("ab", ["ac"]) == 0.0  # NL = 0.5 reaches the threshold
    assert anls.anls("abc", ["abd"]) == pytest.approx(2 / 3)  # NL 1/3 < 0.5
    assert anls.anls("helo", ["xyz", "hello", "help"]) == pytest.approx(0.8)  # best gold answer


def test_docvqa_and_infovqa_readers_and_submission(tmp_path):
    doc = {"data": [{"questionId": 1, "question": "Date?", "image": "documents/a.png", "answers": ["1 May"]}]}
    info = {"data": [{"questionId": 2, "question": "Total?", "image_local_name": "b.jpeg", "answers": ["40%"]}]}
    (tmp_path / "doc.json").write_text(json.dumps(doc))
    (tmp_path / "info.json").write_text(json.dumps(info))
    (record,) = anls.BENCHMARKS["docvqa"].read(str(tmp_path / "doc.json"), "spdocvqa")
    assert record["images"] == ["spdocvqa/documents/a.png"]
    assert anls.BENCHMARKS["docvqa"].prompt(record) == "Date?\nAnswer the question using a single word or phrase."
    (info_record,) = anls.BENCHMARKS["infovqa"].read(str(tmp_path / "info.json"), "infographics")
    assert info_record["images"] == ["infographics/b.jpeg"]
    scores = anls.BENCHMARKS["docvqa"].write_and_score([{**record, "prediction": "1 may", "prompt": ""}],
                                                       tmp_path, None)
    assert scores == {"anls": 100.0, "count": 1}
    assert json.loads((tmp_path / "submission.json").read_text()) == [{"questionId": 1, "answer": "1 may"}]
