"""CIDEr-D equals hand computation from its definition, and pycocoevalcap's Cider where that is installed; the
PTB-style tokeniser handles the caption cases that change scores."""

import json
import math
import random

import pytest

from mmjax.eval import cider, flickr30k

L2 = math.log(2.0)


@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        ("A man's dog (black).", ["a", "man", "'s", "dog", "black"]),
        ("Don't stop, can't stop!", ["do", "n't", "stop", "ca", "n't", "stop"]),
        ('He said "hi" -- ok...', ["he", "said", "hi", "ok"]),
        ("A black-and-white photo of 3.5 dogs", ["a", "black-and-white", "photo", "of", "3.5", "dogs"]),
        ("the dogs' ball; a\ncat: yes?", ["the", "dogs", "ball", "a", "cat", "yes"]),
    ],
)
def test_ptb_tokenize(text, tokens):
    assert cider.ptb_tokenize(text) == tokens


def test_cider_d_by_hand():
    # Two images, so log(#images) = log 2; "a" is in both reference sets (idf 0), every other n-gram in one
    # (idf log 2). An exact caption: cosine 1 for n = 1, 2 and 0 for n = 3, 4 (no such n-grams): 10 * 2/4 = 5.
    refs = {"dog": ["a dog"], "cat": ["a cat"]}
    _, per_image = cider.cider_d(refs, {"dog": "a dog", "cat": "a cat"})
    assert per_image == pytest.approx({"dog": 5.0, "cat": 5.0})
    # "cat cat": the clipped unigram dot min(2L, L) * L = L^2 over norms 2L * L gives 0.5 (unclipped: 1);
    # bigram "cat cat" shares nothing; same bigram count, no length penalty: 10 * 0.5 / 4
    corpus, per_image = cider.cider_d(refs, {"dog": "a dog", "cat": "cat cat"})
    assert per_image["cat"] == pytest.approx(1.25) and corpus == pytest.approx((5.0 + 1.25) / 2)
    # "a cat sat": unigram and bigram cosines L^2 / (sqrt(2) L * L) = 1/sqrt(2), trigram 0 (the reference has
    # none); 2 bigrams against 1: penalty exp(-1 / (2 * 6^2))
    _, per_image = cider.cider_d(refs, {"dog": "a dog", "cat": "a cat sat"})
    assert per_image["cat"] == pytest.approx(10 * math.sqrt(2) * math.exp(-1 / 72) / 4)


def test_cider_averages_over_references_and_tokenises():
    refs = {"dog": ["a dog", "A DOG!"], "cat": ["a cat", "the cat"]}
    _, per_image = cider.cider_d(refs, {"dog": "A dog.", "cat": "a cat"})
    assert per_image["dog"] == pytest.approx(5.0)  # both references equal the caption after tokenisation
    with pytest.raises(ValueError, match="same images"):
        cider.cider_d(refs, {"dog": "a dog"})


def test_flickr30k_reader_and_score(tmp_path):
    images = [{"filename": "1.jpg", "split": "test", "sentences": [{"raw": "A dog."}]},
              {"filename": "2.jpg", "split": "test", "sentences": [{"raw": "A cat."}]},
              {"filename": "3.jpg", "split": "train", "sentences": [{"raw": "A cow."}]}]
    (tmp_path / "dataset_flickr30k.json").write_text(json.dumps({"images": images}))
    records = flickr30k.read_flickr30k(str(tmp_path / "dataset_flickr30k.json"), "imgs")
    assert [r["images"] for r in records] == [["imgs/1.jpg"], ["imgs/2.jpg"]]
    records = [{**r, "prediction": p, "prompt": ""} for r, p in zip(records, ["a dog", "cat cat"])]
    scores = flickr30k.BENCHMARKS["flickr30k"].write_and_score(records, tmp_path, None)
    assert scores == {"cider": pytest.approx(100 * (5.0 + 1.25) / 2), "count": 2}
    assert json.loads((tmp_path / "captions.json").read_text())[1] == {"image_id": "2", "caption": "cat cat"}


@pytest.mark.parity
def test_cider_matches_pycocoevalcap():
    scorer = pytest.importorskip("pycocoevalcap.cider.cider")
    rng = random.Random(0)
    words = ["a", "the", "dog", "cat", "man", "woman", "red", "blue", "sits", "on", "in", "grass", "ball"]

    def caption():
        return " ".join(rng.choice(words) for _ in range(rng.randint(1, 9)))

    refs = {i: [caption() for _ in range(rng.randint(1, 5))] for i in range(40)}
    cands = {i: caption() for i in range(40)}
    expected, expected_per_image = scorer.Cider().compute_score(refs, {i: [c] for i, c in cands.items()})
    corpus, per_image = cider.cider_d(refs, cands, tokenize=False)
    assert corpus == pytest.approx(float(expected), rel=1e-9)
    assert [per_image[i] for i in range(40)] == pytest.approx(list(expected_per_image), rel=1e-9)
