"""Use a trained image tokenizer: reconstruct a folder of images, or tokenize a data set into ArrayRecord shards.

Reconstruct (a quick look at what the tokenizer keeps):
    python -m mmjax.tokenize_images --workdir runs/vq_tiny --images DIR --out OUT
writes OUT/<name>.png = [original | reconstruction] side by side (after the tokenizer's resize + centre crop)
and OUT/summary.json with the PSNR (dB) of each image; the reconstruction is decode(encode(x)) through the ids.

Tokenize (pre-computed ids make Show-o training skip the tokenizer's encoder entirely):
    python -m mmjax.tokenize_images --workdir runs/vq_tiny --dataset-config configs/vq/tiny.py \
        [--split train] --shards 4 --out DIR [--limit N]
writes DIR/ids-0000k-of-0000N.array_record, each record a msgpack dict {"ids": int32 (h, w), plus every
scalar/string field of the source record passed through (caption, question, answer, label, ...)}, read back with
`mmjax.data.records.decode` or `config.data.train = {name: "arrayrecord", pattern: "DIR/ids-*.array_record"}`;
and DIR/tokenizer.json (id grid, codebook size, bit order, image size, where the tokenizer and data came from).
Records are kept in source order, split into contiguous shards; records that fail to load or preprocess are
skipped and counted (the count is printed and stored in tokenizer.json).

The tokenizer is a training run (`--workdir`: its config.json and newest checkpoint, EMA params when the run kept
them) or a config file whose `pretrained.path` names released weights (`--config configs/vq/showo_magvitv2.py`).
Errors in the arguments, the run or the data are one `error:` line with exit status 2 (`--debug` for the
traceback; see `mmjax.cli`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Iterator
from typing import Any

import ml_collections
import numpy as np

from mmjax import cli

log = logging.getLogger("mmjax.tokenize_images")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")


class Tokenizer:
    """A VQTask (for its preprocessing and model) with the variables to encode and decode."""

    def __init__(self, workdir: str | None = None, config: str | None = None, image_size: int = 0):
        from mmjax import configlib
        from mmjax.train.tasks.vq import VQTask

        if bool(workdir) == bool(config):
            raise ValueError("give exactly one of --workdir (a trained run) or --config (pretrained weights)")
        if workdir:
            path = os.path.join(workdir, "config.json")
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{path} not found: --workdir must be a training run directory")
            with open(path) as f:
                cfg = ml_collections.ConfigDict(json.load(f))
        else:
            cfg = configlib.load_config_file(config)
        if image_size:
            cfg.unlock()
            cfg.image_size = image_size
        self.task = VQTask(cfg)
        self.source_name = workdir or config
        self.variables = self._load_run(workdir) if workdir else self._load_pretrained()
        self.model = self.task.model

    def _load_run(self, workdir: str) -> dict[str, Any]:
        from mmjax.train.checkpoint import CheckpointError, load_params

        try:
            params = load_params(workdir, key="ema_params")
        except CheckpointError:
            params = load_params(workdir, key="params")
        state = load_params(workdir, key="model_state") if self.task.vq_config.quantizer == "vq" else {}
        return self.task.tokenizer_variables(params, state or {})

    def _load_pretrained(self) -> dict[str, Any]:
        from mmjax.configlib import ConfigError

        loaded = self.task.pretrained_variables() or {}
        if "params" not in loaded:
            raise ConfigError(f"{self.source_name}: config.pretrained.path names no weights")
        return self.task.tokenizer_variables(loaded["params"], {})

    @property
    def image_size(self) -> int:
        return self.task.image_size

    def preprocess(self, image: np.ndarray) -> np.ndarray:
        return self.task.preprocess({"image": image}, None)["image"]

    def encode(self, images: np.ndarray) -> np.ndarray:
        from mmjax.models.vq import encode_to_ids

        return np.asarray(encode_to_ids(self.model, self.variables, images))

    def decode(self, ids: np.ndarray) -> np.ndarray:
        from mmjax.models.vq import decode_ids

        return np.asarray(decode_ids(self.model, self.variables, ids))


def _padded_batches(items: list[Any], batch: int) -> Iterator[tuple[list[Any], int]]:
    """Fixed-size batches (the last one padded by repeating its final item) so jit compiles once."""
    for start in range(0, len(items), batch):
        chunk = items[start: start + batch]
        yield chunk + [chunk[-1]] * (batch - len(chunk)), len(chunk)


def reconstruct_folder(tok: Tokenizer, images_dir: str, out_dir: str, batch: int = 16) -> dict[str, Any]:
    """Side-by-side PNGs of every readable image in `images_dir`; unreadable files are skipped and listed."""
    from mmjax.data.images import ImageDecodeError, decode_image
    from mmjax.eval.image_metrics import psnr
    from mmjax.train.tasks.vq import pairs_grid, save_png, to_uint8

    names = sorted(n for n in os.listdir(images_dir) if n.lower().endswith(IMAGE_SUFFIXES))
    if not names:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {images_dir}")
    loaded, skipped = [], []
    for name in names:
        try:
            loaded.append((name, tok.preprocess(decode_image(os.path.join(images_dir, name)))))
        except (ImageDecodeError, ValueError) as e:
            log.warning("skipping %s: %s", name, e)
            skipped.append(name)
    os.makedirs(out_dir, exist_ok=True)
    scale = max(1, 128 // tok.image_size)
    results: dict[str, float] = {}
    for chunk, n in _padded_batches(loaded, batch):
        images = np.stack([x for _, x in chunk])
        recon = tok.decode(tok.encode(images))
        scores = np.asarray(psnr((images + 1) / 2, (recon + 1) / 2))
        for (name, _), original, rec, score in zip(chunk[:n], images[:n], recon[:n], scores[:n]):
            stem = os.path.splitext(name)[0]
            save_png(pairs_grid(to_uint8(original)[None], to_uint8(rec)[None], scale=scale, pad=0),
                     os.path.join(out_dir, f"{stem}.png"))
            results[name] = float(score)
    summary = {"tokenizer": tok.source_name, "image_size": tok.image_size, "psnr": results,
               "mean_psnr": float(np.mean(list(results.values()))) if results else None, "skipped": skipped}
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return summary


def _passthrough(record: dict[str, Any]) -> dict[str, Any]:
    """The record's scalar / string / small-vector fields (not the image) as msgpack-friendly values."""
    out = {}
    for key, value in record.items():
        if key in ("image", "ids"):
            continue
        if isinstance(value, str | bytes | bool | int | float):
            out[key] = value
        elif isinstance(value, np.generic):
            out[key] = value.item()
        elif isinstance(value, np.ndarray) and value.ndim <= 1:
            out[key] = value
    return out


def tokenize_source(tok: Tokenizer, source: Any, out_dir: str, shards: int, batch: int = 64,
                    limit: int | None = None, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """Encodes every record of `source` into `shards` contiguous ArrayRecord files of {"ids", passthrough}."""
    from mmjax.data.records import write_array_record

    total = min(len(source), limit) if limit else len(source)
    if shards < 1 or total < 1:
        raise ValueError(f"need shards >= 1 and at least one record (shards={shards}, records={total})")
    os.makedirs(out_dir, exist_ok=True)
    skipped: dict[str, int] = {}
    grid: tuple[int, ...] = ()
    files, written = [], 0

    def shard_records(lo: int, hi: int) -> Iterator[dict[str, Any]]:
        nonlocal grid
        kept: list[tuple[np.ndarray, dict[str, Any]]] = []
        for i in range(lo, hi):
            try:
                record = source[i]
                if record is None:
                    raise ValueError("undecodable record")
                kept.append((tok.preprocess(record["image"]), _passthrough(record)))
            except Exception as e:  # one bad record never ends a long job: skip, count, say why (first few)
                skipped[type(e).__name__] = skipped.get(type(e).__name__, 0) + 1
                if sum(skipped.values()) <= 3:
                    log.warning("skipping record %d: %s: %s", i, type(e).__name__, e)
        for chunk, n in _padded_batches(kept, batch):
            ids = tok.encode(np.stack([x for x, _ in chunk])).astype(np.int32)
            grid = ids.shape[1:]
            for (_, extra), row in zip(chunk[:n], ids[:n]):
                yield {"ids": row, **extra}

    for k in range(shards):
        lo, hi = k * total // shards, (k + 1) * total // shards
        path = os.path.join(out_dir, f"ids-{k:05d}-of-{shards:05d}.array_record")
        written += write_array_record(path, shard_records(lo, hi))
        files.append(os.path.basename(path))
    cfg = tok.task.vq_config
    info = {"grid": list(grid), "codebook_size": cfg.num_codes, "quantizer": cfg.quantizer,
            "msb_first": cfg.msb_first, "image_size": tok.image_size, "tokenizer": tok.source_name,
            "records": written, "skipped": skipped, "files": files, **(meta or {})}
    with open(os.path.join(out_dir, "tokenizer.json"), "w") as f:
        json.dump(info, f, indent=2)
    return info


def main(argv: list[str] | None = None) -> int:
    parser = cli.ArgumentParser(prog="python -m mmjax.tokenize_images", description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", help="a training run of the tokenizer (config.json + checkpoints)")
    parser.add_argument("--config", help="instead of --workdir: a vq config whose pretrained.path names weights")
    parser.add_argument("--images", help="reconstruct every image in this folder")
    parser.add_argument("--dataset-config", help="tokenize config.data.<split> of this config file[:arg]")
    parser.add_argument("--split", default="train")
    parser.add_argument("--shards", type=cli.int_at_least(1), default=1)
    parser.add_argument("--limit", type=cli.int_at_least(0), default=0,
                        help="tokenize only the first N records (0: all)")
    parser.add_argument("--batch", type=cli.int_at_least(1), default=64)
    parser.add_argument("--size", type=cli.int_at_least(0), default=0, help="image size (default: the tokenizer's)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    cli.setup_logging()
    if bool(args.images) == bool(args.dataset_config):
        parser.error("give exactly one of --images DIR or --dataset-config FILE")
    if bool(args.workdir) == bool(args.config):
        parser.error("give exactly one of --workdir (a trained run) or --config (pretrained weights)")
    return cli.run_main(lambda: _tokenize(parser, args), debug=args.debug)


def _tokenize(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    try:
        tok = Tokenizer(args.workdir, args.config, args.size)
    except FileNotFoundError as e:  # --workdir is not a run: a usage error, reported like the other arguments'
        parser.error(str(e))
    if args.images:
        summary = reconstruct_folder(tok, args.images, args.out, batch=min(args.batch, 16))
        for name, score in summary["psnr"].items():
            print(f"{name}: {score:.2f} dB")
        print(f"mean PSNR {summary['mean_psnr']:.2f} dB over {len(summary['psnr'])} images -> {args.out}")
        return 0
    from mmjax import configlib
    from mmjax.data.sources import make_source

    data_cfg = configlib.load_config_file(args.dataset_config)
    if args.split not in data_cfg.data:
        parser.error(f"{args.dataset_config} has no config.data.{args.split}; has {sorted(data_cfg.data.keys())}")
    info = tokenize_source(tok, make_source(data_cfg.data[args.split]), args.out, args.shards, args.batch,
                           args.limit or None, meta={"dataset_config": args.dataset_config, "split": args.split})
    print(f"{info['records']} records -> {args.shards} shard(s) in {args.out}; ids grid {info['grid']}, "
          f"codebook {info['codebook_size']}, skipped {sum(info['skipped'].values())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
