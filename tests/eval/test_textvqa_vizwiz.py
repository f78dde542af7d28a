"""TextVQA and VizWiz: the EvalAI answer processor, TextVQA's soft scores, the readers of the official files and
the submission formats, against values derived by hand from the official definitions."""

import json

import pytest

from mmjax.eval import textvqa, vizwiz, vqa


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("Coca-Cola's", "coca cola 's"),  # "'s" split off, then the VQA punctuation rule
        ("coke?", "coke"),  # '?' and ',' always go
        ("1,000", "1000"),
        ("Two dogs.", "2 dogs"),
        ("dont", "don't"),
    ],
)
def test_evalai_normalisation(raw, normalised):
    assert vqa.evalai_normalize(raw) == normalised


def test_textvqa_soft_scores_by_hand():
    # 3 of 10 annotators wrote the brand: leaving out one of the 7 others keeps 3 matches (score 1), leaving
    # out one of the 3 keeps 2 (2/3): (7 + 3 * 2/3) / 10 = 0.9
    answers = ["Coca-Cola's"] * 3 + ["coke"] * 7
    assert textvqa.textvqa_accuracy("coca cola's", answers) == pytest.approx(0.9)
    assert textvqa.textvqa_accuracy("COKE", answers) == pytest.approx(1.0)
    assert textvqa.textvqa_accuracy("pepsi", answers) == 0.0
    # one annotator: 9 subsets see 1 match (1/3), the one without it sees none: 0.3
    assert textvqa.textvqa_accuracy("coke", ["coke"] + ["cola"] * 9) == pytest.approx(0.3)


def test_textvqa_normalises_human_answers_where_vqav2_does_not():
    # unanimous annotators: VQAv2 leaves their answers raw ("Two" never equals the normalised "2"), the
    # TextVQA evaluator normalises them
    assert vqa.vqa_accuracy("2", ["Two"] * 10) == 0.0
    assert textvqa.textvqa_accuracy("2", ["Two"] * 10) == 1.0


def test_textvqa_reader_prompt_and_submission(tmp_path):
    data = {"data": [{"question_id": 7, "question": "what brand?", "image_id": "abc",
                      "answers": ["coke"] * 10, "ocr_tokens": ["COKE", "zero"]},
                     {"question_id": 8, "question": "what year?", "image_id": "def", "answers": ["1999"] * 10}]}
    (tmp_path / "val.json").write_text(json.dumps(data))
    records = textvqa.read_textvqa(str(tmp_path / "val.json"), "imgs")
    assert records[0]["images"] == ["imgs/abc.jpg"] and records[1]["answers"] == ["1999"] * 10
    assert textvqa.textvqa_prompt(records[0]) == ("what brand?\nReference OCR token: COKE, zero\n"
                                                  "Answer the question using a single word or phrase.")
    assert textvqa.textvqa_prompt(records[1]).startswith("what year?\nAnswer the question")
    records = [{**r, "prediction": p, "prompt": ""} for r, p in zip(records, ["Coke.", "2000"])]
    scores = textvqa.BENCHMARKS["textvqa"].write_and_score(records, tmp_path, None)
    assert scores == {"accuracy": 50.0, "count": 2}
    assert json.loads((tmp_path / "submission.json").read_text()) == [{"question_id": 7, "answer": "coke"},
                                                                     {"question_id": 8, "answer": "2000"}]
    # a test split carries no answers: scored from --annotations instead
    unlabelled = [{**r, "answers": None} for r in records]
    assert textvqa.BENCHMARKS["textvqa"].write_and_score(unlabelled, tmp_path, None) == {}
    scored = textvqa.BENCHMARKS["textvqa"].write_and_score(unlabelled, tmp_path, str(tmp_path / "val.json"))
    assert scored["accuracy"] == 50.0


def test_vizwiz_reader_prompt_submission_and_scores(tmp_path):
    def answers(*pairs):
        return [{"answer": a, "answer_confidence": "yes"} for a, n in pairs for _ in range(n)]

    rows = [{"image": "VizWiz_val_00000000.jpg", "question": "What is this?", "answerable": 0,
             "answer_type": "unanswerable", "answers": answers(("unanswerable", 10))},
            {"image": "VizWiz_val_00000001.jpg", "question": "Is it on?", "answerable": 1,
             "answer_type": "yes/no", "answers": answers(("yes", 2), ("no", 8))}]
    (tmp_path / "val.json").write_text(json.dumps(rows))
    records = vizwiz.read_vizwiz(str(tmp_path / "val.json"), "val")
    assert records[1]["question_id"] == "VizWiz_val_00000001.jpg"
    assert records[1]["images"] == ["val/VizWiz_val_00000001.jpg"]
    assert vizwiz.vizwiz_prompt(records[0]) == (
        "What is this?\nWhen the provided information is insufficient, respond with 'Unanswerable'.\n"
        "Answer the question using a single word or phrase.")
    records = [{**r, "prediction": p, "prompt": ""} for r, p in zip(records, ["Unanswerable.", "Yes"])]
    scores = vizwiz.BENCHMARKS["vizwiz"].write_and_score(records, tmp_path, None)
    # "yes" from 2 of 10 annotators: 8 subsets see 2 (2/3), 2 see 1 (1/3): 0.6
    assert scores["accuracy"] == pytest.approx((100 + 60) / 2)
    assert scores["per_answer_type"] == pytest.approx({"unanswerable": 100.0, "yes/no": 60.0})
    assert json.loads((tmp_path / "submission.json").read_text()) == [
        {"image": "VizWiz_val_00000000.jpg", "answer": "unanswerable"},
        {"image": "VizWiz_val_00000001.jpg", "answer": "yes"}]
