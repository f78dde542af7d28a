"""Scorers against the official implementations that install from PyPI (run with those packages on the path;
skipped without them): the `anls` package (ANLS), and lmms-eval's scorer files (ChartQA relaxed accuracy, the
EvalAI answer processor, MMMU's multiple-choice parser), loaded by path because lmms-eval's task package imports
its whole runtime. pycocoevalcap's CIDEr is compared in test_cider.py."""

import importlib.util
import os
import random

import pytest

from mmjax.eval import anls, chartqa, mmmu, vqa

pytestmark = pytest.mark.parity

ANSWERS = ["Two", "the dog.", "isnt", "Coca-Cola's", "coke?", "1,000", "3.5", "black-and-white", "yes, it is",
           "An apple!", "  A  red\tcar \n", "couldnt've", "none", "50%", "0", "1.", "dogs' toys", "What's up?"]


def _lmms_file(relative: str):
    package = pytest.importorskip("lmms_eval")
    path = os.path.join(os.path.dirname(package.__file__), relative)
    spec = importlib.util.spec_from_file_location(relative.replace("/", "_")[:-3], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_anls_matches_the_anls_package():
    reference = pytest.importorskip("anls")
    cases = [("hello", ["hello"]), ("helo", ["hello", "help"]), ("ab", ["ac"]), ("Straße", ["strasse"]),
             ("  Total  Due ", ["total due", "amount"]), ("", ["x"]), ("1 May 1999", ["May 1, 1999"])]
    for prediction, gold in cases:
        assert anls.anls(prediction, gold) == pytest.approx(reference.anls_score(prediction, gold)), prediction


def test_relaxed_accuracy_matches_lmms_eval():
    reference = _lmms_file("tasks/chartqa/utils.py")
    targets = ["10", "0", "0.5", "2020", "Yes", "-3.2", "45%"]
    predictions = ["10.4", "10.6", "9.5", "0.0", "50%", "2021", "yes", "-3.3", "0.45", "45", "1,000", "abc"]
    for target in targets:
        for prediction in predictions:
            assert chartqa.relaxed_correct(prediction, target) == reference.relaxed_correctness(prediction, target)


def test_evalai_processor_matches_lmms_eval():
    processor = _lmms_file("tasks/_task_utils/vqa_eval_metric.py").EvalAIAnswerProcessor()
    for answer in ANSWERS:
        assert vqa.evalai_normalize(answer) == processor(answer), answer


def test_mmmu_choice_parser_matches_lmms_eval():
    reference = _lmms_file("tasks/_task_utils/mmmu_mcq_utils.py")
    options = ["red fox", "blue whale", "cat", "dog"]
    index2ans = dict(zip("ABCD", options))
    responses = ["(B)", "B.", "I think it's C because", "The answer is (A), not (C)", "A or D",
                 "the correct one is clearly the blue whale here", "so it is a cat or a dog in the picture",
                 "blue whale", "none of them"]
    for response in responses:
        random.seed(42)  # the reference draws from the global generator when nothing parses
        expected = reference.parse_mmmu_multi_choice_response(response, list("ABCD"), index2ans)
        assert mmmu.parse_choice(response, options, random.Random(42)) == expected, response
