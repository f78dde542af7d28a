"""`python -m mmjax.tokenize_images`: side-by-side reconstructions of a folder, and ArrayRecord id shards whose
ids decode back (round trip through mmjax.data.records.decode)."""

from __future__ import annotations

import glob
import json
import os

import numpy as np
import pytest
from PIL import Image

from mmjax import configlib
from mmjax.data.records import decode
from mmjax.data.shapes import ShapesConfig, ShapesSource
from mmjax.tokenize_images import Tokenizer, main
from mmjax.train.trainer import Trainer
from tests.helpers import REPO

DATA_CONFIG = os.path.join(REPO, "configs/vq/tiny.py") + ":size=16"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("vq_run"))
    config = configlib.load_config_file(os.path.join(REPO, "configs/vq/tiny.py") +
                                        ":size=16,tokens=4,bits=5,ch=8,batch=8,steps=3")
    config = configlib.apply_overrides(config, ["log_every=3", "eval.max_examples=16", "eval_batch_size=16"])
    Trainer(config, workdir).run()
    return workdir


def test_reconstructs_a_folder_side_by_side_and_skips_unreadable_files(run_dir, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    source = ShapesSource(ShapesConfig(resolution=24), num_records=3, seed=5)
    for i in range(3):  # 24px originals: resized (bicubic, shortest edge) to the tokenizer's 16px
        Image.fromarray(source[i]["image"]).save(images / f"img{i}.png")
    (images / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    assert main(["--workdir", run_dir, "--images", str(images), "--out", str(out)]) == 0
    pngs = sorted(os.listdir(out))
    assert pngs == ["img0.png", "img1.png", "img2.png", "summary.json"]
    side_by_side = np.asarray(Image.open(out / "img0.png"))
    assert side_by_side.shape == (128, 256, 3)  # [original | reconstruction], 16px each, shown 8x
    summary = json.loads((out / "summary.json").read_text())
    assert summary["skipped"] == ["broken.png"] and set(summary["psnr"]) == {"img0.png", "img1.png", "img2.png"}
    assert "mean PSNR" in capsys.readouterr().out


def test_tokenizes_a_source_into_shards_whose_ids_decode_back(run_dir, tmp_path):
    from array_record.python.array_record_module import ArrayRecordReader

    out = tmp_path / "ids"
    assert main(["--workdir", run_dir, "--dataset-config", DATA_CONFIG, "--split", "eval", "--shards", "3",
                 "--limit", "20", "--batch", "8", "--out", str(out)]) == 0
    files = sorted(glob.glob(str(out / "ids-*.array_record")))
    assert [os.path.basename(f) for f in files] == [f"ids-0000{k}-of-00003.array_record" for k in range(3)]
    records = []
    for f in files:
        reader = ArrayRecordReader(f)
        records += [decode(r) for r in reader.read_all()]
        reader.close()
    info = json.loads((out / "tokenizer.json").read_text())
    assert len(records) == info["records"] == 20 and info["grid"] == [4, 4] and info["codebook_size"] == 32
    tok = Tokenizer(workdir=run_dir)
    source = configlib.load_config_file(DATA_CONFIG).data.eval
    src = ShapesSource(ShapesConfig(resolution=16), num_records=source.num_records, seed=source.seed)
    images = np.stack([tok.preprocess(src[i]["image"]) for i in range(20)])
    ids = np.stack([r["ids"] for r in records])
    assert ids.dtype == np.int32 and ids.shape == (20, 4, 4) and ids.max() < 32
    np.testing.assert_array_equal(ids, tok.encode(images))          # the shards hold the images' own ids, in order
    assert [r["caption"] for r in records] == [src[i]["caption"] for i in range(20)]   # passthrough fields
    np.testing.assert_allclose(tok.decode(ids), tok.decode(tok.encode(images)), atol=1e-6)  # ids decode back
    assert tok.decode(ids).shape == (20, 16, 16, 3)


def test_refuses_ambiguous_or_missing_inputs(run_dir, tmp_path):
    with pytest.raises(SystemExit):
        main(["--workdir", run_dir, "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        main(["--workdir", str(tmp_path), "--images", str(tmp_path), "--out", str(tmp_path / "o")])
