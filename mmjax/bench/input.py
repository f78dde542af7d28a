"""Input throughput: records/s of a config's full host-side preprocessing, set against what an accelerator eats.

Each workload writes a corpus on the fly (real JPEGs: random crops of the photos scikit-image ships, resized to a
realistic size and JPEG-encoded at quality 90), builds the config's task as training would (its source and
`preprocess`: decoding, resizing, AnyRes tiling, text tokenization, Show-o bundling) and times the trainer's grain
pipeline (`mmjax.data.pipeline.train_dataset`: shuffle, preprocess, batch) with 0 and N worker processes. Raw
Show-o also reports what a shuffled read from parquet image shards costs (img2dataset's 100-row groups).

Reported: records/s per worker count (wall clock, on whatever cores the machine has), the CPU seconds one record
costs (process CPU time of the 0-worker run, all its threads), the records/s one accelerator consumes (`DEMAND`,
from the GPU step times) and the host cores one accelerator needs: demand x CPU seconds per record; the same
for a whole host (`HOSTS`: 8 H200s, or 4 v5e chips scaled from the H200 step by peak FLOP/s). The CPU
time is what the work costs wherever it runs, so it stays meaningful on a busy machine where wall-clock rates
do not. Text is tokenized byte-level (no tokenizer files needed; a BPE tokenizer costs more per character).
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time
from collections.abc import Callable
from typing import Any

import ml_collections
import numpy as np

from mmjax import configlib
from mmjax.data import corpus_writers as cw
from mmjax.data import pipeline

WORDS = ("the", "a", "photo", "of", "small", "large", "red", "green", "blue", "dog", "cat", "person", "street",
         "city", "tree", "house", "car", "water", "sky", "sits", "stands", "near", "next", "to", "on", "in", "front",
         "behind", "with", "two", "three", "old", "new", "bright", "dark", "view", "table", "food")
SHOWO_BYTE_TEXT = ("text.kind=byte", "text.path=", "text.bos=", "text.eos=", "vocab.text_vocab_size=-1",
                   "vocab.bos_id=-1", "vocab.eos_id=-1")


@dataclasses.dataclass(frozen=True)
class Demand:
    """What one accelerator consumes: `records` pipeline records per step of `step_s` seconds."""

    records: int
    step_s: float
    source: str

    @property
    def records_per_s(self) -> float:
        return self.records / self.step_s


# llava_ov_0p5b: the lead's H200 run of scripts/benchmark.py (batch 4, one 768 px AnyRes image per sample, 243 ms).
# showo_256 stage 2: no H200 step time recorded yet; estimated from its FLOPs (6 x 1.42B params x 24 rows x 387
# tokens = 79 TFLOP per bundle + attention) at 40% MFU of 989 TFLOP/s (the Phi-1.5 LM step measured 44%): 0.2 s.
DEMAND = {
    "llava_ov": Demand(4, 0.243, "llava_ov_0p5b, one H200, batch 4 x 243 ms: the PyTorch peer's step "
                                 "(docs/benchmarks.md); a faster mmjax step needs proportionally more"),
    "showo": Demand(1, 0.20, "showo_256, one bundle per device per step: 229.7 ms measured on one H200 for the "
                             "29-row stage-1 bundle (docs/benchmarks.md); 0.20 s rounds it down (stage 2's 24 "
                             "rows are lighter), i.e. 5 bundles/s"),
}


@dataclasses.dataclass(frozen=True)
class Host:
    """A training host: `accelerators` of `speed` times one H200's step rate (the DEMAND figures are H200's)."""

    accelerators: int
    speed: float
    source: str


# A v5e chip has no step time in docs/benchmarks.md yet: its rate is scaled from the H200 step by peak bf16 FLOP/s
# (197 vs 989 TFLOP/s), i.e. the same MFU assumed. A v5e host (ct5lp-hightpu-4t, the hosts of v5e-16 and larger
# slices) holds 4 chips; an H200 host 8 GPUs.
HOSTS = {
    "h200_x8": Host(8, 1.0, "8 H200 GPUs, each at the measured H200 step time"),
    "v5e_x4": Host(4, 197 / 989, "4 v5e chips, each at 197/989 of the H200 step rate (peak bf16 ratio, same MFU; "
                                 "no v5e step time measured)"),
}


def photos(count: int, size: int, seed: int = 0) -> list[bytes]:
    """`count` JPEGs of `size` x `size` px: random crops (at least half the photo's short side) of the
    scikit-image photos, resized with bicubic filtering, quality 90."""
    from PIL import Image

    from mmjax.data.photos import EVAL_PHOTOS, TRAIN_PHOTOS, load_photo

    rng = np.random.default_rng(seed)
    names = TRAIN_PHOTOS + EVAL_PHOTOS
    out = []
    for i in range(count):
        photo = load_photo(names[i % len(names)])
        h, w = photo.shape[:2]
        side = int(rng.integers(min(h, w) // 2, min(h, w) + 1))
        y, x = int(rng.integers(h - side + 1)), int(rng.integers(w - side + 1))
        crop = Image.fromarray(photo[y:y + side, x:x + side]).resize((size, size), Image.BICUBIC)
        out.append(cw.encode_image(np.asarray(crop), "JPEG", quality=90))
    return out


def sentence(rng: np.random.Generator, words: int) -> str:
    return " ".join(WORDS[int(i)] for i in rng.integers(len(WORDS), size=words)).capitalize() + "."


def llava_corpus(root: str, records: int, size: int, unique: int) -> dict[str, str]:
    """A LLaVA-665k-like JSON (two question/answer turns about one image) + an image folder."""
    rng = np.random.default_rng(0)
    images = photos(unique, size)
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    for i, data in enumerate(images):
        with open(os.path.join(root, "images", f"{i:05d}.jpg"), "wb") as f:
            f.write(data)
    turns = lambda: [{"from": "human", "value": "<image>\n" + sentence(rng, 12)[:-1] + "?"},
                     {"from": "gpt", "value": " ".join(sentence(rng, 15) for _ in range(4))},
                     {"from": "human", "value": sentence(rng, 10)[:-1] + "?"},
                     {"from": "gpt", "value": " ".join(sentence(rng, 15) for _ in range(3))}]
    data = [{"id": str(i), "image": f"{i % unique:05d}.jpg", "conversations": turns()} for i in range(records)]
    with open(os.path.join(root, "llava.json"), "w") as f:
        json.dump(data, f)
    return {"name": "llava_json", "json": os.path.join(root, "llava.json"), "images": os.path.join(root, "images")}


def showo_corpus(root: str, records: int, jpegs: list[bytes], tokenized: bool, grid: int
                 ) -> tuple[dict[str, Any], dict[str, Any]]:
    """(image-caption source, text source): webdataset tars of JPEGs + captions (or, `tokenized`, ArrayRecord
    shards of {"ids", "caption"} as `mmjax.tokenize_images` writes them) and RefinedWeb-like parquet text
    (documents of ~2.5 kB in `content`)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mmjax.data import records as rec

    rng = np.random.default_rng(0)
    os.makedirs(root, exist_ok=True)
    captions = [sentence(rng, 15) for _ in range(records)]
    if tokenized:
        ids = rng.integers(8192, size=(records, grid, grid)).astype(np.int32)
        rec.write_array_record(os.path.join(root, "ids-h0000-000000.array_record"),
                               ({"ids": ids[i], "caption": captions[i], "key": f"{i:06d}"} for i in range(records)))
        images = {"name": "arrayrecord", "pattern": os.path.join(root, "ids-*.array_record")}
    else:
        half = records // 2
        for k, part in enumerate((range(half), range(half, records))):
            cw.write_webdataset(os.path.join(root, f"{k:05d}.tar"), ({"key": f"{i:06d}", "image": jpegs[i % len(jpegs)],
                                                                     "caption": captions[i]} for i in part))
        images = {"name": "webdataset", "pattern": os.path.join(root, "*.tar")}
    docs = [" ".join(sentence(rng, 20) for _ in range(18)) for _ in range(records)]
    pq.write_table(pa.table({"content": docs}), os.path.join(root, "text.parquet"), row_group_size=256)
    text = {"name": "parquet", "pattern": os.path.join(root, "text.parquet"), "image_column": "",
            "caption_column": "content"}
    return images, text


def measure(source: Any, preprocess: pipeline.Preprocess, batch: int, workers: int, batches: int
            ) -> dict[str, float]:
    """Records/s through the trainer's pipeline after one warm-up batch (which starts any worker processes), and
    the consuming process's CPU seconds per record."""
    counter = pipeline.SkipCounter()
    data = pipeline.train_dataset(source, preprocess, global_batch_size=batch, seed=0, counter=counter,
                                  worker_count=workers)
    it = iter(data)
    next(it)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(batches):
        next(it)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    if hasattr(it, "close"):
        it.close()
    return {"records_per_s": batches * batch / wall, "cpu_s_per_record": cpu / (batches * batch),
            "skipped": sum(counter.snapshot().values())}


def parquet_read_ms(jpegs: list[bytes], root: str, row_group_size: int = 100, rows: int = 2000, reads: int = 300
                    ) -> float:
    """CPU ms of one shuffled read from parquet image shards with `row_group_size`-row groups (img2dataset writes
    100): each read decodes its row group unless the source's LRU still holds it."""
    from mmjax.data.sharded import host_local
    from mmjax.data.sources import make_source

    path = os.path.join(root, f"rg{row_group_size}.parquet")
    cw.write_parquet(path, [{"key": f"{i:06d}", "image": jpegs[i % len(jpegs)], "caption": "a photo"}
                            for i in range(rows)], row_group_size=row_group_size)
    source = host_local(make_source({"name": "parquet", "pattern": path}))
    order = np.random.default_rng(0).permutation(rows)[:reads]
    cpu = time.process_time()
    for i in order:
        source[int(i)]
    return 1e3 * (time.process_time() - cpu) / reads


def report(demand: Demand, rates: dict[int, dict[str, float]], **extra: Any) -> dict[str, Any]:
    """The workload's row: rates per worker count, CPU cost per record, demand and cores per accelerator."""
    cpu = rates[0]["cpu_s_per_record"]
    out = {f"records_per_s_w{w}": round(r["records_per_s"], 2) for w, r in rates.items()}
    out.update(cpu_ms_per_record=round(1e3 * cpu, 1), demand_records_per_s=round(demand.records_per_s, 2),
               cores_per_accelerator=round(demand.records_per_s * cpu, 2), demand_source=demand.source,
               host_cores=os.cpu_count(), load_average=round(os.getloadavg()[0], 2),
               **{f"demand_records_per_s_{name}": round(host.accelerators * host.speed * demand.records_per_s, 2)
                  for name, host in HOSTS.items()},
               **{f"cores_{name}": round(host.accelerators * host.speed * demand.records_per_s * cpu, 2)
                  for name, host in HOSTS.items()},
               skipped=sum(r["skipped"] for r in rates.values()), **extra)
    return out


def _time_workers(source: Any, preprocess: pipeline.Preprocess, batch: int, workers: tuple[int, ...],
                  batches: int) -> dict[int, dict[str, float]]:
    return {w: measure(source, preprocess, batch, w, batches) for w in sorted({0, *workers})}


def llava_onevision(*, records: int = 256, size: int = 768, unique: int = 32, batch: int = 4, batches: int = 10,
                    workers: tuple[int, ...] = (2,), config: str = "configs/llava/onevision.py:size=0.5b,stage=2",
                    overrides: tuple[str, ...] = ()) -> dict[str, Any]:
    """LLaVA-OneVision stage 2 preprocessing: decode a `size` px JPEG, AnyRes tiling (384 px tiles, up to 3x3),
    conversation rendering + tokenization + label masking, padding to `text.max_len`, batching."""
    from mmjax.bench.training import ONEVISION_OVERRIDES
    from mmjax.train.tasks.llava import LlavaTask

    with tempfile.TemporaryDirectory() as tmp:
        data = llava_corpus(tmp, records, size, unique)
        config = configlib.apply_overrides(configlib.load_config_file(config),
                                           [*ONEVISION_OVERRIDES, "text.max_len=4000", *overrides])
        config.data.train.update(json=data["json"], images=data["images"])
        task = LlavaTask(config)
        rates = _time_workers(task.source("train"), task.preprocess, batch, workers, batches)
    return {"result": report(DEMAND["llava_ov"], rates, image_px=size, batch=batch)}


# Caption-prompt questions of the input benchmark (the paper configs read the reference's list from a file).
BENCH_CAPTION_QUESTIONS = ("What does the image show?", "Describe this picture.", "What is in this photo?")


def showo(*, tokenized: bool, records: int = 256, size: int = 512, unique: int = 32, batches: int = 8,
          workers: tuple[int, ...] = (2,), config: str = "configs/showo/pretrain.py:stage=2,res=256,devices=1",
          overrides: tuple[str, ...] = ()) -> dict[str, Any]:
    """Show-o stage 2 bundles (10 T2I + 4 LM + 10 MMU examples each): raw (decode a `size` px JPEG, bicubic
    resize + centre crop to 256 px, for 20 images) or tokenized (codes from ArrayRecord records); captions and
    RefinedWeb-like documents tokenized and padded."""
    from mmjax.train.tasks.showo import ShowoTask

    with tempfile.TemporaryDirectory() as tmp:
        config = configlib.apply_overrides(configlib.load_config_file(config),
                                           [*SHOWO_BYTE_TEXT, f"tokenizer.pretokenize={tokenized}", *overrides])
        grid = int(config.tokenizer.image_size) // 16
        jpegs = [] if tokenized else photos(unique, size)
        images, text = showo_corpus(tmp, records, jpegs, tokenized, grid)
        parts = config.data.train
        for part in ("t2i", "mmu"):
            parts[part].source = ml_collections.ConfigDict(images)
        parts.lm.source = ml_collections.ConfigDict(text)
        parts.lm.text_field = "caption"
        if parts.mmu.get("questions"):   # the paper configs name the reference's question file: a stand-in list
            parts.mmu.questions = os.path.join(tmp, "questions.json")
            with open(parts.mmu.questions, "w", encoding="utf-8") as f:
                json.dump(BENCH_CAPTION_QUESTIONS, f)
        task = ShowoTask(config)
        rates = _time_workers(task.source("train"), task.preprocess, 1, workers, batches)
        extra = {} if tokenized else {"parquet_rg100_read_ms": round(parquet_read_ms(jpegs, tmp), 2)}
    images_per_bundle = task.mix["t2i"] + task.mix["mmu"]
    return {"result": report(DEMAND["showo"], rates, images_per_bundle=images_per_bundle,
                             image_px=0 if tokenized else size, **extra)}


WorkloadFn = Callable[..., dict[str, Any]]
# name -> (function, full-size keyword arguments, --tiny keyword arguments): scripts/benchmark.py's registry entry
WORKLOADS: dict[str, tuple[WorkloadFn, dict[str, Any], dict[str, Any]]] = {
    "input_llava_ov": (llava_onevision, {}, dict(records=16, size=400, unique=4, batch=2, batches=2,
                                                 workers=(1,))),
    "input_showo_raw": (showo, dict(tokenized=False), dict(tokenized=False, records=16, size=64, unique=4,
                                                           batches=2, workers=(1,))),
    "input_showo_tokenized": (showo, dict(tokenized=True), dict(tokenized=True, records=16, batches=2,
                                                                workers=(1,))),
}
