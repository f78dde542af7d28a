"""MMMU's answer parsing, rule by rule (eval_utils.py of the MMMU repository), its scores, the parquet reader
and the prompt."""

import json
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mmjax.eval import mmmu

OPTIONS = ["red fox", "blue whale", "cat", "dog"]


@pytest.mark.parametrize(
    ("response", "letter"),
    [
        ("(B)", "B"),
        ("B.", "B"),  # trailing punctuation stripped, then " B " found
        ("I think it's C because", "C"),
        ("The answer is (A), not (C)", "C"),  # several bracketed letters: the last one
        ("A or D", "D"),  # several bare letters: the last one
        ("the correct one is clearly the blue whale here", "B"),  # > 5 words: an option's text
        ("blue whale", None),  # <= 5 words: option texts are not searched -> random
    ],
)
def test_parse_choice(response, letter):
    rng = random.Random(mmmu.SEED)
    parsed = mmmu.parse_choice(response, OPTIONS, rng)
    if letter is None:  # the reference's fallback: random.seed(42), then random.choice over the letters
        random.seed(42)
        letter = random.choice(["A", "B", "C", "D"])
    assert parsed == letter


@pytest.mark.parametrize(
    ("response", "gold", "right"),
    [
        ("The answer is 5.0", "5", True),  # shortest tail after an indicator: "5.0" -> 5.0 == 5.0
        ("x = 12,000 dollars", "12000", True),  # "=" on the last line; "12,000" -> 12000.0
        ("It is 3. So the answer is 4", "4", True),
        # lower-cased before the ". <Capital>" split, so one line: the shortest tail is "4", never "3"
        ("It is 3. So the answer is 4", "3", False),
        ("abc", "b", False),  # a one-character gold answer is padded (" b", "b ") and cannot match inside words
        ("Paris, France", "paris", True),  # a string gold answer matches as a substring
        ("about 3.14159", "3.14", True),  # numbers are rounded to 2 places
    ],
)
def test_open_answers(response, gold, right):
    assert mmmu.open_correct(gold, mmmu.parse_open(response)) is right


def test_score_mmmu_micro_average_and_groups():
    records = [
        {"question_id": "validation_Art_1", "question_type": "multiple-choice", "options": OPTIONS,
         "answer": "B", "prediction": "(B)"},
        {"question_id": "validation_Art_Theory_2", "question_type": "multiple-choice", "options": OPTIONS,
         "answer": "A", "prediction": "D"},
        {"question_id": "validation_Math_3", "question_type": "open", "options": [], "answer": "['24', '24.0']",
         "prediction": "The result is 24"},
    ]
    scores = mmmu.score_mmmu(records)
    assert scores["accuracy"] == pytest.approx(200 / 3) and scores["count"] == 3
    assert scores["per_subject"] == {"Art": 100.0, "Art_Theory": 0.0, "Math": 100.0}
    assert scores["per_question_type"] == pytest.approx({"multiple-choice": 50.0, "open": 100.0})


def test_reader_prompt_and_submission(tmp_path):
    image = {"bytes": b"\x89PNG fake", "path": "a.png"}
    table = pa.table({"id": ["validation_Art_1", "validation_Math_2"],
                      "question": ["Which animal is in <image 1>?", "What is 2 + 2?"],
                      "options": [str(OPTIONS), "[]"], "image_1": [image, image], "image_2": [image, None],
                      "answer": ["B", "4"], "question_type": ["multiple-choice", "open"]})
    (tmp_path / "Art").mkdir()
    pq.write_table(table, tmp_path / "Art" / "validation-00000-of-00001.parquet")
    records = mmmu.read_mmmu(str(tmp_path), "")
    assert records == mmmu.read_mmmu(str(tmp_path / "*" / "validation-*.parquet"), "")
    assert [len(r["images"]) for r in records] == [2, 1] and records[0]["options"] == OPTIONS
    assert mmmu.mmmu_prompt(records[0]) == ("Which animal is in <image 1>?\n(A) red fox\n(B) blue whale\n(C) cat\n"
                                            "(D) dog\n\nAnswer with the option's letter from the given choices "
                                            "directly.")
    assert mmmu.mmmu_prompt(records[1]) == "What is 2 + 2?\nAnswer the question using a single word or phrase."
    records = [{**r, "prediction": p, "prompt": ""} for r, p in zip(records, ["B", "4"])]
    assert mmmu.BENCHMARKS["mmmu"].write_and_score(records, tmp_path, None)["accuracy"] == 100.0
    assert json.loads((tmp_path / "submission.json").read_text()) == {"validation_Art_1": "B",
                                                                      "validation_Math_2": "4"}
