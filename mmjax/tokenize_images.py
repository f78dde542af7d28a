r"""Use a trained image tokenizer: reconstruct a folder of images, or tokenize a corpus into ArrayRecord shards.

Reconstruct (a quick look at what the tokenizer keeps):
    python -m mmjax.tokenize_images --workdir runs/vq_tiny --images DIR --out OUT
writes OUT/<name>.png = [original | reconstruction] side by side (after the tokenizer's resize + centre crop)
and OUT/summary.json with the PSNR (dB) of each image; the reconstruction is decode(encode(x)) through the ids.

Tokenize (pre-computed ids make Show-o training skip the tokenizer's encoder entirely):
    python -m mmjax.tokenize_images --config configs/vq/showo_magvitv2.py:res=256,weights=/models/magvitv2.safetensors \
        --data name=webdataset --data "pattern=/data/cc12m/*.tar" --out /data/cc12m_ids256 [--records_per_shard N]
    python -m mmjax.tokenize_images --workdir runs/vq_tiny --dataset-config configs/vq/tiny.py --split eval \
        --out DIR
The source is `--data key=value ...` (a `config.data.<split>` section: webdataset, parquet, imagefolder,
arrayrecord, tfds, ...; values are Python literals or strings) or `--dataset-config FILE[:arg] --split S`. Each
host (`--host_index/--host_count`, default jax.process_index/count) tokenizes its own records on all its local
accelerators (the batch sharded over them, compiled once) into DIR/ids-h<host>-<shard>.array_record: msgpack
records {"ids": int32 (h, w), plus the record's scalar and string fields: caption, key, ...}, read back with
`config.data.train = {name: "arrayrecord", pattern: "DIR/ids-*.array_record"}` (Show-o's configs: `data=tokenized`).
DIR/tokenizer.json (written with the first shard) holds the id grid, codebook size, bit order, image size, the
tokenizer's checkpoint step and parameter digest, and what the job read. A restarted job (after a kill, or SIGTERM:
exit 75) continues after the shards already written and produces byte-identical shards (`mmjax.pretokenize`); one
with another tokenizer (or the same run trained further) or other arguments is refused, unless `--restart` asks to
delete this host's shards and start over. Bad records (undecodable or missing images, no caption / conversation /
label: `--text_fields`) are skipped and counted by reason; the summary (printed, and DIR/summary-h<host>.json)
gives the counts and images/s. A job that writes no record (an empty source, every record skipped) is an error.

The tokenizer is a training run (`--workdir`: its config.json and newest checkpoint, EMA params when the run kept
them) or a config file whose `pretrained.path` names released weights (`--config configs/vq/showo_magvitv2.py:...`).
Errors in the arguments, the run or the data are one `error:` line with exit status 2 (`--debug` for the
traceback; see `mmjax.cli`).
"""

from __future__ import annotations

import argparse
import ast
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

import ml_collections
import numpy as np

from mmjax import cli
from mmjax.pretokenize import TEXT_FIELDS

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
        self.step: int | None = None   # the checkpoint step of a trained run (None for released weights)
        self.variables = self._load_run(workdir) if workdir else self._load_pretrained()
        self.model = self.task.model

    def _load_run(self, workdir: str) -> dict[str, Any]:
        from mmjax import paths
        from mmjax.train.checkpoint import CheckpointError, checkpoint_steps, load_params

        try:
            params = load_params(workdir, key="ema_params")
        except CheckpointError:
            params = load_params(workdir, key="params")
        state = load_params(workdir, key="model_state") if self.task.vq_config.quantizer == "vq" else {}
        # load_params took the newest step that restores and moved newer, corrupt ones aside: the newest left
        self.step = checkpoint_steps(os.path.join(paths.absolute(workdir), "checkpoints"))[-1]
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

    def sharded_encoder(self, batch: int) -> tuple[Callable[[np.ndarray], np.ndarray], int]:
        """(images -> ids on every local accelerator, the batch size rounded up to a multiple of their count):
        the batch is split over the local devices, the tokenizer replicated, compiled once for that size."""
        import jax
        from jax.sharding import Mesh, NamedSharding, PartitionSpec

        from mmjax.models.vq import encode_to_ids

        devices = jax.local_devices()
        batch = -(-batch // len(devices)) * len(devices)
        mesh = Mesh(np.array(devices), ("batch",))
        rows, replicated = NamedSharding(mesh, PartitionSpec("batch")), NamedSharding(mesh, PartitionSpec())
        variables = jax.device_put(self.variables, replicated)

        def encode(images: np.ndarray) -> np.ndarray:
            return np.asarray(encode_to_ids(self.model, variables, jax.device_put(images, rows)))

        return encode, batch

    def job_spec(self) -> dict[str, Any]:
        """What pre-tokenized shards depend on (and what a reader needs to know about their ids): the tokenizer
        is named by its path, checkpoint step and a digest of its variables, so the same run trained further is
        another tokenizer."""
        from mmjax.pretokenize import params_digest

        cfg = self.task.vq_config
        grid = self.image_size // cfg.downsample_factor
        return {"grid": [grid, grid], "codebook_size": cfg.num_codes, "quantizer": cfg.quantizer,
                "msb_first": cfg.msb_first, "image_size": self.image_size, "tokenizer": self.source_name,
                "tokenizer_step": self.step, "tokenizer_sha256": params_digest(self.variables)}

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
    if not loaded:
        from mmjax.data.sources import DataError

        raise DataError(f"no readable image in {images_dir}: all {len(names)} were skipped ({', '.join(skipped)})")
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


def data_option(text: str) -> tuple[str, Any]:
    """`key=value` of `--data`: the value as a Python literal when it is one (3, [1, 2], True), else a string."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


def main(argv: list[str] | None = None) -> int:
    parser = cli.ArgumentParser(prog="python -m mmjax.tokenize_images", description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", help="a training run of the tokenizer (config.json + checkpoints)")
    parser.add_argument("--config", help="instead of --workdir: a vq config whose pretrained.path names weights")
    parser.add_argument("--images", help="reconstruct every image in this folder")
    parser.add_argument("--data", type=data_option, action="append", metavar="KEY=VALUE",
                        help="the source to tokenize, as config.data.<split> fields (repeat: name=..., pattern=...)")
    parser.add_argument("--dataset-config", help="instead of --data: tokenize config.data.<split> of FILE[:arg]")
    parser.add_argument("--split", default="train")
    parser.add_argument("--records_per_shard", type=cli.int_at_least(1), default=10_000,
                        help="input records per output shard (the unit of resumption)")
    parser.add_argument("--limit", type=cli.int_at_least(0), default=0,
                        help="tokenize only the first N records of each host (0: all)")
    parser.add_argument("--batch", type=cli.int_at_least(1), default=64,
                        help="images per encoder call (rounded up to a multiple of the local device count)")
    parser.add_argument("--workers", type=cli.int_at_least(1), default=min(16, os.cpu_count() or 1),
                        help="threads that read and decode records")
    parser.add_argument("--host_index", type=int, default=-1, help="this host (default: jax.process_index())")
    parser.add_argument("--host_count", type=int, default=-1, help="hosts writing shards (jax.process_count())")
    parser.add_argument("--size", type=cli.int_at_least(0), default=0, help="image size (default: the tokenizer's)")
    parser.add_argument("--log_every_s", type=float, default=30.0, help="progress line period without a terminal")
    parser.add_argument("--stop_after", type=cli.int_at_least(1), default=None,
                        help="stop after N records of this run, leaving the shard in progress unfinished, as a "
                             "killed job does (for trials and the resumption test)")
    parser.add_argument("--restart", action="store_true",
                        help="delete this host's shards in --out and start over (e.g. after retraining the "
                             "tokenizer), instead of refusing to resume into another job's output")
    parser.add_argument("--text_fields", default=",".join(TEXT_FIELDS),
                        help="skip (and count as NoTextError) records with none of these fields; '' keeps all")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    cli.setup_logging()
    if sum(bool(x) for x in (args.images, args.data, args.dataset_config)) != 1:
        parser.error("give exactly one of --images DIR, --data KEY=VALUE ... or --dataset-config FILE")
    if bool(args.workdir) == bool(args.config):
        parser.error("give exactly one of --workdir (a trained run) or --config (pretrained weights)")
    return cli.run_main(lambda: _tokenize(parser, args), debug=args.debug)


def _data_config(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, Any]:
    if args.data:
        data = dict(args.data)
        if "name" not in data:
            parser.error("--data needs name=<source> (webdataset, parquet, imagefolder, arrayrecord, ...)")
        return data
    from mmjax import configlib

    data_cfg = configlib.load_config_file(args.dataset_config)
    if args.split not in data_cfg.data:
        parser.error(f"{args.dataset_config} has no config.data.{args.split}; has {sorted(data_cfg.data.keys())}")
    return configlib.to_dict(data_cfg.data[args.split])


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
    from mmjax import pretokenize
    from mmjax.data.sharded import host_share
    from mmjax.data.sources import DataError

    data = _data_config(parser, args)
    host, hosts = host_share(args.host_index, args.host_count)
    spec = {**tok.job_spec(), "data": data, "records_per_shard": args.records_per_shard, "host_count": hosts,
            "limit": args.limit}
    pretokenize.prepare_output(args.out, host, spec, restart=args.restart)   # refuse before opening the data
    encode, batch = tok.sharded_encoder(args.batch)
    with pretokenize.stop_on_sigterm() as stop:
        writer = pretokenize.ShardWriter(
            pretokenize.host_records(data, host, hosts), pretokenize.decoded(tok.preprocess), encode, args.out, host,
            args.records_per_shard, batch, args.workers, args.limit or None, spec=spec,
            text_fields=[f for f in args.text_fields.split(",") if f], stop=stop)
        summary = writer.run(args.log_every_s, args.stop_after)
    with open(os.path.join(args.out, f"summary-h{host:04d}.json"), "w") as f:
        json.dump(summary, f, indent=1)
    skipped = ", ".join(f"{k} x{n}" for k, n in sorted(summary["skipped"].items())) or "none"
    if summary["preempted"]:
        state = "STOPPED by SIGTERM (run the same command again to continue)"
    else:
        state = "done" if summary["complete"] else "STOPPED early (run the same command again to continue)"
    print(f"host {host}/{hosts}: {summary['records']} records in {summary['shards']}/{summary['of_shards']} "
          f"shard(s) in {args.out}, {state}; this run {summary['new_inputs']} inputs at "
          f"{summary['images_per_s']:.1f} images/s; skipped: {skipped}")
    if summary["preempted"]:
        return cli.EXIT_PREEMPTED
    if summary["complete"] and not summary["records"]:
        what = f"all {summary['inputs']} records were skipped ({skipped})" if summary["inputs"] else "no records"
        raise DataError(f"nothing written to {args.out}: {what} in host {host}/{hosts}'s share of {data}")
    return 0

if __name__ == "__main__":
    sys.exit(main())
