"""`python -m mmjax.train --config configs/X.py[:arg] --workdir DIR [--config.field=value ...] [--debug]`.

Exit statuses are `mmjax.cli`'s: 0 done, 1 failed run, 2 user error (one `error:` line), 75 preempted (SIGTERM
saved a checkpoint: run the same command again to resume).
"""

from __future__ import annotations

import argparse
import sys

from mmjax import cli, configlib


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = cli.ArgumentParser(prog="python -m mmjax.train", description=__doc__)
    parser.add_argument("--config", required=True, help="config file, optionally with :arg variants")
    parser.add_argument("--workdir", required=True, help="run directory; an existing run there is resumed")
    args, rest = parser.parse_known_args(argv)
    overrides = []
    for item in rest:
        if not item.startswith("--config."):
            parser.error(f"unrecognised argument {item!r} (overrides look like --config.field=value)")
        overrides.append(item[len("--config."):])
    return args, overrides


def _train(args: argparse.Namespace, overrides: list[str]) -> int:
    config = configlib.apply_overrides(configlib.load_config_file(args.config), overrides)
    from mmjax.train.trainer import train

    final = train(config, args.workdir)
    if final.get("preempted"):
        print(f"preempted at step {final['step']}: checkpoint saved; run the same command again to resume",
              file=sys.stderr)
        return cli.EXIT_PREEMPTED
    print({k: v for k, v in final.items() if k != "split"})
    return cli.EXIT_OK


def main(argv: list[str] | None = None) -> int:
    cli.setup_logging()
    args, overrides = parse(sys.argv[1:] if argv is None else argv)
    return cli.run_main(lambda: _train(args, overrides), debug=args.debug)


if __name__ == "__main__":
    status = main()
    if status == cli.EXIT_PREEMPTED:
        cli.exit_process(status)  # data threads may be blocked in a stuck source: do not wait for them
    sys.exit(status)
