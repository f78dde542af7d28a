"""Benchmark scorers reproduce hand-computed results on small fixtures."""

import json

import pytest

from mmjax.eval import choices, mme, pope, vqa

# ----------------------------------------------------------------------------------------------- VQAv2


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("Two", "2"),
        ("the dog.", "dog"),
        ("isnt", "isn't"),
        ("Yes", "yes"),
        ("  A  red\tcar \n", "red car"),
        ("black-and-white", "black and white"),  # a mark not touching a space becomes a space
        ("yes, it is", "yes it is"),  # ", " touches a space: deleted
        ("1,000", "1000"),  # digit,digit comma: every mark deleted
        ("3.5", "3.5"),  # a period before a digit stays
        ("none", "0"),
        ("couldnt've", "couldn't've"),
        ("An apple!", "apple"),
    ],
)
def test_vqa_normalisation(raw, normalised):
    assert vqa.normalize_vqa_answer(raw) == normalised


def test_vqa_accuracy_leave_one_out():
    # 10 answers, k of them "2": each 9-subset sees k (if it left out a non-match) or k-1 matches.
    for k, expected in [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)]:
        answers = ["2"] * k + ["3"] * (10 - k)
        # k=1: the 9 subsets without the match see 1 -> 1/3; the one without it sees 0: 9/30 = 0.3
        # k=3: 7 subsets see 3 -> 1, 3 see 2 -> 2/3: (7 + 2) / 10 = 0.9
        assert vqa.vqa_accuracy("Two", answers) == pytest.approx(expected)
    assert vqa.vqa_accuracy("the dog.", [{"answer": "dog"}] * 10) == 1.0


def test_score_vqa_breakdowns_and_files(tmp_path):
    records = [
        {"question_id": 1, "prediction": "Two", "answers": ["2"] * 10, "answer_type": "number"},
        {"question_id": 2, "prediction": "no", "answers": ["yes"] * 9 + ["no"], "answer_type": "yes/no"},
        {"question_id": 3, "prediction": "yes", "answers": ["yes"] * 9 + ["no"], "answer_type": "yes/no"},
    ]
    res = vqa.score_vqa(records)
    assert res["count"] == 3
    assert res["accuracy"] == pytest.approx(100 * (1 + 0.3 + 1) / 3)
    assert res["per_answer_type"] == pytest.approx({"number": 100.0, "yes/no": 65.0})

    ann = {"annotations": [{"question_id": r["question_id"], "answer_type": r["answer_type"],
                            "question_type": "what", "answers": [{"answer": a} for a in r["answers"]]}
                           for r in records]}
    (tmp_path / "ann.json").write_text(json.dumps(ann))
    missing = vqa.write_vqav2_submission(records, tmp_path / "res.json", question_ids=[1, 2, 3, 4])
    assert missing == 1
    sub = json.loads((tmp_path / "res.json").read_text())
    assert sub == [{"question_id": 1, "answer": "2"}, {"question_id": 2, "answer": "no"},
                   {"question_id": 3, "answer": "yes"}, {"question_id": 4, "answer": ""}]
    (tmp_path / "res.json").write_text(json.dumps(sub[:3]))
    assert vqa.score_vqa_files(tmp_path / "ann.json", tmp_path / "res.json")["accuracy"] == res["accuracy"]


def test_gqa_exact_match(tmp_path):
    records = [
        {"question_id": "a", "prediction": "Left.", "answer": "left", "types": "rel"},
        {"question_id": "b", "prediction": "the left", "answer": "left", "types": "rel"},
        {"question_id": "c", "prediction": " yes", "answer": "yes", "types": "verify"},
    ]
    res = vqa.score_gqa(records, group_key="types")
    assert res["accuracy"] == pytest.approx(200 / 3) and res["count"] == 3
    assert res["per_types"] == pytest.approx({"rel": 50.0, "verify": 100.0})
    vqa.write_gqa_predictions(records, tmp_path / "pred.json")
    assert json.loads((tmp_path / "pred.json").read_text())[0] == {"questionId": "a", "prediction": "left"}


def test_jsonl_roundtrip_and_error(tmp_path):
    vqa.write_jsonl([{"a": 1}, {"b": "é"}], tmp_path / "x.jsonl")
    assert vqa.read_jsonl(tmp_path / "x.jsonl") == [{"a": 1}, {"b": "é"}]
    (tmp_path / "bad.jsonl").write_text('{"a": 1}\n{oops\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:2"):
        vqa.read_jsonl(tmp_path / "bad.jsonl")


# ----------------------------------------------------------------------------------------------- POPE


def test_pope_extraction():
    assert pope.pope_yes_no("Yes, there is a dog.") == "yes"
    assert pope.pope_yes_no("No, there is no dog.") == "no"
    assert pope.pope_yes_no("There is not a dog in the image.") == "no"
    assert pope.pope_yes_no("Yes. No dog is visible.") == "yes"  # only the first sentence counts
    assert pope.pope_yes_no("Nope") == "yes"  # not the exact word "no": counts as yes, as the reference


def test_pope_metrics_by_hand(tmp_path):
    # random: preds yes,yes,no,no vs labels yes,no,no,yes -> TP1 FP1 TN1 FN1
    # popular: preds yes,yes,yes,no vs labels yes,yes,no,no -> TP2 FP1 TN1 FN0
    rows = [("random", "Yes.", "yes"), ("random", "Yes", "no"), ("random", "No.", "no"),
            ("random", "no", "yes"), ("popular", "Yes", "yes"), ("popular", "yes", "yes"),
            ("popular", "Yes, a cup", "no"), ("popular", "No", "no")]
    records = [{"category": c, "prediction": p, "label": lab} for c, p, lab in rows]
    res = pope.score_pope(records)
    r = res["per_category"]["random"]
    assert r == pytest.approx({"accuracy": 50.0, "precision": 50.0, "recall": 50.0, "f1": 50.0,
                               "yes_ratio": 50.0, "count": 4})
    p = res["per_category"]["popular"]
    assert p["precision"] == pytest.approx(200 / 3) and p["recall"] == 100.0
    assert p["f1"] == pytest.approx(80.0) and p["accuracy"] == 75.0 and p["yes_ratio"] == 75.0
    assert res["mean"]["f1"] == pytest.approx(65.0)
    o = res["overall"]  # TP3 FP2 TN2 FN1
    assert o["precision"] == pytest.approx(60.0) and o["recall"] == pytest.approx(75.0)

    answers = [{"question_id": i, "prediction": rec["prediction"]} for i, rec in enumerate(records[:4])]
    pope.write_pope_answers(answers, tmp_path / "ans.jsonl")
    vqa.write_jsonl([{"question_id": i, "label": rec["label"]} for i, rec in enumerate(records[:4])],
                    tmp_path / "lab.jsonl")
    from_files = pope.score_pope_files({"random": tmp_path / "ans.jsonl"}, {"random": tmp_path / "lab.jsonl"})
    assert from_files["per_category"]["random"] == r


# ----------------------------------------------------------------------------------------------- MME


def test_mme_scores_by_hand(tmp_path):
    def rec(cat, img, gt, pred):
        question = f"Is there X in {img}?"
        return {"category": cat, "image": img, "question": question, "answer": gt, "prediction": pred}

    records = [
        rec("existence", "1.jpg", "Yes", "Yes"), rec("existence", "1.jpg", "No", "No, there is not."),
        rec("existence", "2.jpg", "Yes", "yes"), rec("existence", "2.jpg", "No", "Yes"),
        rec("OCR", "3.jpg", "Yes", "I am not sure"), rec("OCR", "3.jpg", "No", "no"),
        rec("code_reasoning", "4.jpg", "Yes", "Yes\tit is"), rec("code_reasoning", "4.jpg", "No", "No"),
    ]
    res = mme.score_mme(records)
    ex = res["per_category"]["existence"]  # 3/4 questions, 1/2 images
    assert ex["acc"] == 75.0 and ex["acc_plus"] == 50.0 and ex["score"] == 125.0
    assert res["per_category"]["OCR"]["score"] == 50.0  # "other" is wrong: 1/2 + 0/1
    assert res["per_category"]["code_reasoning"]["score"] == 200.0
    assert res["perception"] == 175.0 and res["cognition"] == 200.0 and res["total"] == 375.0
    assert mme.mme_yes_no("Not really") == "no" and mme.mme_yes_no("Yessir") == "yes"

    mme.write_mme_results(records, tmp_path / "mme")
    assert sorted(p.name for p in (tmp_path / "mme").iterdir()) == ["OCR.txt", "code_reasoning.txt",
                                                                      "existence.txt"]
    assert mme.score_mme_dir(tmp_path / "mme") == res


# ----------------------------------------------------------------------------------------------- choices


@pytest.mark.parametrize(
    ("text", "expected"),
    [("B", "B"), ("B.", "B"), ("(C)", "C"), ("A. a cat", "A"), ("The answer is D.", "D"),
     ("Answer: (B)", "B"), ("a cat", "A"), ("A cat", "A"), ("Bird", None), ("E", None), ("", None),
     ("The answer is A. No wait, the answer is B.", None)],
)
def test_extract_option_letter(text, expected):
    assert choices.extract_option_letter(text, options=["A cat", "a dog", "a bird", "a fish"]) == expected


def test_score_choices_sqa_and_circular(tmp_path):
    records = [
        {"prediction": "A", "answer": 0, "num_options": 2, "category": "nat"},  # ScienceQA: index answers
        {"prediction": "The answer is B.", "answer": 0, "num_options": 2, "category": "nat"},
        {"prediction": "no idea", "answer": 1, "num_options": 2, "category": "soc"},
    ]
    res = choices.score_choices(records)
    assert res["accuracy"] == pytest.approx(100 / 3) and res["count"] == 3 and res["failed"] == 1
    assert res["per_category"] == {"nat": 50.0, "soc": 0.0}
    circular = [
        {"prediction": "A", "answer": "A", "group": 1}, {"prediction": "B", "answer": "B", "group": 1},
        {"prediction": "C", "answer": "C", "group": 2}, {"prediction": "C", "answer": "A", "group": 2},
    ]
    assert choices.score_choices(circular, group_key="group")["accuracy"] == 50.0
    choices.write_mmbench_predictions(
        [{"index": 7, "question": "Q?", "prediction": "(B) two"}], tmp_path / "mmb.tsv")
    assert (tmp_path / "mmb.tsv").read_text().splitlines() == ["index\tquestion\tprediction", "7\tQ?\tB"]
