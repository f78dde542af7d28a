"""`python -m mmjax.train --config configs/X.py[:arg] --workdir DIR [--config.field=value ...]`."""

from __future__ import annotations

import argparse
import logging
import sys

from mmjax import configlib


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(prog="python -m mmjax.train", description=__doc__)
    parser.add_argument("--config", required=True, help="config file, optionally with :arg variants")
    parser.add_argument("--workdir", required=True, help="run directory; an existing run there is resumed")
    args, rest = parser.parse_known_args(argv)
    overrides = []
    for item in rest:
        if not item.startswith("--config."):
            parser.error(f"unrecognised argument {item!r} (overrides look like --config.field=value)")
        overrides.append(item[len("--config."):])
    return args, overrides


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("absl", "orbax", "jax._src"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    args, overrides = parse(sys.argv[1:] if argv is None else argv)
    try:
        config = configlib.apply_overrides(configlib.load_config_file(args.config), overrides)
    except configlib.ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from mmjax.train.trainer import train

    final = train(config, args.workdir)
    print({k: v for k, v in final.items() if k != "split"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
