"""A corpus of bad and unusual LLaVA records, made on the fly, through the real data path (LlavaJsonSource +
LlavaProcessor, and the llava task's `preprocess`) and the pipeline's skip counter.

Unusual but valid images (CMYK, 16-bit, grey, RGBA, 1x1) must come out converted like the reference's PIL
`convert("RGB")` (16-bit grey scaled, not clipped); broken records must be skipped and counted under their own
reason; nothing may hang (a finite `eval_batches` pass; huge images are refused from their header).
"""

from __future__ import annotations

import io
import json
import logging
import struct
import zlib
from pathlib import Path

import ml_collections
import numpy as np
import pytest
from PIL import Image

from mmjax import configlib
from mmjax.data import images as im
from mmjax.data import pipeline
from mmjax.data.llava_data import (
    ImageConfig,
    LlavaJsonSource,
    LlavaProcessor,
    MissingImageError,
    load_images,
    record_context,
)
from mmjax.data.text import make_tokenizer
from mmjax.layout import anyres

SIZE, PATCH, MAX_LEN = 32, 8, 128
TINY = Path(__file__).parents[2] / "configs" / "llava" / "tiny.py"


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares its size and holds no pixel data: enough for a decompression-bomb check."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def _qa(question: str = "What is it?", answer: str = "a cat", images: int = 1) -> list[dict[str, str]]:
    return [{"from": "human", "value": "<image>\n" * images + question}, {"from": "gpt", "value": answer}]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Image files, a JSONL data file of good, unusual and bad records, and what each image must decode to."""
    d = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    good = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    Image.fromarray(good).save(d / "good.png")
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, format="JPEG")
    (d / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    Image.fromarray(np.tile(np.array([200, 30, 40], np.uint8), (16, 24, 1))).convert("CMYK").save(d / "cmyk.jpg")
    gray16 = (np.arange(24 * 16, dtype=np.uint32).reshape(16, 24) * 171).astype(np.uint16)  # 0 .. 65493
    Image.fromarray(gray16).save(d / "gray16.png")
    Image.fromarray(np.array([[[10, 200, 30]]], np.uint8)).save(d / "one.png")
    Image.new("1", (8000, 8000)).save(d / "huge.png")  # 64 MP, a few KB on disk
    (d / "bomb.png").write_bytes(_png_header_only(30000, 30000))  # 900 MP: PIL's own bomb limit
    grey = rng.integers(0, 256, (12, 9), dtype=np.uint8)
    Image.fromarray(grey).save(d / "grey.png")
    rgba = rng.integers(0, 256, (10, 14, 4), dtype=np.uint8)
    rgba[:5, :, 3] = 0  # fully transparent rows keep their colour under convert("RGB"), as in the reference
    Image.fromarray(rgba, "RGBA").save(d / "rgba.png")

    def pil_rgb(name: str) -> np.ndarray:
        with Image.open(d / name) as img:
            return np.asarray(img.convert("RGB"))

    expected = {"good.png": good, "cmyk.jpg": pil_rgb("cmyk.jpg"), "one.png": np.array([[[10, 200, 30]]], np.uint8),
                "gray16.png": np.repeat((gray16 >> 8).astype(np.uint8)[..., None], 3, -1),
                "grey.png": np.repeat(grey[..., None], 3, -1), "rgba.png": rgba[..., :3]}
    records = [
        {"id": "good", "image": "good.png", "conversations": _qa()},
        {"id": "missing", "image": "missing.jpg", "conversations": _qa()},
        {"id": "truncated", "image": "truncated.jpg", "conversations": _qa()},
        {"id": "cmyk", "image": "cmyk.jpg", "conversations": _qa()},
        {"id": "gray16", "image": "gray16.png", "conversations": _qa()},
        {"id": "one", "image": "one.png", "conversations": _qa()},
        {"id": "huge", "image": "huge.png", "conversations": _qa()},
        {"id": "bomb", "image": "bomb.png", "conversations": _qa()},
        {"id": "grey", "image": "grey.png", "conversations": _qa()},
        {"id": "rgba", "image": "rgba.png", "conversations": _qa()},
        {"id": "empty", "image": "good.png", "conversations": []},
        {"id": "no-placeholder", "image": "good.png", "conversations": _qa(images=0)},
        {"id": "two-placeholders", "image": "good.png", "conversations": _qa(images=2)},
        {"id": "too-long", "image": "good.png", "conversations": _qa(question="why? " * 40)},
        '{"id": "malformed", "image": "good.png", "conversations": [',  # a cut-off line
        {"id": "not-a-list", "conversations": "hello"},
        {"id": "text-only", "conversations": _qa(images=0)},
    ]
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    (d / "data.jsonl").write_text("\n".join(lines) + "\n\n")  # a trailing blank line is not a record
    (d / "data.json").write_text(json.dumps([r for r in records if not isinstance(r, str)]))
    (d / "all_bad.jsonl").write_text("\n".join([lines[1], lines[2], "{oops", lines[10], lines[13]]) + "\n")
    good_ids = ["good", "cmyk", "gray16", "one", "grey", "rgba", "text-only"]
    counts = {"MissingImageError": 1, "ImageDecodeError": 1, "ImageTooLargeError": 2, "EmptyConversationError": 1,
              "UnusedImageError": 1, "UnmatchedPlaceholderError": 1, "NoSupervisedTokensError": 1, "undecodable": 2}
    images = {"good": "good.png", "cmyk": "cmyk.jpg", "gray16": "gray16.png", "one": "one.png", "grey": "grey.png",
              "rgba": "rgba.png"}
    return {"dir": d, "expected": expected, "good_ids": good_ids, "counts": counts, "images": images}


def _run(source, preprocess) -> tuple[list[dict[str, np.ndarray]], dict[str, int]]:
    """One finite pass; the surviving samples in order, and the skip counts."""
    counter = pipeline.SkipCounter()
    rows = []
    for batch in pipeline.eval_batches(source, preprocess, global_batch_size=4, counter=counter):
        rows += [{k: v[i] for k, v in batch.items()} for i in range(len(batch["valid"])) if batch["valid"][i]]
    return rows, counter.counts


def _processor() -> LlavaProcessor:
    tok = make_tokenizer("byte", special_tokens=["<|im_start|>", "<|im_end|>"])
    cfg = ImageConfig(mode="pad", size=SIZE, patch_size=PATCH)
    return LlavaProcessor(cfg, tok, "chatml", MAX_LEN, tok.token_to_id("<image>"))


def _check_samples(rows: list[dict[str, np.ndarray]], corpus: dict, fill: tuple[int, int, int]) -> None:
    assert len(rows) == len(corpus["good_ids"])
    for row, record_id in zip(rows, corpus["good_ids"]):
        assert (row["labels"] != -100).any(), record_id
        if record_id == "text-only":
            assert row["num_images"] == 0
            continue
        want = im.llava15_image(corpus["expected"][corpus["images"][record_id]], SIZE, fill=fill)
        np.testing.assert_array_equal(row["pixels"][0, 0], want, err_msg=record_id)
    by_id = dict(zip(corpus["good_ids"], rows))
    assert 100 < by_id["gray16"]["pixels"].mean() < 155  # a grey ramp, not clipped to white
    np.testing.assert_array_equal(by_id["one"]["pixels"][0, 0], np.broadcast_to([10, 200, 30], (SIZE, SIZE, 3)))
    centre = by_id["cmyk"]["pixels"][0, 0, SIZE // 2, SIZE // 2].astype(int)
    assert np.abs(centre - [200, 30, 40]).max() < 16, centre  # still red


def test_corpus_through_source_and_processor(corpus: dict, caplog: pytest.LogCaptureFixture) -> None:
    processor = _processor()

    def preprocess(record, rng):
        with record_context(record):
            return processor.training_example(record["conversations"], load_images(record))

    source = LlavaJsonSource(corpus["dir"] / "data.jsonl", corpus["dir"])
    assert len(source) == 17
    with caplog.at_level(logging.WARNING, logger="mmjax.data.llava_data"):
        rows, counts = _run(source, preprocess)
    assert counts == corpus["counts"]
    _check_samples(rows, corpus, anyres.CLIP_MEAN_RGB)
    assert "data.jsonl line 15: malformed JSON" in caplog.text and "data.jsonl line 16" in caplog.text
    # an error names the file, the line, the record and the image
    with pytest.raises(MissingImageError, match=r"data\.jsonl line 2 \(id 'missing'\): image file .*missing\.jpg"):
        preprocess(source[1], None)

    # the same records as a JSON list: the same counts, less the malformed line
    rows, counts = _run(LlavaJsonSource(corpus["dir"] / "data.json", corpus["dir"]), preprocess)
    assert counts == corpus["counts"] | {"undecodable": 1} and len(rows) == len(corpus["good_ids"])

    # a file of nothing but bad records: a finite pass with no sample and every record counted
    rows, counts = _run(LlavaJsonSource(corpus["dir"] / "all_bad.jsonl", corpus["dir"]), preprocess)
    assert rows == [] and counts == {"MissingImageError": 1, "ImageDecodeError": 1, "undecodable": 1,
                                     "EmptyConversationError": 1, "NoSupervisedTokensError": 1}


def test_corpus_through_the_llava_task(corpus: dict) -> None:
    from mmjax.train.tasks.llava import LlavaTask

    config = configlib.load_config_file(f"{TINY}:stage=2")
    config.data.train = ml_collections.ConfigDict(dict(name="llava_json", json=str(corpus["dir"] / "data.jsonl"),
                                                       images=str(corpus["dir"])))
    task = LlavaTask(config)
    assert (task.image_cfg.size, task.image_cfg.patch_size, config.text.max_len) == (SIZE, PATCH, MAX_LEN)
    rows, counts = _run(task.source("train"), task.preprocess)
    assert counts == corpus["counts"]
    _check_samples(rows, corpus, im.pad_fill(task.model_cfg.image_mean))


def test_decode_refuses_huge_images_from_their_header(corpus: dict) -> None:
    with pytest.raises(im.ImageTooLargeError, match=r"huge\.png.*8000x8000 = 64000000 pixels"):
        im.decode_image(corpus["dir"] / "huge.png")
    with pytest.raises(im.ImageTooLargeError, match=r"bomb\.png.*refused by PIL"):
        im.decode_image(corpus["dir"] / "bomb.png", max_pixels=10**10)
    assert im.decode_image(corpus["dir"] / "one.png", max_pixels=1).shape == (1, 1, 3)
