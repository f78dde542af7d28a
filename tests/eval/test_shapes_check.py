"""GenEval-style pixel checks on rendered synthetic shapes, and the GenEval folder writer."""

import itertools
import json

import numpy as np
import pytest

from mmjax.data import shapes
from mmjax.eval import geneval, shapes_check


@pytest.mark.parametrize("resolution", [32, 64])
def test_every_shape_and_colour_is_recognised(resolution):
    rng = np.random.default_rng(0)
    for colour, shape in itertools.product(shapes.COLOURS, shapes.SHAPES):
        for _ in range(3):  # random size and position, as the data set draws them
            r = resolution * rng.uniform(0.55, 0.8) / 4
            cx, cy = rng.uniform(r + 1, resolution - r - 1, size=2)
            image = shapes.render([dict(shape=shape, colour=colour, cx=cx, cy=cy, r=r)], resolution)
            found = shapes_check.detect(image)
            assert len(found) == 1, (colour, shape, found)
            assert (found[0].colour, found[0].shape) == (colour, shape), (r, cx, cy, found[0])
            assert shapes_check.matches(image, colour, shape)
            assert not shapes_check.matches(image, colour, "square" if shape != "square" else "circle")


def test_data_set_scenes_are_judged_correctly():
    source = shapes.ShapesSource(shapes.ShapesConfig(resolution=32), num_records=96, seed=3)
    records = [source[i] for i in range(len(source))]
    scores = shapes_check.score_prompts([r["image"] for r in records], [r["caption"] for r in records])
    assert scores == {"t2i_match": 1.0, "t2i_colour": 1.0, "t2i_shape": 1.0, "t2i_found": 1.0}


def test_blank_and_noise_images_are_rejected():
    blank = np.zeros((32, 32, 3), np.uint8)
    noise = (np.random.default_rng(0).random((32, 32, 3)) * 90).astype(np.uint8)
    speck = blank.copy()
    speck[3:5, 3:5] = 255
    for image in (blank, noise, speck):
        assert shapes_check.detect(image) == []
        assert not shapes_check.matches(image, "red", "circle")
    assert shapes_check.score_prompts([blank], ["a red circle"])["t2i_found"] == 0.0


def test_two_objects_are_counted_and_floats_accepted():
    objects = [dict(shape="circle", colour="red", cx=8, cy=8, r=6), dict(shape="square", colour="blue", cx=24,
                                                                         cy=24, r=6)]
    image = shapes.render(objects, 32).astype(np.float32) / 255.0
    assert shapes_check.count_objects(image) == 2
    assert {(d.colour, d.shape) for d in shapes_check.detect(image)} == {("red", "circle"), ("blue", "square")}


def test_parse_prompt():
    assert shapes_check.parse_prompt("a red circle and a blue square") == [("red", "circle"), ("blue", "square")]
    assert shapes_check.parse_prompt("a photo of a bench") == []
    with pytest.raises(ValueError, match="names no colour"):
        shapes_check.score_prompts([np.zeros((8, 8, 3), np.uint8)], ["a bench"])


def test_geneval_layout(tmp_path):
    meta = [geneval.shapes_metadata("red", "circle"), {"tag": "single_object", "prompt": "a photo of a bench",
                                                       "include": [{"class": "bench", "count": 1}]}]
    images = [[np.zeros((8, 8, 3), np.uint8)] * 2, [np.ones((8, 8, 3), np.float32)] * 3]
    folders = geneval.write_geneval(tmp_path, meta, images)
    assert [f.split("/")[-1] for f in folders] == ["00000", "00001"]
    assert sorted(p.name for p in (tmp_path / "00001" / "samples").iterdir()) == ["0000.png", "0001.png", "0002.png"]
    assert json.loads((tmp_path / "00000" / "metadata.jsonl").read_text()) == meta[0]
    assert (tmp_path / "00000" / "grid.png").exists()
    (tmp_path / "meta.jsonl").write_text("\n".join(json.dumps(m) for m in meta) + "\n")
    assert geneval.read_metadata(tmp_path / "meta.jsonl") == meta
