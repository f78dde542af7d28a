"""`python -m mmjax.data.inspect`: reads N records of a config's split through its task's own path, counts skips
per reason as training does, reports image sizes and text lengths in tokens, and writes a grid PNG and the
numbers, for the ViT digits, VQ, LLaVA and Show-o (its source records, not its bundles) tiny configs."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from mmjax.data.inspect import TILE, Part, inspect, inspect_part, main
from tests.data.corpora import shape_samples, write_corpus
from tests.helpers import REPO
from tests.train.test_showo_corpora import corpus_config
from tests.train.test_showo_task import write_tokenizer_run


def config(name: str) -> str:
    return os.path.join(REPO, "configs", name)


def test_skips_are_counted_per_reason_as_the_training_pipeline_names_them():
    def process(record):
        if record["n"] == 2:
            raise KeyError("caption")
        return None if record["n"] == 3 else {"image": np.zeros((4, 4, 3)), "text_len": np.int32(record["n"])}

    image = np.full((6, 10, 3), 200, np.uint8)
    source = [{"n": 0, "image": image, "caption": "a"}, None, {"n": 2, "image": b"not an image"}, {"n": 3},
              {"n": 4, "image": image[:3], "caption": "b"}, {"n": 5}]
    samples, counter = inspect_part(Part("records", source, process), num=5)   # the sixth is not read
    assert counter.counts == {"undecodable": 1, "KeyError": 1, "rejected": 1} and counter.kept == 2
    assert counter.examples["KeyError"] == "record 2: 'caption'"
    assert [s.skipped for s in samples] == [None, "undecodable", "KeyError", "rejected", None]
    assert [s.image.shape if s.image is not None else None for s in samples] == [
        (6, 10, 3), None, None, None, (3, 10, 3)]   # undecodable bytes: no image, the reason says why
    assert [s.tokens for s in samples] == [0, None, None, None, 4] and samples[4].text == "b"


def test_vit_digits_vq_and_llava_tiny_configs_through_the_command(tmp_path, capsys):
    runs = {"digits": ["--config", config("vit/digits.py"), "--split", "eval"],
            "vq": ["--config", config("vq/tiny.py") + ":size=16"],
            "llava": ["--config", config("llava/tiny.py"), "--config.data.train.seed=3"]}
    reports = {}
    for name, args in runs.items():
        out = tmp_path / name
        assert main([*args, "--num", "5", "--out", str(out)]) == 0
        reports[name] = json.loads((out / "inspect.json").read_text())["parts"]["records"]
        grid = Image.open(out / "inspect.png")
        assert grid.width == 5 * (TILE + 8) and grid.height > TILE
    printed = capsys.readouterr().out
    assert "records: read 5, kept 5, skipped: none" in printed and "inspect.png" in printed
    digits, vq, llava = reports["digits"], reports["vq"], reports["llava"]
    assert digits["kept"] == 5 and digits["height"] == {"min": 8, "median": 8.0, "max": 8}
    assert digits["text_tokens"] is None
    assert vq["height"]["max"] == 16 and vq["images"] == 5 and vq["skipped"] == {}
    assert llava["images"] == 5 and 20 < llava["text_tokens"]["min"] <= llava["text_tokens"]["max"] < 512


def test_showo_reads_its_parts_source_records_and_counts_bad_ones(tmp_path):
    samples = shape_samples(8, resolution=24, corrupt=(1,), no_image=(4,))
    source = write_corpus("webdataset", str(tmp_path / "wds"), samples, shards=2)
    cfg = corpus_config(write_tokenizer_run(str(tmp_path / "vq")), source, 2)
    report = inspect(cfg, "train", 6, str(tmp_path / "out"))["parts"]
    assert sorted(report) == ["lm", "mmu", "t2i"]
    for part in ("t2i", "mmu"):   # the corrupt JPEG and the imageless sample (its reason is the source's)
        assert report[part]["skipped"]["ImageDecodeError"] == 1 and sum(report[part]["skipped"].values()) == 2
        assert report[part]["kept"] == 4 and report[part]["images"] == 4 and report[part]["width"]["max"] == 24
    lm = report["lm"]   # text rows keep the corrupt JPEG's caption and show no image
    assert "ImageDecodeError" not in lm["skipped"] and lm["kept"] + sum(lm["skipped"].values()) == 6
    assert lm["images"] == 0
    assert report["t2i"]["text_tokens"]["min"] > 0
    grid = Image.open(tmp_path / "out" / "inspect.png")
    assert grid.width == 8 * (TILE + 8) and grid.height >= 3 * TILE   # 18 samples: 3 rows of 8


def test_bad_arguments_are_one_error_line(tmp_path, capsys):
    base = ["--config", config("vq/tiny.py") + ":size=16", "--out", str(tmp_path)]
    assert main([*base, "--split", "validation"]) == 2
    assert capsys.readouterr().err.strip().endswith("config.data has no split 'validation'; has ['eval', 'train']")
    assert main([*base, "--config.data.train.resolutoin=8"]) == 2
    assert "unknown config field 'data.train.resolutoin'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        main([*base, "extra"])
    assert exited.value.code == 2
    assert capsys.readouterr().err.startswith("error: unrecognised argument 'extra'")
