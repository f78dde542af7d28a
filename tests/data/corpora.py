"""Tiny image-caption corpora for the tests: real JPEG/PNG bytes of shapes scenes plus a few bad samples."""

from __future__ import annotations

import os

from mmjax.data import corpus_writers as cw
from mmjax.data.shapes import ShapesConfig, ShapesSource

CORRUPT_JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 40   # a JPEG header and nothing decodable after it


def shape_samples(n: int, seed: int = 0, resolution: int = 32, corrupt: tuple[int, ...] = (),
                  no_image: tuple[int, ...] = ()) -> list[dict]:
    """n samples {key, image, caption}: JPEG (every third one PNG) of shapes scenes; `corrupt` indices carry
    undecodable bytes, `no_image` indices no image at all."""
    scenes = ShapesSource(ShapesConfig(resolution=resolution), num_records=n, seed=seed)
    samples = []
    for i in range(n):
        record = scenes[i]
        sample = {"key": f"{seed:02d}{i:05d}", "caption": record["caption"]}
        if i in corrupt:
            sample["image"] = CORRUPT_JPEG
        elif i not in no_image:
            sample["image"] = cw.encode_image(record["image"], "PNG" if i % 3 == 2 else "JPEG", quality=95)
        samples.append(sample)
    return samples


def write_corpus(kind: str, root: str, samples: list[dict], shards: int = 2) -> dict:
    """Writes `samples` as a `kind` corpus (webdataset | parquet | imagefolder) under root; returns the source
    config section that reads it."""
    os.makedirs(root, exist_ok=True)
    if kind == "imagefolder":
        cw.write_imagefolder(root, samples)
        return {"name": "imagefolder", "root": root}
    per = -(-len(samples) // shards)
    for k in range(shards):
        part = samples[k * per:(k + 1) * per]
        if kind == "webdataset":
            cw.write_webdataset(os.path.join(root, f"{k:05d}.tar"), part)
        else:
            cw.write_parquet(os.path.join(root, f"{k:05d}.parquet"), part, row_group_size=8)
    ext = "tar" if kind == "webdataset" else "parquet"
    return {"name": kind, "pattern": os.path.join(root, f"*.{ext}")}
