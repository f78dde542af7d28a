"""The tiny Show-o trained from real corpora: webdataset tars, parquet files and an image folder of JPEG/PNG
shapes scenes with a few bad samples (`data=raw`: tokenized on device every step), and from the same tar
corpus pre-tokenized by the `mmjax.tokenize_images` job (`data=tokenized`: codes read from the records).

Checked: the trainer's metrics.jsonl counts the bad samples per reason, the data iterator restored from its
state yields the same bundles as an uninterrupted one, and pre-tokenized codes are the codes the raw path
computes from the same images.
"""

from __future__ import annotations

import json

import ml_collections
import numpy as np
import pytest

from mmjax import pretokenize
from mmjax.data import pipeline
from mmjax.train.tasks import showo_batches as sb
from mmjax.train.tasks.showo import ShowoTask
from mmjax.train.tasks.showo_examples import load_image
from mmjax.train.trainer import Trainer
from tests.data.corpora import shape_samples, write_corpus
from tests.train import test_showo_task as showo_tests

BAD = dict(corrupt=(3, 11, 19), no_image=(7,))   # 3 undecodable JPEGs, 1 sample whose image is missing
SMALL = ("showo.mix.t2i=2", "showo.mix.lm=1", "showo.mix.mmu=2", "eval.num_t2i=0", "eval.num_mmu=0",
         "eval.loss_batches=0", "optim.warmup_steps=0")


@pytest.fixture(scope="module")
def tokenizer_run(tmp_path_factory):
    return showo_tests.write_tokenizer_run(str(tmp_path_factory.mktemp("vq") / "run"))


def corpus_config(tokenizer: str, source: dict, steps: int, *overrides: str) -> ml_collections.ConfigDict:
    """The tiny Show-o training its three parts on one image-caption corpus (MMU in caption format)."""
    config = showo_tests.tiny_config(tokenizer, steps, *SMALL, f"log_every={steps}", f"checkpoint_every={steps}",
                                     *overrides)
    part = lambda **kw: ml_collections.ConfigDict(dict(source=ml_collections.ConfigDict(source), **kw))
    config.data.train = ml_collections.ConfigDict(dict(t2i=part(text_field="caption"), lm=part(text_field="caption"),
                                                       mmu=part(format="caption", text_field="caption")))
    return config


def same_bundles_after_restore(task: ShowoTask) -> None:
    """The trainer's pipeline over the task's bundles, restored from its state after 3 batches, yields the next 3
    batches of an uninterrupted iterator."""
    data = lambda: pipeline.train_dataset(task.source("train"), task.preprocess, global_batch_size=1, seed=0,
                                          counter=pipeline.SkipCounter())
    it = iter(data())
    for _ in range(3):
        next(it)
    state = it.get_state()
    expected = [next(it) for _ in range(3)]
    resumed = iter(data())
    resumed.set_state(state)
    for want in expected:
        got = next(resumed)
        assert sorted(got) == sorted(want)
        for k in want:
            np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def train_and_check(config: ml_collections.ConfigDict, workdir: str, steps: int) -> tuple[Trainer, dict]:
    """Trains, then checks the last train record: finite loss, every skipped bundle counted under its reason."""
    trainer = Trainer(config, workdir)
    trainer.run()
    with open(f"{workdir}/metrics.jsonl") as f:
        train = [r for r in map(json.loads, f) if r["split"] == "train"][-1]
    assert train["step"] == steps and np.isfinite(train["loss"])
    reasons = {k: v for k, v in train.items() if k.startswith("skipped/")}
    assert train["skipped_records"] == sum(reasons.values())
    return trainer, reasons


def test_raw_tar_parquet_and_folder_corpora_train_count_bad_samples_and_resume_exactly(tokenizer_run, tmp_path):
    """T2I from tar shards, MMU from parquet files, LM from an image folder's captions: one run reads all three."""
    sources = {kind: write_corpus(kind, str(tmp_path / kind), shape_samples(24, seed=s, **BAD))
               for s, kind in enumerate(("webdataset", "parquet", "imagefolder"))}
    config = corpus_config(tokenizer_run, sources["webdataset"], 4, "tokenizer.pretokenize=False")
    config.data.train.mmu.source = ml_collections.ConfigDict(sources["parquet"])
    config.data.train.lm.source = ml_collections.ConfigDict(sources["imagefolder"])
    trainer, reasons = train_and_check(config, str(tmp_path / "run"), 4)
    # records that were a corrupt JPEG (tar, parquet) or a sample without its image were skipped and replaced,
    # each counted as one record; no bundle was lost
    assert reasons["skipped/ImageDecodeError"] >= 1
    assert set(reasons) <= {"skipped/ImageDecodeError", "skipped/undecodable", "skipped/NoImageError"}
    assert "t2i_image" in trainer.task.example_batch(1)   # raw: pixels, tokenized on device in the step
    same_bundles_after_restore(trainer.task)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["webdataset", "parquet", "imagefolder"])
def test_each_raw_corpus_alone_trains_counts_bad_samples_and_resumes_exactly(kind, tokenizer_run, tmp_path):
    source = write_corpus(kind, str(tmp_path / kind), shape_samples(24, **BAD))
    config = corpus_config(tokenizer_run, source, 4, "tokenizer.pretokenize=False")
    trainer, reasons = train_and_check(config, str(tmp_path / "run"), 4)
    assert reasons["skipped/ImageDecodeError"] >= 1
    assert set(reasons) <= {"skipped/ImageDecodeError", "skipped/undecodable", "skipped/NoImageError"}
    same_bundles_after_restore(trainer.task)


def test_pretokenized_tar_corpus_gives_the_raw_paths_codes_and_trains(tokenizer_run, tmp_path):
    samples = shape_samples(24, **BAD)
    raw = write_corpus("webdataset", str(tmp_path / "wds"), samples)
    task = ShowoTask(corpus_config(tokenizer_run, raw, 3, "tokenizer.pretokenize=False"))
    encode = sb.encoder_fn(task.vq_model, task.tokenizer_variables())
    prepare = lambda image: load_image(image, task.image_size, "t2i image")   # the raw path's transform
    writer = pretokenize.ShardWriter(pretokenize.host_records(raw, 0, 1), prepare, encode, str(tmp_path / "ids"),
                                     host_index=0, records_per_shard=10, batch=4, workers=2)
    summary = writer.run()
    assert summary["records"] == 20 and summary["skipped"] == {"ImageDecodeError": 3, "undecodable": 1}

    tokenized = {"name": "arrayrecord", "pattern": str(tmp_path / "ids" / "ids-*.array_record")}
    config = corpus_config(tokenizer_run, tokenized, 3, "tokenizer.pretokenize=True")
    bundles = ShowoTask(config).batches("train")
    assert bundles.cache == {}   # nothing pre-computed at start: the codes come from the records
    good = [s for i, s in enumerate(samples) if i not in (3, 7, 11, 19)]
    bundle = bundles.bundle(0, None)   # eval order: records 0, 1 for T2I
    pixels = np.stack([load_image(s["image"], task.image_size, "t2i image") for s in good[:2]])
    np.testing.assert_array_equal(bundle["t2i_codes"], np.asarray(encode(pixels)).reshape(2, -1))
    assert "t2i_image" not in bundle and bundle["mmu_codes"].shape == (2, 16)
    trainer, reasons = train_and_check(config, str(tmp_path / "run"), 3)
    assert reasons == {}   # the job skipped the bad samples; the shards hold only good ones
    same_bundles_after_restore(trainer.task)


def test_records_with_codes_need_pretokenize_and_the_tasks_grid(tokenizer_run, tmp_path):
    from mmjax.configlib import ConfigError
    from mmjax.data import records

    def source(grid: int) -> dict:
        path = str(tmp_path / f"ids{grid}.array_record")
        records.write_array_record(path, [{"ids": np.zeros((grid, grid), np.int32), "caption": "a red circle"}])
        return {"name": "arrayrecord", "pattern": path}

    with pytest.raises(ConfigError, match=r"set tokenizer\.pretokenize=True"):
        ShowoTask(corpus_config(tokenizer_run, source(4), 3, "tokenizer.pretokenize=False")).batches("train")
    with pytest.raises(ConfigError, match="carry 64 codes per image but the task's rows hold 16"):
        ShowoTask(corpus_config(tokenizer_run, source(8), 3, "tokenizer.pretokenize=True")).batches("train")
