"""Writers of the corpus layouts mmjax reads (webdataset tars, parquet, image folders) from image-caption samples.

For converting small data sets, for the tests (tiny corpora with a few corrupt members) and for the input
benchmarks (corpora of realistic JPEGs made on the fly). A sample is {"key": str, "image": encoded bytes,
"caption": str}; `image` or `caption` may be missing to make a bad sample on purpose.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np


def encode_image(image: np.ndarray, fmt: str = "JPEG", quality: int = 90) -> bytes:
    """uint8 (H, W, 3) -> encoded bytes (JPEG at `quality`, or PNG)."""
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(np.asarray(image, np.uint8)).save(out, format=fmt, **({"quality": quality} if fmt == "JPEG"
                                                                            else {}))
    return out.getvalue()


def image_ext(data: bytes) -> str:
    return "png" if data.startswith(b"\x89PNG") else "jpg"


def write_webdataset(path: str, samples: Iterable[dict[str, Any]]) -> int:
    """One uncompressed tar shard: `<key>.jpg|png` + `<key>.txt` + `<key>.json` (+ `<key>.cls` for a sample with a
    `label`) per sample, in order."""
    n = 0
    with tarfile.open(path, "w") as tar:
        for sample in samples:
            members = []
            if "image" in sample:
                members.append((image_ext(sample["image"]), sample["image"]))
            if "caption" in sample:
                members.append(("txt", sample["caption"].encode()))
                members.append(("json", json.dumps({"key": sample["key"], "caption": sample["caption"]}).encode()))
            if "label" in sample:
                members.append(("cls", str(sample["label"]).encode()))
            for ext, data in members:
                info = tarfile.TarInfo(f"{sample['key']}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            n += 1
    return n


def write_parquet(path: str, samples: Sequence[dict[str, Any]], row_group_size: int = 256) -> int:
    """One parquet file with img2dataset's columns: `key`, `jpg` (bytes), `caption` (null when missing), and
    `label` when the samples have labels."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = {"key": [s["key"] for s in samples],
               "jpg": pa.array([s.get("image") for s in samples], pa.binary()),
               "caption": pa.array([s.get("caption") for s in samples], pa.string())}
    if any("label" in s for s in samples):
        columns["label"] = pa.array([s.get("label") for s in samples], pa.int64())
    table = pa.table(columns)
    pq.write_table(table, path, row_group_size=row_group_size)
    return len(samples)


def write_imagefolder(root: str, samples: Iterable[dict[str, Any]], captions: str = "jsonl") -> int:
    """Images `<key>.jpg|png` under root with captions in `metadata.jsonl` (file_name, caption) or in `.txt`
    sidecars (`captions="sidecar"`); `captions="classes"`: sidecars, each image in the sub-folder of its class
    (`class<label>/`, ImageNet's layout)."""
    os.makedirs(root, exist_ok=True)
    lines, n = [], 0
    for sample in samples:
        name = f"{sample['key']}.{image_ext(sample.get('image', b''))}"
        if captions == "classes":
            os.makedirs(os.path.join(root, f"class{sample['label']}"), exist_ok=True)
            name = os.path.join(f"class{sample['label']}", name)
        if "image" in sample:
            with open(os.path.join(root, name), "wb") as f:
                f.write(sample["image"])
        if captions in ("sidecar", "classes") and "caption" in sample:
            with open(os.path.join(root, os.path.splitext(name)[0] + ".txt"), "w") as f:
                f.write(sample["caption"])
        lines.append(json.dumps({"file_name": name, **({"caption": sample["caption"]} if "caption" in sample
                                                        else {})}))
        n += 1
    if captions == "jsonl":
        with open(os.path.join(root, "metadata.jsonl"), "w") as f:
            f.write("\n".join(lines) + "\n")
    return n
