"""`python -m mmjax.tokenize_images`: side-by-side reconstructions of a folder; ArrayRecord id shards whose ids
decode back; a job stopped half-way and restarted writes byte-identical shards; hosts write their own shards; the
batch is sharded over the local devices."""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import sys

import ml_collections
import numpy as np
import pytest
from PIL import Image

from mmjax import configlib
from mmjax.data import corpus_writers as cw
from mmjax.data.records import decode
from mmjax.data.shapes import ShapesConfig, ShapesSource
from mmjax.data.sources import DataError
from mmjax.pretokenize import params_digest
from mmjax.tokenize_images import Tokenizer, main
from mmjax.train.trainer import Trainer
from tests.data.corpora import shape_samples, write_corpus
from tests.helpers import REPO, run

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


def read_shards(out) -> list[dict]:
    from array_record.python.array_record_module import ArrayRecordReader

    records = []
    for f in sorted(glob.glob(str(out / "ids-*.array_record"))):
        reader = ArrayRecordReader(f)
        records += [decode(r) for r in reader.read_all()]
        reader.close()
    return records


def test_tokenizes_a_source_into_shards_whose_ids_decode_back(run_dir, tmp_path, capsys):
    out = tmp_path / "ids"
    assert main(["--workdir", run_dir, "--dataset-config", DATA_CONFIG, "--split", "eval", "--records_per_shard", "8",
                 "--limit", "20", "--batch", "8", "--out", str(out)]) == 0
    files = sorted(glob.glob(str(out / "ids-*.array_record")))
    assert [os.path.basename(f) for f in files] == [f"ids-h0000-00000{k}.array_record" for k in range(3)]
    records = read_shards(out)
    info = json.loads((out / "tokenizer.json").read_text())
    summary = json.loads((out / "summary-h0000.json").read_text())
    assert len(records) == summary["records"] == 20 and summary["skipped"] == {} and summary["complete"]
    assert info["grid"] == [4, 4] and info["codebook_size"] == 32 and info["records_per_shard"] == 8
    assert "20 records in 3/3 shard(s)" in capsys.readouterr().out
    tok = Tokenizer(workdir=run_dir)
    assert info["tokenizer_step"] == 3 and info["tokenizer_sha256"] == params_digest(tok.variables)
    source = configlib.load_config_file(DATA_CONFIG).data.eval
    src = ShapesSource(ShapesConfig(resolution=16), num_records=source.num_records, seed=source.seed)
    images = np.stack([tok.preprocess(src[i]["image"]) for i in range(20)])
    ids = np.stack([r["ids"] for r in records])
    assert ids.dtype == np.int32 and ids.shape == (20, 4, 4) and ids.max() < 32
    np.testing.assert_array_equal(ids, tok.encode(images))          # the shards hold the images' own ids, in order
    assert [r["caption"] for r in records] == [src[i]["caption"] for i in range(20)]   # passthrough fields
    np.testing.assert_allclose(tok.decode(ids), tok.decode(tok.encode(images)), atol=1e-6)  # ids decode back
    assert tok.decode(ids).shape == (20, 16, 16, 3)


def tar_corpus(tmp_path) -> tuple[list[dict], list[str]]:
    """23 samples in 3 tar shards (8 + 8 + 7), one corrupt JPEG, one sample without an image."""
    samples = shape_samples(23, resolution=24, corrupt=(5,), no_image=(17,))
    cfg = write_corpus("webdataset", str(tmp_path / "wds"), samples, shards=3)
    return samples, ["--data", "name=webdataset", "--data", f"pattern={cfg['pattern']}"]


def tokenize(run_dir, data, out, *extra) -> int:
    return main(["--workdir", run_dir, *data, "--records_per_shard", "5", "--batch", "4", "--workers", "2",
                 "--out", str(out), *extra])


def shard_bytes(out) -> dict[str, bytes]:
    return {os.path.basename(f): open(f, "rb").read() for f in sorted(glob.glob(str(out / "ids-*.array_record")))}


def test_a_job_stopped_half_way_and_restarted_writes_the_same_bytes(run_dir, tmp_path, capsys):
    samples, data = tar_corpus(tmp_path)
    assert tokenize(run_dir, data, tmp_path / "whole", "--log_every_s", "0") == 0
    progress = capsys.readouterr().err   # not a terminal: a plain line per batch here (every 30 s by default)
    assert "tokenized 4/23 records" in progress and "tokenized 23/23 records" in progress
    whole = shard_bytes(tmp_path / "whole")
    assert len(whole) == 5   # 23 inputs, 5 per shard
    records = read_shards(tmp_path / "whole")
    assert [r["key"] for r in records] == [s["key"] for i, s in enumerate(samples) if i not in (5, 17)]
    assert [r["caption"] for r in records][:5] == [s["caption"] for s in samples[:5]]
    summary = json.loads((tmp_path / "whole" / "summary-h0000.json").read_text())
    assert summary["skipped"] == {"ImageDecodeError": 1, "undecodable": 1} and summary["records"] == 21

    out = tmp_path / "resumed"
    assert tokenize(run_dir, data, out, "--stop_after", "13") == 0    # killed inside shard 2 (inputs 10..14)
    assert "STOPPED early" in capsys.readouterr().out
    assert sorted(shard_bytes(out)) == ["ids-h0000-000000.array_record", "ids-h0000-000001.array_record"]
    assert os.path.exists(out / "ids-h0000-000002.array_record.tmp")
    assert tokenize(run_dir, data, out) == 0
    assert shard_bytes(out) == whole
    assert json.loads((out / "summary-h0000.json").read_text())["skipped"] == summary["skipped"]
    assert "this run 13 inputs at" in capsys.readouterr().out   # redid shard 2, then 3 and 4: 5 + 5 + 3

    with pytest.raises(DataError, match="records_per_shard differ"):
        main(["--workdir", run_dir, *data, "--records_per_shard", "6", "--out", str(out), "--debug"])


def test_hosts_write_their_own_shards_of_their_own_tar_files(run_dir, tmp_path):
    samples, data = tar_corpus(tmp_path)
    out = tmp_path / "ids"
    for host in (0, 1):
        assert tokenize(run_dir, data, out, "--host_index", str(host), "--host_count", "2") == 0
    host_files = lambda h: sorted(glob.glob(str(out / f"ids-h000{h}-*.array_record")))
    assert len(host_files(0)) == 3 and len(host_files(1)) == 2   # tars 0 + 2 (15 inputs) | tar 1 (8 inputs)
    kept = [i for i in range(23) if i not in (5, 17)]
    assert [r["key"] for r in read_shards(out)] == [samples[i]["key"] for i in kept if i // 8 != 1] + [
        samples[i]["key"] for i in kept if i // 8 == 1]


def test_llava_json_conversations_are_kept_and_text_only_records_counted(run_dir, tmp_path):
    samples = shape_samples(2, resolution=24)
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.jpg").write_bytes(samples[0]["image"])
    conv = [{"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": samples[0]["caption"]}]
    data = [{"id": "1", "image": "a.jpg", "conversations": conv},
            {"id": "2", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]},
            {"id": "3", "image": "gone.jpg", "conversations": conv}]
    (tmp_path / "llava.json").write_text(json.dumps(data))
    out = tmp_path / "ids"
    assert tokenize(run_dir, ["--data", "name=llava_json", "--data", f"json={tmp_path / 'llava.json'}",
                              "--data", f"images={tmp_path / 'img'}"], out) == 0
    (record,) = read_shards(out)
    assert record["id"] == "1" and json.loads(record["conversations"]) == conv and "image_paths" not in record
    summary = json.loads((out / "summary-h0000.json").read_text())
    assert summary["skipped"] == {"NoImageError": 1, "ImageDecodeError": 1}


def test_the_batch_is_sharded_over_local_devices_with_the_same_ids(run_dir, tmp_path):
    _, data = tar_corpus(tmp_path)
    assert tokenize(run_dir, data, tmp_path / "one") == 0
    done = run([sys.executable, "-m", "mmjax.tokenize_images", "--workdir", run_dir, *data, "--records_per_shard",
                "5", "--batch", "3", "--workers", "2", "--out", str(tmp_path / "two")], devices=2)
    assert done.returncode == 0, done.stderr[-2000:]
    one, two = read_shards(tmp_path / "one"), read_shards(tmp_path / "two")   # batch 3 -> 4: 2 per device
    assert len(one) == len(two) == 21
    np.testing.assert_array_equal(np.stack([r["ids"] for r in one]), np.stack([r["ids"] for r in two]))


def test_a_folder_of_only_unreadable_images_is_an_error(run_dir, tmp_path, capsys):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "broken.png").write_bytes(b"not a png")
    assert main(["--workdir", run_dir, "--images", str(tmp_path / "images"), "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"error: no readable image in {tmp_path / 'images'}: all 1 were skipped (broken.png)")


def test_refuses_ambiguous_or_missing_inputs(run_dir, tmp_path):
    with pytest.raises(SystemExit):
        main(["--workdir", run_dir, "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        main(["--workdir", str(tmp_path), "--images", str(tmp_path), "--out", str(tmp_path / "o")])


@pytest.mark.slow   # trains the tokenizer one more step (a compile): ~10 s idle; tests/test_pretokenize.py covers
def test_the_same_run_trained_further_is_refused_and_restart_starts_over(run_dir, tmp_path, capsys):
    workdir = str(tmp_path / "vq")
    shutil.copytree(run_dir, workdir)
    _, data = tar_corpus(tmp_path)
    out = tmp_path / "ids"
    assert tokenize(workdir, data, out, "--stop_after", "6") == 0
    first = json.loads((out / "tokenizer.json").read_text())
    assert first["tokenizer_step"] == 3 and len(first["tokenizer_sha256"]) == 64
    config = ml_collections.ConfigDict(json.loads((tmp_path / "vq" / "config.json").read_text()))
    Trainer(configlib.apply_overrides(config, ["total_steps=4"]), workdir).run()   # same path, one step further
    capsys.readouterr()
    assert tokenize(workdir, data, out) == 2
    err = capsys.readouterr().err.splitlines()[-1]
    assert err.startswith(f"error: {out} holds shards")
    assert "holds shards of another tokenization job (tokenizer_sha256, tokenizer_step differ" in err
    assert "--restart" in err and len(shard_bytes(out)) == 1   # nothing was added to the old shard
    assert tokenize(workdir, data, out, "--restart") == 0
    info = json.loads((out / "tokenizer.json").read_text())
    assert info["tokenizer_step"] == 4 and info["tokenizer_sha256"] != first["tokenizer_sha256"]
    assert len(shard_bytes(out)) == 5 and not glob.glob(str(out / "*.tmp"))
    jobs = {json.loads(f.read_text())["job"] for f in out.glob("ids-*.json")}
    assert len(jobs) == 1


def test_a_failed_first_attempt_leaves_nothing_that_refuses_the_corrected_rerun(run_dir, tmp_path, capsys):
    _, data = tar_corpus(tmp_path)
    out = tmp_path / "ids"
    wrong = ["--data", "name=webdataset", "--data", f"pattern={tmp_path / 'wds' / '*.tra'}"]
    assert tokenize(run_dir, wrong, out) == 2
    assert "error: " in capsys.readouterr().err and not os.path.exists(out / "tokenizer.json")
    assert tokenize(run_dir, data, out) == 0
    assert len(shard_bytes(out)) == 5 and json.loads((out / "tokenizer.json").read_text())["data"]["pattern"] \
        == data[-1].split("=", 1)[1]


def test_sigterm_stops_at_a_batch_with_75_and_the_rerun_writes_the_same_bytes(run_dir, tmp_path, capsys,
                                                                             monkeypatch):
    _, data = tar_corpus(tmp_path)
    assert tokenize(run_dir, data, tmp_path / "whole") == 0
    sharded_encoder, calls = Tokenizer.sharded_encoder, []

    def terminated_on_the_third_batch(self, batch):
        encode, batch = sharded_encoder(self, batch)

        def encode_and_signal(images):
            calls.append(len(images))
            if len(calls) == 3:
                signal.raise_signal(signal.SIGTERM)   # a real SIGTERM to this process, as a preemption sends
            return encode(images)

        return encode_and_signal, batch

    monkeypatch.setattr(Tokenizer, "sharded_encoder", terminated_on_the_third_batch)
    out = tmp_path / "term"
    capsys.readouterr()
    heard = []
    guard = lambda *_: heard.append(1)   # hears SIGTERM when the job does not (then it must not end pytest)
    previous = signal.signal(signal.SIGTERM, guard)
    try:
        assert tokenize(run_dir, data, out) == 75
        assert signal.getsignal(signal.SIGTERM) is guard   # the job's handler lived only while it ran
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert not heard and "STOPPED by SIGTERM (run the same command again to continue)" in capsys.readouterr().out
    assert len(calls) == 3 and sorted(shard_bytes(out)) == ["ids-h0000-000000.array_record"]
    monkeypatch.setattr(Tokenizer, "sharded_encoder", sharded_encoder)
    assert tokenize(run_dir, data, out) == 0
    assert shard_bytes(out) == shard_bytes(tmp_path / "whole")


def test_writing_nothing_is_an_error_with_the_counts(run_dir, tmp_path, capsys):
    samples = shape_samples(4, resolution=24, corrupt=(0, 1), no_image=(2,))
    del samples[3]["caption"]
    cfg = write_corpus("webdataset", str(tmp_path / "bad"), samples, shards=1)
    out = tmp_path / "ids"
    assert tokenize(run_dir, ["--data", "name=webdataset", "--data", f"pattern={cfg['pattern']}"], out) == 2
    captured = capsys.readouterr()
    assert "skipped: ImageDecodeError x2, NoTextError x1, undecodable x1" in captured.out
    assert captured.err.splitlines()[-1].startswith(f"error: nothing written to {out}: all 4 records were skipped")
    assert sorted(os.listdir(out)) == ["summary-h0000.json"]   # no empty shards, no tokenizer.json
    summary = json.loads((out / "summary-h0000.json").read_text())
    assert summary["skipped"] == {"ImageDecodeError": 2, "NoTextError": 1, "undecodable": 1}

    (tmp_path / "empty").mkdir()
    cw.write_webdataset(str(tmp_path / "empty" / "00000.tar"), [])
    status = tokenize(run_dir, ["--data", "name=webdataset", "--data", f"pattern={tmp_path / 'empty' / '*.tar'}"],
                      tmp_path / "ids_empty")
    assert status == 2 and capsys.readouterr().err.splitlines()[-1].startswith("error: ")


def test_captionless_records_are_skipped_and_counted_unless_no_text_field_is_asked(run_dir, tmp_path, capsys):
    samples = shape_samples(6, resolution=24)
    del samples[1]["caption"], samples[4]["caption"]
    cfg = write_corpus("webdataset", str(tmp_path / "wds"), samples, shards=2)
    data = ["--data", "name=webdataset", "--data", f"pattern={cfg['pattern']}"]
    assert tokenize(run_dir, data, tmp_path / "ids") == 0
    assert "skipped: NoTextError x2" in capsys.readouterr().out
    assert [r["key"] for r in read_shards(tmp_path / "ids")] == [samples[i]["key"] for i in (0, 2, 3, 5)]
    assert json.loads((tmp_path / "ids" / "summary-h0000.json").read_text())["skipped"] == {"NoTextError": 2}
    assert tokenize(run_dir, data, tmp_path / "all", "--text_fields", "") == 0
    assert len(read_shards(tmp_path / "all")) == 6
