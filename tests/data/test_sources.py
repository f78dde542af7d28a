import numpy as np
import pytest

from mmjax.data import pipeline, records, sources
from mmjax.data.shapes import COLOURS, ShapesConfig, ShapesSource


def test_digits_split_is_fixed_disjoint_and_80_20():
    train, test = sources.DigitsSource("train"), sources.DigitsSource("test")
    assert (len(train), len(test)) == (1437, 360)
    assert train[0]["image"].shape == (8, 8, 1) and 0 <= train[0]["image"].min() <= train[0]["image"].max() <= 1
    flat = lambda s: {s.images[i].tobytes() for i in range(len(s))}
    assert len(flat(train) & flat(test)) < 5  # the data set itself holds a few duplicate images
    np.testing.assert_array_equal(sources.DigitsSource("test").labels, test.labels)
    assert len(set(test.labels.tolist())) == 10


def test_shapes_records_are_deterministic_and_consistent():
    cfg = ShapesConfig(resolution=32, colours=("red", "blue"), shapes=("circle", "square"))
    a, b = ShapesSource(cfg, num_records=50, seed=3), ShapesSource(cfg, num_records=50, seed=3)
    for i in range(20):
        ra, rb = a[i], b[i]
        np.testing.assert_array_equal(ra["image"], rb["image"])
        assert ra["caption"] == rb["caption"] == f"a {cfg.colours[ra['colour']]} {cfg.shapes[ra['shape']]}"
        # the prompted colour dominates the non-background pixels
        pixels = ra["image"].reshape(-1, 3).astype(float)
        fg = pixels[pixels.sum(1) > 200]
        ref = np.array([COLOURS[c] for c in cfg.colours], float)
        nearest = np.argmin(((fg[:, None] - ref[None]) ** 2).sum(-1), 1)
        assert np.bincount(nearest, minlength=2).argmax() == ra["colour"]
    assert ShapesSource(cfg, num_records=50, seed=4)[0]["caption"] != a[0]["caption"] or not np.array_equal(
        ShapesSource(cfg, num_records=50, seed=4)[0]["image"], a[0]["image"])


def test_shapes_multi_object_questions():
    src = ShapesSource(ShapesConfig(resolution=48, min_objects=2, max_objects=3, with_positions=True),
                       num_records=40)
    for i in range(40):
        r = src[i]
        assert r["count"] in (2, 3) and r["caption"].count(" at the ") == r["count"]
        if r["question"].startswith("How many"):
            assert r["answer"] == ("two", "three")[r["count"] - 2]
    with pytest.raises(ValueError, match="unknown colour"):
        ShapesConfig(colours=("mauve",))


def test_arrayrecord_corrupt_records_are_skipped_and_counted(tmp_path):
    from array_record.python.array_record_module import ArrayRecordWriter

    path = str(tmp_path / "data.array_record")
    writer = ArrayRecordWriter(path, "group_size:1")
    for i in range(10):
        writer.write(b"\xc1not msgpack" if i in (3, 7) else records.encode({"label": i, "image": np.zeros(4)}))
    writer.close()
    source = sources.make_source({"name": "arrayrecord", "pattern": str(tmp_path / "*.array_record")})
    counter = pipeline.SkipCounter()
    seen = []
    for batch in pipeline.eval_batches(source, lambda r, rng: {"label": np.int32(r["label"])},
                                       global_batch_size=4, counter=counter):
        seen += batch["label"][batch["valid"] > 0].tolist()
    assert seen == [0, 1, 2, 4, 5, 6, 8, 9]
    assert counter.counts == {"undecodable": 2}


def test_missing_sources_fail_with_a_clear_message(tmp_path):
    with pytest.raises(sources.DataError, match="no ArrayRecord files match"):
        sources.make_source({"name": "arrayrecord", "pattern": str(tmp_path / "*.ar")})
    with pytest.raises(sources.DataError, match=r"tfds data set 'imagenet2012' split 'train' is not available"):
        sources.make_source({"name": "tfds", "dataset": "imagenet2012", "split": "train",
                             "data_dir": str(tmp_path)})
    with pytest.raises(sources.DataError, match="unknown data source"):
        sources.make_source({"name": "imagenet"})


def test_train_pipeline_is_seeded_and_resumable():
    src = sources.DigitsSource("train")
    pp = lambda r, rng: {"label": np.int32(r["label"]), "x": np.float32(rng.uniform())}
    counter = pipeline.SkipCounter()
    it = iter(pipeline.train_dataset(src, pp, global_batch_size=8, seed=1, counter=counter))
    first = [next(it) for _ in range(3)]
    state = it.get_state()
    nxt = next(it)
    again = iter(pipeline.train_dataset(src, pp, global_batch_size=8, seed=1, counter=counter))
    again.set_state(state)
    restored = next(again)
    np.testing.assert_array_equal(nxt["label"], restored["label"])
    np.testing.assert_array_equal(nxt["x"], restored["x"])
    other = iter(pipeline.train_dataset(src, pp, global_batch_size=8, seed=2, counter=counter))
    assert not np.array_equal(next(other)["label"], first[0]["label"])
