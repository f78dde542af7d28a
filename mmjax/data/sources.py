"""Data sources behind one interface: a grain random-access source of dict records, built from the config.

`config.data.<split>` is a ConfigDict with `name` and the source's options:
  digits      sklearn's 1797 real 8x8 handwritten digits; fixed 80/20 train/test split (permutation seed 0)
  shapes      synthetic coloured shapes with captions and QA (`mmjax.data.shapes`), the multimodal default
  tfds        a prepared tensorflow-datasets data set read through `tfds.data_source` (no TensorFlow needed)
  arrayrecord ArrayRecord files of msgpack-encoded dict records (`mmjax.data.records`)
  photos      random crops of the real photos scikit-image ships (`mmjax.data.photos`), fixed photo split
  webdataset  tar shards of samples grouped by key, e.g. img2dataset output (`mmjax.data.webdataset`)
  parquet     parquet files of image bytes + captions, or text (`mmjax.data.parquet`)
  imagefolder a folder of images with a captions JSONL or `.txt` sidecars (`mmjax.data.imagefolder`)
  jsonl       JSON-lines files, one record object per line (`mmjax.data.jsonl`), e.g. a text corpus
  llava_json  LLaVA's JSON / JSONL conversations + image folder (`mmjax.data.llava_data`)
webdataset, parquet and imagefolder yield {"image": encoded bytes, "caption": str, ...}; on several hosts each
host reads only its own shards (`mmjax.data.sharded`). docs/data.md lists every option and conversion commands.
"""

from __future__ import annotations

import glob
import os
from typing import Any

import ml_collections
import numpy as np

from mmjax import configlib
from mmjax.data import records
from mmjax.data.errors import DataError, NoCaptionError, NoImageError  # noqa: F401 (re-exported)
from mmjax.data.shapes import ShapesConfig, ShapesSource

CORPORA = ("webdataset", "parquet", "imagefolder", "jsonl")   # modules of mmjax.data with a `from_config(cfg)`
SOURCE_NAMES = ("digits", "shapes", "tfds", "arrayrecord", "photos", "llava_json", *CORPORA)
HOST_SHARDED = ("webdataset", "parquet", "imagefolder")     # take host_index / host_count (mmjax.data.sharded)
DIGITS_SPLIT_SEED = 0
DIGITS_TRAIN_FRACTION = 0.8



GLOB_CHARS = "*?["


def _literal_prefix(pattern: str) -> str:
    """The longest leading folder of `pattern` that exists as written ("" if none does)."""
    folder = os.path.dirname(pattern)
    while folder and not os.path.isdir(folder):
        parent = os.path.dirname(folder)
        if parent == folder:
            return ""
        folder = parent
    return folder


def match_files(pattern: str, what: str, skip_suffix: str = "") -> list[str]:
    """The files a data option names, sorted: an existing file as it is (even with `[` or `*` in its name), else
    the glob's matches. A folder whose name holds glob characters (`runs/[2024]/*.tar`) is matched literally when
    it exists. A folder given instead of files, and a pattern that matches no file, raise DataError naming it.
    `what` names the option in messages (e.g. "webdataset shards"); names ending in `skip_suffix` are left out."""
    if not pattern:
        raise DataError(f"no path given for the {what}")
    pattern = os.path.expanduser(pattern)
    if os.path.isdir(pattern):
        raise DataError(f"{pattern!r} is a folder; the {what} option wants files: a glob such as "
                        f"{os.path.join(pattern, '*')!r} or one file")
    if os.path.isfile(pattern):
        return [pattern]
    prefix = _literal_prefix(pattern)
    paths = []
    if any(c in prefix for c in GLOB_CHARS):   # an existing folder named like a glob: take its name literally
        paths = glob.glob(glob.escape(prefix) + pattern[len(prefix):])
    paths = paths or glob.glob(pattern)
    paths = sorted(p for p in paths if os.path.isfile(p) and not (skip_suffix and p.endswith(skip_suffix)))
    if not paths:
        folder = os.path.dirname(pattern) or "."
        where = (f"the folder {folder!r} holds no match" if os.path.isdir(folder)
                 else f"no folder matches {folder!r}" if any(c in folder for c in GLOB_CHARS)
                 else f"the folder {folder!r} does not exist")
        raise DataError(f"no {what} match {pattern!r} ({where})")
    return paths


class DigitsSource:
    """sklearn's handwritten digits as records {"image": float32 (8, 8, 1) in [0, 1], "label": int}.

    The split is a fixed permutation of the 1797 images (seed `DIGITS_SPLIT_SEED`): the first 80% (1437) train,
    the remaining 360 test, so every run and every paper-table number refers to the same held-out images.
    """

    def __init__(self, split: str = "train"):
        from sklearn.datasets import load_digits

        if split not in ("train", "test"):
            raise DataError(f"digits has splits 'train' and 'test', not {split!r}")
        digits = load_digits()
        order = np.random.default_rng(DIGITS_SPLIT_SEED).permutation(len(digits.images))
        n_train = int(DIGITS_TRAIN_FRACTION * len(order))
        keep = order[:n_train] if split == "train" else order[n_train:]
        self.images = (digits.images[keep] / 16.0).astype(np.float32)[..., None]
        self.labels = digits.target[keep].astype(np.int32)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"image": self.images[index], "label": self.labels[index]}


class TfdsSource:
    """A prepared tfds data set as a random-access source (`tfds.data_source`, ArrayRecord, no TensorFlow)."""

    def __init__(self, name: str, split: str, data_dir: str | None = None):
        try:
            import tensorflow_datasets as tfds
        except ImportError as e:
            raise DataError("tfds sources need tensorflow-datasets: pip install -e .[data]") from e
        try:
            self._source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
        except Exception as e:  # tfds raises several types for "not prepared"; all mean the same to a user
            where = data_dir or os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets")
            raise DataError(f"tfds data set {name!r} split {split!r} is not available in {where}: "
                            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self._source[index]


class ArrayRecordSource:
    """ArrayRecord shards of msgpack dict records; a corrupt record decodes to None (skipped and counted)."""

    def __init__(self, pattern: str):
        from grain.sources import ArrayRecordDataSource

        paths = match_files(pattern, "ArrayRecord files")
        self.paths = paths
        self._source = ArrayRecordDataSource(paths)

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        return records.decode_or_none(self._source[index], where=f"{self.paths[0]}... record {index}")


# Every option of each corpus source at its default, so a section built by `corpus_section` takes any dotted
# override (`--config.data.train.caption_key=text`); the first option is the one `corpus=` sets.
CORPUS_OPTIONS: dict[str, dict[str, Any]] = {
    "webdataset": dict(pattern="", image_exts=("jpg", "jpeg", "png", "webp"), caption_key="caption", index_dir="",
                       host_index=-1, host_count=-1),
    "parquet": dict(pattern="", image_column="jpg", caption_column="caption", columns=(), cache_row_groups=4,
                    host_index=-1, host_count=-1),
    "imagefolder": dict(root="", captions="", file_field="file_name", caption_field="caption", host_index=-1,
                        host_count=-1),
    "jsonl": dict(pattern="", image_field="image", images=""),
    "arrayrecord": dict(pattern=""),
    "llava_json": dict(json="", images=""),
}
TEXT_OPTIONS: dict[str, dict[str, Any]] = {   # the text sources of LM packing (`mmjax.data.packing`)
    "jsonl": dict(pattern="", text_field="text"),
    "parquet": dict(pattern="", text_field="text", cache_row_groups=4, host_index=-1, host_count=-1),
    "arrayrecord": dict(pattern="", text_field="text"),
}


def corpus_section(kind: str, corpus: str, *, text: bool = False, **options: Any) -> ml_collections.ConfigDict:
    """A `config.data.<split>` section reading `corpus` with source `kind`: what a config's `data=KIND,corpus=PATH`
    argument builds. Every option of the source is present at its default (so dotted overrides work); `options`
    change some (a config's own choice, e.g. `columns=("label",)` for classification). `text=True`: the text
    sources of LM packing."""
    table = TEXT_OPTIONS if text else CORPUS_OPTIONS
    if kind not in table:
        raise configlib.ConfigError(f"data={kind!r} is not a {'text ' if text else ''}corpus source; choose one of "
                                    f"{sorted(table)}")
    if not corpus:
        raise configlib.ConfigError(f"data={kind} needs corpus=PATH (the {next(iter(table[kind]))} of the "
                                    f"{kind} source; docs/data.md)")
    section = dict(table[kind])
    configlib.check_known(options, tuple(section), f"data (options of the {kind} source)")
    section.update(options, **{next(iter(section)): corpus})
    return ml_collections.ConfigDict(dict(name=kind, **section))


def label_options(kind: str) -> dict[str, Any]:
    """What a classification config adds to a corpus source so its records carry `label`: parquet passes a
    `label` column through; the other sources give it themselves (class folders, `.cls` members, the field)."""
    return {"columns": ("label",)} if kind == "parquet" else {}


def corpus_splits(kind: str, corpus: str, eval_corpus: str = "", *, text: bool = False, **options: Any
                  ) -> tuple[ml_collections.ConfigDict, ml_collections.ConfigDict]:
    """(train, eval) sections for a config's `data=KIND,corpus=PATH[,eval_corpus=PATH]`: eval reads
    `eval_corpus`, or the training corpus when none is given (the config then limits how much of it)."""
    return (corpus_section(kind, corpus, text=text, **options),
            corpus_section(kind, eval_corpus or corpus, text=text, **options))


def make_source(cfg: ml_collections.ConfigDict | dict) -> Any:
    """The source described by one `config.data.<split>` section."""
    cfg = dict(cfg)
    name = cfg.pop("name")
    if name == "digits":
        return DigitsSource(cfg.get("split", "train"))
    if name == "shapes":
        num_records, seed = cfg.pop("num_records", 10_000), cfg.pop("seed", 0)
        cfg.pop("split", None)
        shapes_cfg = ShapesConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()})
        return ShapesSource(shapes_cfg, num_records=num_records, seed=seed)
    if name == "tfds":
        return TfdsSource(cfg["dataset"], cfg.get("split", "train"), cfg.get("data_dir") or None)
    if name == "arrayrecord":
        return ArrayRecordSource(cfg["pattern"])
    if name == "photos":
        from mmjax.data.photos import PhotosSource

        return PhotosSource(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()})
    if name == "llava_json":
        from mmjax.data.llava_data import LlavaJsonSource

        configlib.check_known(cfg, ("json", "images"), "data.<split> (llava_json source)")
        return LlavaJsonSource(cfg["json"], cfg.get("images", ""))
    if name in CORPORA:
        import importlib

        return importlib.import_module(f"mmjax.data.{name}").from_config(cfg)
    raise DataError(f"unknown data source {name!r} ({' | '.join(SOURCE_NAMES)})")
