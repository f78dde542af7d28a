"""Synthetic shapes with held-out compositions: a "seen" split never shows or names them, an "all" split marks
them, records stay pure functions of (seed, index), and bad holdout lists are refused."""

from __future__ import annotations

import numpy as np
import pytest

from mmjax.data.shapes import ShapesConfig, ShapesSource, scene_unseen
from mmjax.data.sources import make_source

COMBOS = ("red triangle", "green diamond", "blue circle", "yellow square")
QUESTIONS = ("shape:purple circle", "color:white triangle", "exists:red square")


def source(split: str, n: int = 600, seed: int = 0, **kw) -> ShapesSource:
    cfg = ShapesConfig(holdout_combos=COMBOS, holdout_questions=QUESTIONS, holdout_split=split, **kw)
    return ShapesSource(cfg, num_records=n, seed=seed)


def test_seen_split_never_shows_or_names_a_held_out_composition():
    train = source("seen")
    kinds = set()
    for i in range(len(train)):
        r = train[i]
        assert not r["caption_unseen"] and not r["qa_unseen"]
        assert not any(c in r["caption"] or c in r["question"] for c in COMBOS), r
        assert not scene_unseen(train.scene(i), train.config)
        first = train.scene(i)[0]
        assert f"{r['question_kind']}:{first['colour']} {first['shape']}" not in QUESTIONS
        kinds.add(r["question_kind"])
    assert kinds == {"color", "shape", "exists"}  # every question kind is still trained, on other scenes


def test_all_split_marks_unseen_records_and_keeps_the_unheld_out_draws():
    ev, plain = source("all"), ShapesSource(ShapesConfig(), num_records=600, seed=0)
    counts = {"caption": 0, "qa": 0, "question_only": 0}
    for i in range(len(ev)):
        r, p = ev[i], plain[i]
        assert r["caption"] == p["caption"] and r["question"] == p["question"]  # holdouts change no draw here
        np.testing.assert_array_equal(r["image"], p["image"])
        named = any(c in r["caption"] for c in COMBOS)
        assert r["caption_unseen"] == named
        first = ev.scene(i)[0]
        by_question = (f"{r['question_kind']}:{first['colour']} {first['shape']}" in QUESTIONS
                       or any(c in r["question"] for c in COMBOS))
        assert r["qa_unseen"] == (named or by_question)
        counts["caption"] += named
        counts["qa"] += r["qa_unseen"]
        counts["question_only"] += by_question and not named
    # 4 of 24 combos: about a sixth of the scenes; the question holdouts add unseen questions on seen scenes.
    assert 60 < counts["caption"] < 140 and counts["question_only"] > 5 and counts["qa"] > counts["caption"]


def test_records_are_deterministic_and_the_source_config_carries_the_holdout():
    spec = dict(name="shapes", num_records=50, seed=3, holdout_combos=list(COMBOS),
                holdout_questions=list(QUESTIONS), holdout_split="seen")
    a, b, direct = make_source(spec), make_source(spec), source("seen", n=50, seed=3)
    assert a.config == direct.config and a.config.holdout_combos == COMBOS
    for i in (0, 17, 49):
        ra, rb, rd = a[i], b[i], direct[i]
        assert ra["caption"] == rb["caption"] == rd["caption"] and ra["question"] == rb["question"]
        np.testing.assert_array_equal(ra["image"], rd["image"])


@pytest.mark.parametrize("kw,match", [
    (dict(holdout_combos=("mauve circle",)), "not '<colour> <shape>'"),
    (dict(holdout_combos=("red",)), "not '<colour> <shape>'"),
    (dict(holdout_questions=("size:red circle",)), "kind 'size'"),
    (dict(holdout_questions=("color:red hexagon",)), "not '<colour> <shape>'"),
    (dict(holdout_split="unseen"), "holdout_split"),
    (dict(colours=("red",), shapes=("circle",), holdout_combos=("red circle",)), "every colour x shape"),
])
def test_bad_holdouts_are_refused(kw, match):
    with pytest.raises(ValueError, match=match):
        ShapesConfig(**kw)
