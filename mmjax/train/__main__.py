"""`python -m mmjax.train --config configs/X.py[:arg] --workdir DIR [--config.field=value ...] [--debug]`.

Exit statuses are `mmjax.cli`'s: 0 done, 1 failed run, 2 user error (one `error:` line), 75 preempted (SIGTERM
saved a checkpoint: run the same command again to resume).

`--compile_only --topology v5e:4x4 [--num_slices N] [--out report.json]` trains nothing: it compiles init and the
train step for that TPU slice on this machine (libtpu, no TPU needed), prints per-chip memory against HBM and a
verdict (`mmjax.train.preflight`), and exits 0 when the step fits (tight included) or 1 when it does not.
"""

from __future__ import annotations

import argparse
import sys

from mmjax import cli, configlib


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = cli.ArgumentParser(prog="python -m mmjax.train", description=__doc__)
    parser.add_argument("--config", required=True, help="config file, optionally with :arg variants")
    parser.add_argument("--workdir", help="run directory; an existing run there is resumed")
    parser.add_argument("--compile_only", action="store_true",
                        help="compile for a TPU slice (--topology) and report per-chip memory; trains nothing")
    parser.add_argument("--topology", help="with --compile_only: e.g. v5e:4x4, v5p:2x4x4, v4:2x2x2 or v5e-16")
    parser.add_argument("--num_slices", type=cli.int_at_least(1), default=1,
                        help="with --compile_only: slices joined over the data-centre network (multi-slice)")
    parser.add_argument("--out", help="with --compile_only: write the report as JSON here")
    parser.add_argument("--shapes_only", action="store_true", help="with --compile_only: shape checks, no compile")
    parser.add_argument("--fit", action="store_true", help="with --compile_only: apply the nearest settings that fit")
    parser.add_argument("--plan", help="a TPU slice: rank meshes, batch splits and remat by the cost model, compile "
                        "the best --plan_k (mmjax.train.planner)")
    parser.add_argument("--plan_k", type=cli.int_at_least(0), default=3, help="with --plan: plans to compile")
    args, overrides = parser.parse_with_overrides(argv)
    if args.compile_only and not args.topology:
        parser.error("--compile_only needs --topology (e.g. v5e:4x4)")
    if not args.compile_only and not args.plan and not args.workdir:
        parser.error("--workdir is required (or --compile_only --topology ... to only check a TPU slice)")
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


def _compile_only(args: argparse.Namespace, overrides: list[str]) -> int:
    import json

    from mmjax.train.preflight import format_report, preflight

    config = configlib.apply_overrides(configlib.load_config_file(args.config), overrides)
    report = preflight(config, args.topology, num_slices=args.num_slices, compile=not args.shapes_only, fit=args.fit)
    print(format_report(report))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"config": args.config, "overrides": overrides, **report}, f, indent=1)
    return {"does not fit": cli.EXIT_FAILED, "cannot check": cli.EXIT_USAGE}.get(report["verdict"], cli.EXIT_OK)


def main(argv: list[str] | None = None) -> int:
    cli.setup_logging()
    args, overrides = parse(sys.argv[1:] if argv is None else argv)
    command = _compile_only if args.compile_only else _train
    if args.plan:
        from mmjax.train import planner

        command = lambda a, o: planner.main(configlib.apply_overrides(configlib.load_config_file(a.config), o),
                                            a.plan, k=a.plan_k, num_slices=a.num_slices)
    return cli.run_main(lambda: command(args, overrides), debug=args.debug)


if __name__ == "__main__":
    status = main()
    if status == cli.EXIT_PREEMPTED:
        cli.exit_process(status)  # data threads may be blocked in a stuck source: do not wait for them
    sys.exit(status)
