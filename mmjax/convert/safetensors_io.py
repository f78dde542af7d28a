"""Reading and writing released weights in safetensors, with strict key and shape accounting.

Converters load a checkpoint into a flat {name: numpy array} dict (no torch needed), then take every tensor
they expect through a `KeyConsumer`, which checks each shape and, at the end, refuses the checkpoint if any
expected tensor is missing, any shape is wrong, or any tensor was left unused; the error lists all of them at
once, so a wrong variant or prefix is diagnosed in one go instead of one key per run.

`safetensors.numpy` cannot represent bfloat16 (numpy has no such dtype), and many released checkpoints are
bf16; those tensors are read and written here through the documented file layout (8-byte little-endian header
size, JSON header, raw little-endian bytes) with `ml_dtypes.bfloat16`.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import safetensors
import safetensors.numpy

_RAW_DTYPES = {"BF16": ml_dtypes.bfloat16, "F8_E4M3": ml_dtypes.float8_e4m3fn,
               "F8_E5M2": ml_dtypes.float8_e5m2}
_RAW_NAMES = {np.dtype(v): k for k, v in _RAW_DTYPES.items()}
_FILE_NAMES = {np.dtype(t): n for t, n in [(np.float64, "F64"), (np.float32, "F32"), (np.float16, "F16"),
                                           (np.int64, "I64"), (np.int32, "I32"), (np.int16, "I16"),
                                           (np.int8, "I8"), (np.uint8, "U8"), (np.bool_, "BOOL")]}
_FILE_NAMES.update(_RAW_NAMES)
INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"


def checkpoint_files(path: str | os.PathLike) -> list[Path]:
    """The safetensors files of a checkpoint: a file, a sharded index json, or a directory holding either."""
    path = Path(path)
    if path.is_dir():
        if (path / INDEX_NAME).exists():
            path = path / INDEX_NAME
        elif (path / SINGLE_NAME).exists():
            path = path / SINGLE_NAME
        else:
            found = sorted(path.glob("*.safetensors"))
            if not found:
                raise FileNotFoundError(f"{path}: no {SINGLE_NAME}, {INDEX_NAME} or *.safetensors file")
            return found
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    if path.name.endswith(".json"):
        weight_map = json.loads(path.read_text())["weight_map"]
        return [path.parent / name for name in sorted(set(weight_map.values()))]
    return [path]


def _read_raw(file: Path, names: Iterable[str]) -> dict[str, np.ndarray]:
    """Reads tensors of dtypes numpy lacks (bf16, fp8) straight from the file layout, memory-mapped."""
    with open(file, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(header_len))
    data = np.memmap(file, dtype=np.uint8, mode="r", offset=8 + header_len)
    out = {}
    for name in names:
        info = header[name]
        if info["dtype"] not in _RAW_DTYPES:
            raise ValueError(f"{file}: tensor {name!r} has unsupported dtype {info['dtype']}")
        start, end = info["data_offsets"]
        out[name] = np.asarray(data[start:end]).view(_RAW_DTYPES[info["dtype"]]).reshape(info["shape"])
    return out


def load_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Loads a checkpoint (file, directory, or sharded index) into one flat dict of numpy arrays."""
    tensors: dict[str, np.ndarray] = {}
    for file in checkpoint_files(path):
        raw = []
        with safetensors.safe_open(str(file), framework="np") as f:
            for name in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                if name in tensors:
                    raise ValueError(f"{file}: tensor {name!r} appears in more than one shard")
                try:
                    tensors[name] = f.get_tensor(name)
                except TypeError:
                    raw.append(name)
        tensors.update(_read_raw(file, raw))
    return tensors


def strip_prefix(tensors: dict[str, Any], prefix: str) -> dict[str, Any]:
    """Removes `prefix` (e.g. Show-o's 'showo.') from the names that carry it; other names stay, so a
    KeyConsumer reports them as unused rather than silently dropping them."""
    if not prefix:
        return dict(tensors)
    return {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in tensors.items()}


class KeyConsumer:
    """Hands out checkpoint tensors by name with shape checks; `finish` reports every problem at once."""

    def __init__(self, tensors: dict[str, np.ndarray], source: str = "checkpoint",
                 ignore: Callable[[str], bool] | None = None):
        self.tensors, self.source = tensors, source
        self.used: set[str] = {k for k in tensors if ignore is not None and ignore(k)}
        self.missing: list[str] = []
        self.bad_shapes: list[str] = []

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def take(self, name: str, shape: tuple[int, ...] | None = None) -> np.ndarray | None:
        """The tensor `name` (checked against `shape`), or None after recording it as missing / mis-shaped."""
        if name not in self.tensors:
            self.missing.append(name)
            return None
        self.used.add(name)
        value = self.tensors[name]
        if shape is not None and tuple(value.shape) != tuple(shape):
            self.bad_shapes.append(f"{name}: expected {tuple(shape)}, found {tuple(value.shape)}")
            return None
        return value

    def finish(self) -> None:
        unused = sorted(set(self.tensors) - self.used)
        problems = [(f"{len(self.missing)} expected tensors missing", self.missing),
                    (f"{len(self.bad_shapes)} tensors with the wrong shape", self.bad_shapes),
                    (f"{len(unused)} tensors not consumed", unused)]
        problems = [(title, names) for title, names in problems if names]
        if problems:
            lines = [f"{self.source} does not match the model:"]
            for title, names in problems:
                shown = names[:25] + ([f"... and {len(names) - 25} more"] if len(names) > 25 else [])
                lines += [f"  {title}:"] + [f"    {n}" for n in shown]
            raise ValueError("\n".join(lines))


def _save_one(tensors: dict[str, np.ndarray], file: Path, metadata: dict[str, str]) -> None:
    if not any(np.dtype(v.dtype) in _RAW_NAMES for v in tensors.values()):
        safetensors.numpy.save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(file),
                                    metadata=metadata)
        return
    header: dict[str, Any] = {"__metadata__": metadata}
    offset, names = 0, sorted(tensors)
    for name in names:
        v = tensors[name]
        if np.dtype(v.dtype) not in _FILE_NAMES:
            raise ValueError(f"cannot store tensor {name!r} of dtype {v.dtype} in safetensors")
        dtype = _FILE_NAMES[np.dtype(v.dtype)]
        header[name] = {"dtype": dtype, "shape": list(v.shape), "data_offsets": [offset, offset + v.nbytes]}
        offset += v.nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # keep the data 8-byte aligned, as the format recommends
    with open(file, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
        for name in names:
            f.write(np.ascontiguousarray(tensors[name]).astype(tensors[name].dtype.newbyteorder("<")).tobytes())


def save_safetensors(tensors: dict[str, np.ndarray], path: str | os.PathLike, max_shard_bytes: int | None = None,
                     metadata: dict[str, str] | None = None) -> list[Path]:
    """Writes `tensors` into directory `path` as model.safetensors, or as shards plus an index json (the HF
    layout) when they exceed `max_shard_bytes`. Returns the files written."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    metadata = {"format": "pt", **(metadata or {})}
    tensors = {k: np.asarray(v) for k, v in tensors.items()}
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for name in sorted(tensors):
        nbytes = tensors[name].nbytes
        if max_shard_bytes and shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensors[name]
        size += nbytes
    if len(shards) == 1:
        _save_one(shards[0], path / SINGLE_NAME, metadata)
        return [path / SINGLE_NAME]
    files, weight_map = [], {}
    for i, shard in enumerate(shards):
        file = path / f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        _save_one(shard, file, metadata)
        files.append(file)
        weight_map.update({name: file.name for name in shard})
    total = sum(v.nbytes for v in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (path / INDEX_NAME).write_text(json.dumps(index, indent=2))
    return files
