"""LLaVA data: the JSON source skips and counts bad records; samples line labels, image spans and maps up."""

import json

import numpy as np
import pytest
from PIL import Image

from mmjax.data import images as im
from mmjax.data import pipeline
from mmjax.data.conversation import IGNORE_INDEX
from mmjax.data.llava_data import (
    ImageConfig,
    ImageCountError,
    LlavaJsonSource,
    LlavaProcessor,
    NoSupervisedTokensError,
    collate_prompts,
    load_images,
)
from mmjax.data.text import make_tokenizer
from mmjax.layout import anyres

TOK = make_tokenizer("byte", special_tokens=["<|im_start|>", "<|im_end|>"])
IMAGE_ID = TOK.token_to_id("<image>")


def _processor(max_len=96, **image):
    cfg = ImageConfig(**({"mode": "pad", "size": 28, "patch_size": 7} | image))
    return LlavaProcessor(cfg, TOK, "chatml", max_len, IMAGE_ID)


def _qa(question="What is it?", answer="a cat", images=1):
    return [{"from": "human", "value": "<image>\n" * images + question}, {"from": "gpt", "value": answer}]


def test_json_source_skips_and_counts_missing_undecodable_and_malformed(tmp_path):
    Image.fromarray(np.full((20, 30, 3), 200, np.uint8)).save(tmp_path / "ok.png")
    (tmp_path / "broken.jpg").write_bytes(b"not an image at all")
    records = [
        {"id": "a", "image": "ok.png", "conversations": _qa()},
        {"id": "b", "image": "missing.jpg", "conversations": _qa()},
        {"id": "c", "image": "broken.jpg", "conversations": _qa()},
        {"id": "d", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]},
        {"id": "e", "image": 42, "conversations": _qa()},  # malformed
        {"id": "f", "image": "ok.png", "conversations": _qa(images=2)},  # placeholder/image count mismatch
        {"id": "g", "image": ["ok.png", "missing2.jpg"], "conversations": _qa(images=2)},
    ]
    (tmp_path / "data.json").write_text(json.dumps(records))
    source = LlavaJsonSource(tmp_path / "data.json", tmp_path)
    assert len(source) == 7 and source[4] is None
    assert source[0]["image_paths"] == [str(tmp_path / "ok.png")]
    processor = _processor(max_images=2)
    preprocess = lambda r, rng: processor.training_example(r["conversations"], load_images(r))
    counter = pipeline.SkipCounter()
    batches = list(pipeline.eval_batches(source, preprocess, global_batch_size=4, counter=counter))
    assert sum(int(b["valid"].sum()) for b in batches) == 2  # the good image record and the text-only one
    assert counter.counts == {"MissingImageError": 2, "ImageDecodeError": 1, "undecodable": 1,
                              "UnmatchedPlaceholderError": 1}
    with pytest.raises(ValueError, match="cannot read LLaVA JSON"):
        LlavaJsonSource(tmp_path / "nope.json")


def test_training_sample_labels_only_answers_and_expands_images():
    processor = _processor()
    image = np.zeros((28, 40, 3), np.uint8)
    ex = processor.training_example(_qa(answer="blue"), [image])
    ids, labels, mask = ex["ids"], ex["labels"], ex["mask"]
    n = int(mask.sum())
    assert (ids[:n] == IMAGE_ID).sum() == 16 and (ids[n:] == TOK.pad_id).all()
    # chatml supervises the assistant turn whole (and preprocess_qwen's structural tokens before it)
    assert TOK.decode([t for t in labels if t != IGNORE_INDEX]).endswith("<|im_start|>assistant\nblue<|im_end|>\n")
    assert (labels[ids == IMAGE_ID] == IGNORE_INDEX).all()
    start = int(np.argmax(ids == IMAGE_ID))
    np.testing.assert_array_equal(ex["image_index"][start:start + 16, 0], np.arange(16))
    assert ex["image_weight"][:start].sum() == 0 and ex["num_images"] == 1
    assert ex["pixels"].shape == (1, 1, 28, 28, 3) and ex["pixels"].dtype == np.uint8
    np.testing.assert_array_equal(ex["pixels"][0, 0], im.llava15_image(image, 28))


def test_truncation_never_cuts_an_image_and_empty_samples_are_refused():
    processor = _processor(max_len=40)
    with pytest.raises(NoSupervisedTokensError):  # the answer lies beyond max_len
        processor.training_example(_qa(question="x" * 60), [np.zeros((28, 28, 3), np.uint8)])
    # an image straddling the limit is dropped whole, together with everything after it
    ex = _processor(max_len=60).training_example(
        [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "ok"},
         {"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "a"}], [np.zeros((28, 28, 3), np.uint8)])
    assert (ex["ids"] != IMAGE_ID).all() and ex["num_images"] == 0 and ex["image_weight"].sum() == 0
    with pytest.raises(ImageCountError):
        processor.training_example(_qa(images=1), [])
    # the structural tokens chatml supervises do not count: with its answer cut away a sample teaches nothing
    with pytest.raises(NoSupervisedTokensError):
        _processor(max_len=70).training_example(_qa(question="x" * 20), [np.zeros((28, 28, 3), np.uint8)])


def test_anyres_sample_uses_the_layout_count_and_slots():
    pins = ((28, 56), (56, 28), (56, 56))
    processor = _processor(max_len=200, mode="anyres", pinpoints=pins, newline=True, max_images=2)
    assert processor.cfg.tiles == 5
    images = [np.zeros((30, 50, 3), np.uint8), np.zeros((60, 20, 3), np.uint8)]
    ex = processor.training_example(_qa(images=2), images)
    counts = [processor.cfg.layout(50, 30).num_tokens, processor.cfg.layout(20, 60).num_tokens]
    assert (ex["ids"] == IMAGE_ID).sum() == sum(counts)
    positions = np.flatnonzero(ex["ids"] == IMAGE_ID)
    second = ex["image_index"][positions[counts[0]:], 0]
    newline_row = 2 * 5 * 16
    assert ((second >= 5 * 16) | (second == newline_row)).all()  # the second image reads slot 1 (or the newline)
    assert ex["pixels"].shape == (2, 5, 28, 28, 3)


def test_prompts_are_left_padded_with_shifted_maps():
    processor = _processor()
    a = processor.prompt_example("What?", [np.zeros((28, 28, 3), np.uint8)])
    b = processor.prompt_example("A much longer question here?", [np.zeros((28, 28, 3), np.uint8)])
    batch = collate_prompts([a, b], processor, bucket=16, batch_size=3)
    assert batch["ids"].shape[1] % 16 == 0 and batch["valid"].tolist() == [1, 1, 0]
    for row, ex in enumerate([a, b]):
        n = len(ex["ids"])
        np.testing.assert_array_equal(batch["ids"][row, -n:], ex["ids"])
        assert batch["prompt_valid"][row].sum() == n and batch["prompt_valid"][row, -1]
        image_positions = np.flatnonzero(batch["ids"][row] == IMAGE_ID)
        np.testing.assert_array_equal(batch["image_index"][row, image_positions, 0], np.arange(16))
    assert TOK.decode(a["ids"]).endswith("<|im_start|>assistant\n")


def test_onevision_multi_image_pads_each_image_with_the_mean_colour():
    """The reference processes every image of a multi-image sample with 'pad' (mean-colour square, then the
    processor's resize) and keeps its base view + one newline; a single image still gets AnyRes tiles."""
    fill = im.pad_fill(anyres.SIGLIP_MEAN)
    pins = ((28, 56), (56, 28), (56, 56))
    processor = _processor(max_len=200, mode="anyres", pinpoints=pins, newline=True, max_images=2,
                           multi_image="base", fill=fill)
    wide, tall = _rgb_image(20, 50, 1), _rgb_image(60, 21, 2)
    ex = processor.training_example(_qa(images=2), [wide, tall])
    for slot, image in enumerate([wide, tall]):
        np.testing.assert_array_equal(ex["pixels"][slot, 0], im.llava15_image(image, 28, fill=fill))
        assert (ex["pixels"][slot, 1:] == 0).all()  # no tiles
    assert (ex["pixels"][0, 0, 0, 0] == fill).all()  # the border of the wide image is the mean colour
    assert (ex["ids"] == IMAGE_ID).sum() == 2 * (16 + 1)  # base view + newline each
    single = processor.training_example(_qa(), [wide])
    assert (single["ids"] == IMAGE_ID).sum() == processor.cfg.layout(50, 20).num_tokens
    np.testing.assert_array_equal(single["pixels"][0, : processor.cfg.layout(50, 20).num_tiles],
                                  im.anyres_tiles(wide, pins, 28))


def _rgb_image(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_max_tiles_caps_the_anyres_grid_instead_of_refusing_big_images():
    from mmjax.data.llava_data import ImageConfig, process_media
    from mmjax.layout.anyres import ONEVISION_PINPOINTS

    capped = ImageConfig(mode="anyres", size=384, patch_size=14, pinpoints=ONEVISION_PINPOINTS, anyres_max=9,
                         max_tiles=10)
    big = np.zeros((2000, 2000, 3), np.uint8)  # the uncapped best grid would be 6x6 = 36 tiles
    tiles, tmap = process_media(big, capped)
    assert len(tiles) == 1 + 9 and tmap.num_tokens == capped.layout(2000, 2000).num_tokens
    small = np.zeros((768, 768, 3), np.uint8)  # below the cap nothing changes
    uncapped = ImageConfig(mode="anyres", size=384, patch_size=14, pinpoints=ONEVISION_PINPOINTS, anyres_max=9)
    assert len(process_media(small, capped)[0]) == len(process_media(small, uncapped)[0]) == 5
