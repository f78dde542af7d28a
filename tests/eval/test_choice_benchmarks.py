"""MMBench's circular evaluation and the single-pass multiple-choice sets (SEED image, ScienceQA-IMG, AI2D):
readers of the official layouts, prompts, and scores derived by hand."""

import base64
import csv
import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from mmjax.eval import benchmark, choice_sets, mmbench


def _png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((4, 4, 3), 200, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _mmbench_tsv(path):
    image = base64.b64encode(_png()).decode()
    rows = [{"index": 3, "question": "Colour?", "hint": "nan", "A": "red", "B": "green", "C": "blue", "D": "",
             "answer": "B", "category": "attr", "l2-category": "fine", "image": image},
            {"index": 5, "question": "Shape?", "hint": "Look closely.", "A": "disc", "B": "box", "C": "cone",
             "D": "ring", "answer": "D", "category": "shape", "l2-category": "coarse", "image": image}]
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter="\t")
        writer.writeheader()
        writer.writerows(rows)


def test_mmbench_rounds_prompts_and_circular_score(tmp_path):
    _mmbench_tsv(tmp_path / "dev.tsv")
    records = mmbench.read_mmbench(str(tmp_path / "dev.tsv"), "")
    assert [(r["index"], r["round"]) for r in records] == [(3, 0), (3, 1), (3, 2), (5, 0), (5, 1), (5, 2), (5, 3)]
    # the options rotate left each round and the answer letter follows its option
    assert [r["options"] for r in records[:3]] == [["red", "green", "blue"], ["green", "blue", "red"],
                                                   ["blue", "red", "green"]]
    assert [r["answer"] for r in records] == ["B", "A", "C", "D", "C", "B", "A"]
    assert benchmark.decode_images(records[0])[0].shape == (4, 4, 3)
    assert mmbench.BENCHMARKS["mmbench"].prompt(records[0]) == (
        "Colour?\nA. red\nB. green\nC. blue\nAnswer with the option's letter from the given choices directly.")
    assert mmbench.BENCHMARKS["mmbench_cn"].prompt(records[4]) == (
        "Look closely.\nShape?\nA. box\nB. cone\nC. ring\nD. disc\n请直接回答选项字母。")
    # question 3 right in every round; question 5 wrong in its last round: circular 50%, round 0 alone 100%
    predictions = ["B", "A", "C. green", "D", "C", "B", "B"]
    records = [{**r, "prediction": p, "prompt": ""} for r, p in zip(records, predictions)]
    scores = mmbench.BENCHMARKS["mmbench"].write_and_score(records, tmp_path, None)
    assert scores["accuracy"] == 50.0 and scores["count"] == 2 and scores["vanilla_accuracy"] == 100.0
    assert scores["per_category"] == {"attr": 100.0, "shape": 0.0} and scores["failed"] == 0
    with open(tmp_path / "submission.tsv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert [int(r["index"]) for r in rows] == [3, 1000003, 2000003, 5, 1000005, 2000005, 3000005]
    assert (rows[2]["A"], rows[2]["prediction"]) == ("blue", "C")


def test_seed_reader_keeps_image_questions(tmp_path):
    data = {"question_type": {"Scene Understanding": 1, "Instance Counting": 5},
            "questions": [{"question_id": "101", "question": "How many?", "choice_a": "1", "choice_b": "2",
                           "choice_c": "3", "choice_d": "4", "answer": "C", "data_id": "img_1",
                           "data_type": "image", "question_type_id": 5},
                          {"question_id": "102", "question": "What happens?", "choice_a": "a", "choice_b": "b",
                           "choice_c": "c", "choice_d": "d", "answer": "A", "data_id": "v.mp4",
                           "data_type": "video", "question_type_id": 1}]}
    (tmp_path / "SEED-Bench.json").write_text(json.dumps(data))
    records = choice_sets.read_seed(str(tmp_path / "SEED-Bench.json"), "imgs")
    assert len(records) == 1 and records[0]["images"] == ["imgs/img_1.jpg"]
    assert records[0]["category"] == "Instance Counting" and records[0]["options"] == ["1", "2", "3", "4"]
    assert choice_sets.choice_prompt(records[0]) == (
        "How many?\nA. 1\nB. 2\nC. 3\nD. 4\nAnswer with the option's letter from the given choices directly.")


def test_scienceqa_img_reader_prompt_and_score(tmp_path):
    problems = {"1": {"question": "Which is a mammal?", "choices": ["frog", "whale"], "answer": 1,
                      "hint": "Look at the picture.", "image": "image.png", "split": "test", "subject": "natural"},
                "2": {"question": "No image here?", "choices": ["a", "b"], "answer": 0, "hint": "",
                      "image": None, "split": "test", "subject": "social"},
                "3": {"question": "Train?", "choices": ["a", "b"], "answer": 0, "hint": "", "image": "image.png",
                      "split": "train", "subject": "social"}}
    (tmp_path / "problems.json").write_text(json.dumps(problems))
    records = choice_sets.read_scienceqa(str(tmp_path / "problems.json"), "sqa")
    assert [r["question_id"] for r in records] == ["1"] and records[0]["images"] == ["sqa/test/1/image.png"]
    assert choice_sets.choice_prompt(records[0]) == (
        "Context: Look at the picture.\nWhich is a mammal?\nA. frog\nB. whale\n"
        "Answer with the option's letter from the given choices directly.")
    records = [{**records[0], "prediction": "B", "prompt": ""}, {**records[0], "question_id": "4",
                                                               "prediction": "whale", "prompt": ""}]
    scores = choice_sets.BENCHMARKS["scienceqa"].write_and_score(records, tmp_path, None)
    assert scores["accuracy"] == 100.0 and scores["per_category"] == {"natural": 100.0}
    answers = [json.loads(line) for line in (tmp_path / "answers.jsonl").read_text().splitlines()]
    assert [a["choice"] for a in answers] == ["B", "B"]  # the option's text also names it


def test_ai2d_parquet_reader(tmp_path):
    table = pa.table({"question": ["Which stage?"], "options": [["egg", "larva", "adult"]], "answer": ["2"],
                      "image": [{"bytes": _png(), "path": None}]})
    pq.write_table(table, tmp_path / "test-00000.parquet")
    (record,) = choice_sets.read_ai2d(str(tmp_path / "test-00000.parquet"), "")
    assert record["answer"] == 2 and record["options"] == ["egg", "larva", "adult"]
    scores = choice_sets.BENCHMARKS["ai2d"].write_and_score([{**record, "prediction": "C", "prompt": ""}],
                                                            tmp_path, None)
    assert scores["accuracy"] == 100.0
    with pytest.raises(Exception, match="no parquet file"):
        choice_sets.read_ai2d(str(tmp_path / "missing-*.parquet"), "")
