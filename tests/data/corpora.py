"""Tiny image-caption corpora for the tests: real JPEG/PNG bytes of shapes scenes plus a few bad samples, written
as every corpus source mmjax reads (`CORPUS_KINDS`)."""

from __future__ import annotations

import json
import os

from mmjax.data import corpus_writers as cw
from mmjax.data import records
from mmjax.data.shapes import ShapesConfig, ShapesSource

CORRUPT_JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 40   # a JPEG header and nothing decodable after it


CORPUS_KINDS = ("webdataset", "parquet", "imagefolder", "jsonl", "arrayrecord", "llava_json")


def shape_samples(n: int, seed: int = 0, resolution: int = 32, corrupt: tuple[int, ...] = (),
                  no_image: tuple[int, ...] = (), labels: bool = False) -> list[dict]:
    """n samples {key, image, caption}: JPEG (every third one PNG) of shapes scenes; `corrupt` indices carry
    undecodable bytes, `no_image` indices no image at all; `labels`: also "label", the scene's shape (0..3)."""
    scenes = ShapesSource(ShapesConfig(resolution=resolution), num_records=n, seed=seed)
    samples = []
    for i in range(n):
        record = scenes[i]
        sample = {"key": f"{seed:02d}{i:05d}", "caption": record["caption"]}
        if labels:
            sample["label"] = int(record["shape"])
        if i in corrupt:
            sample["image"] = CORRUPT_JPEG
        elif i not in no_image:
            sample["image"] = cw.encode_image(record["image"], "PNG" if i % 3 == 2 else "JPEG", quality=95)
        samples.append(sample)
    return samples


def _image_files(root: str, samples: list[dict]) -> list[str]:
    """Writes each sample's image as `images/<key>.<ext>` under root; returns the paths relative to root."""
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    names = []
    for s in samples:
        names.append(os.path.join("images", f"{s['key']}.{cw.image_ext(s.get('image', b''))}"))
        if "image" in s:
            with open(os.path.join(root, names[-1]), "wb") as f:
                f.write(s["image"])
    return names


def write_corpus(kind: str, root: str, samples: list[dict], shards: int = 2) -> dict:
    """Writes `samples` as a `kind` corpus (one of `CORPUS_KINDS`; imagefolder in class folders when the samples
    have labels, llava_json as one-turn caption conversations) under root; returns the source config section
    that reads it."""
    os.makedirs(root, exist_ok=True)
    if kind == "imagefolder":
        cw.write_imagefolder(root, samples, captions="classes" if "label" in samples[0] else "jsonl")
        return {"name": "imagefolder", "root": root}
    if kind == "jsonl":
        lines = [{"image": name, **{k: s[k] for k in ("key", "caption", "label") if k in s}}
                 for s, name in zip(samples, _image_files(root, samples))]
        with open(os.path.join(root, "data.jsonl"), "w") as f:
            f.write("".join(json.dumps(line) + "\n" for line in lines))
        return {"name": "jsonl", "pattern": os.path.join(root, "*.jsonl")}
    if kind == "arrayrecord":
        records.write_array_record(os.path.join(root, "data.array_record"), samples)
        return {"name": "arrayrecord", "pattern": os.path.join(root, "*.array_record")}
    if kind == "llava_json":
        data = [{"id": s["key"], "image": name, "conversations": [
                    {"from": "human", "value": "<image>\nDescribe the image."},
                    {"from": "gpt", "value": s["caption"]}]} for s, name in zip(samples, _image_files(root, samples))]
        with open(os.path.join(root, "data.json"), "w") as f:
            json.dump(data, f)
        return {"name": "llava_json", "json": os.path.join(root, "data.json"), "images": root}
    per = -(-len(samples) // shards)
    for k in range(shards):
        part = samples[k * per:(k + 1) * per]
        if kind == "webdataset":
            cw.write_webdataset(os.path.join(root, f"{k:05d}.tar"), part)
        else:
            cw.write_parquet(os.path.join(root, f"{k:05d}.parquet"), part, row_group_size=8)
    ext = "tar" if kind == "webdataset" else "parquet"
    return {"name": kind, "pattern": os.path.join(root, f"*.{ext}")}
