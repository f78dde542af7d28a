"""Every corpus source x every image task trains: a tiny corpus of encoded images (JPEG and PNG) written as each
source, the task's tiny config switched to it with the documented `data=KIND,corpus=PATH` argument, two steps.

Each case also checks what the step trained on: the task's preprocessing of the source's first record equals its
preprocessing of the scene's pixels decoded straight from the written bytes (so the bytes were decoded, not
skipped, and the label / caption arrived). The default suite runs one case per source and one per task; the
rest of the matrix is `slow`.
"""

from __future__ import annotations

import json
import math
import os

import jax
import numpy as np
import pytest
from jax.experimental.compilation_cache import compilation_cache

from mmjax import configlib
from mmjax.data.images import decode_image
from mmjax.train.trainer import Trainer
from tests.data.corpora import CORPUS_KINDS, shape_samples, write_corpus

# task -> (config file, its variant arg, overrides): two steps of batch 4, evaluation on 4 records
TASKS = {
    "vit": ("configs/vit/digits.py", "steps=2,size=8,classes=4",
            ("batch_size=4", "eval_batch_size=4", "optim.warmup_steps=1")),
    "vq": ("configs/vq/tiny.py", "size=16,tokens=4,ch=8,bits=6,steps=2,batch=4",
           ("eval_batch_size=4", "eval.max_examples=4", "eval.grid_images=0", "optim.warmup_steps=1")),
    "llava": ("configs/llava/tiny.py", "stage=1,steps=2",
              ("batch_size=4", "eval_batch_size=4", "eval.num_examples=4", "optim.warmup_steps=1")),
}
# the default suite's cases: every source once, every task at least once
DEFAULT_CASES = {("webdataset", "vq"), ("parquet", "vit"), ("imagefolder", "vit"), ("jsonl", "llava"),
                 ("arrayrecord", "vq"), ("llava_json", "llava")}
MATRIX = [(kind, task) for kind in CORPUS_KINDS for task in TASKS if kind != "llava_json" or task == "llava"]


@pytest.fixture(scope="module", autouse=True)
def shared_compiles(tmp_path_factory):
    """A persistent compilation cache for this module: the cases of one task compile the same programs (the
    corpus changes, not the shapes), so only each task's first case pays for XLA. JAX decides once per process
    whether it uses a cache, so the cache is reset on the way in and out: the rest of the suite runs as before."""
    names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
             "jax_persistent_cache_min_entry_size_bytes")
    before = {name: getattr(jax.config, name) for name in names}
    for name, value in zip(names, (str(tmp_path_factory.mktemp("xla_cache")), 0.0, -1)):
        jax.config.update(name, value)
    compilation_cache.reset_cache()
    yield
    for name, value in before.items():
        jax.config.update(name, value)
    compilation_cache.reset_cache()


def corpus_arg(section: dict) -> str:
    """The `data=...,corpus=...` config argument that reads the corpus `section` describes."""
    main = {"imagefolder": "root", "llava_json": "json"}.get(section["name"], "pattern")
    extra = f",images={section['images']}" if section["name"] == "llava_json" else ""
    return f"data={section['name']},corpus={section[main]}{extra}"


def build(task: str, section: dict):
    path, arg, overrides = TASKS[task]
    config = configlib.load_config_file(f"{path}:{arg},{corpus_arg(section)}")
    return configlib.apply_overrides(config, list(overrides))


@pytest.mark.parametrize("kind, task", [pytest.param(k, t, id=f"{k}-{t}", marks=()
                                                     if (k, t) in DEFAULT_CASES else pytest.mark.slow)
                                        for k, t in MATRIX])
def test_a_good_corpus_of_each_source_trains_each_image_task(kind, task, tmp_path):
    samples = shape_samples(12, resolution=24, labels=task == "vit")
    section = write_corpus(kind, str(tmp_path / kind), samples)
    config = build(task, section)
    trainer = Trainer(config, str(tmp_path / "run"))
    source = trainer.task.source("train")
    assert len(source) == len(samples)
    record = source[0]
    pixels = decode_image(samples[0]["image"])
    got = trainer.task.preprocess(record, None)
    if kind == "llava_json":   # a conversation record names its image file
        reference = trainer.task.processor.training_example(record["conversations"], [pixels])
    else:
        reference = trainer.task.preprocess({**record, "image": pixels}, None)
    for key in got:
        np.testing.assert_array_equal(got[key], reference[key], err_msg=key)
    if task == "vit":
        assert int(got["label"]) == samples[0]["label"]

    final = trainer.run()
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in lines if r.get("split") == "train"][-1]
    assert train["step"] == 2 and math.isfinite(train["loss"])
    assert train["skipped_records"] == 0 and final["skipped_records"] == 0
    assert os.path.isdir(tmp_path / "run" / "checkpoints")


def test_the_lm_config_reads_a_text_corpus_with_one_argument(tmp_path):
    from mmjax.train.tasks.lm import LMTask

    texts = [f"document {i} about {'red' if i % 2 else 'blue'} shapes" for i in range(30)]
    (tmp_path / "text.jsonl").write_text("".join(json.dumps({"content": t}) + "\n" for t in texts))
    config = configlib.apply_overrides(
        configlib.load_config_file(f"configs/lm/tiny.py:data=jsonl,corpus={tmp_path}/*.jsonl"),
        ["data.train.text_field=content", "data.eval.text_field=content"])
    task = LMTask(config)
    group = task.source("train")[0]["texts"]
    assert list(group) == texts[: config.packing.docs_per_group]
    assert task.source("eval")[1]["texts"][0] == texts[config.packing.docs_per_group]
