"""What every mmjax command shares: exit statuses, one-line errors, argument types and logging.

Exit statuses (`python -m mmjax.train`, `mmjax.sample`, `mmjax.eval`, `mmjax.tokenize_images`):
  0   done
  1   the run failed: a non-finite loss or final evaluation, or another host's input (one `error:` line), or a
      bug (a traceback)
  2   a user error: bad arguments, config, paths, data or checkpoints; one `error: ...` line on stderr
  75  preempted (EX_TEMPFAIL): SIGTERM saved a checkpoint; run the same command again to resume

User errors are the exceptions whose message already says what to fix: `ConfigError`, `DataError` (and
`DataStarvedError`), `CheckpointError`, `ImageDecodeError` (an input image), and the OS's errors about a path.
Anything else is a bug and keeps its traceback; `--debug` shows the traceback of a user error too.
"""

from __future__ import annotations

import argparse
import collections
import logging
import os
import sys
import threading
from collections.abc import Callable

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_PREEMPTED = 0, 1, 2, 75
PATH_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError, FileExistsError)
# (module, class): a class whose module was never imported cannot have been raised, so nothing is imported here
USER_ERRORS = (("mmjax.configlib", "ConfigError"), ("mmjax.data.errors", "DataError"),
               ("mmjax.train.checkpoint", "CheckpointError"), ("mmjax.data.images", "ImageDecodeError"))
FAILED_RUN_ERRORS = (("mmjax.train.trainer", "NonFiniteLossError"), ("mmjax.train.trainer", "NonFiniteEvalError"),
                     ("mmjax.train.multihost", "PeerFailedError"))
REPEATS_SHOWN, REPEAT_EVERY = 3, 1000


def _classes(names: tuple[tuple[str, str], ...]) -> tuple[type, ...]:
    return tuple(getattr(sys.modules[m], c) for m, c in names if m in sys.modules)


def exit_status(error: Exception) -> int | None:
    """EXIT_USAGE for a user error, EXIT_FAILED for a failed run, None for a bug."""
    if isinstance(error, PATH_ERRORS + _classes(USER_ERRORS)):
        return EXIT_USAGE
    if isinstance(error, _classes(FAILED_RUN_ERRORS)):
        return EXIT_FAILED
    return None


def run_main(main: Callable[[], int], *, debug: bool) -> int:
    """`main()`'s status; a user error or failed run becomes one `error:` line and its status (see the module).
    The accelerator's XLA flags (`mmjax.platform`) are set first, before any computation starts the backend."""
    from mmjax import platform

    platform.configure_xla_flags()
    try:
        return main()
    except Exception as e:
        status = exit_status(e)
        if debug or status is None:
            raise
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return status


def exit_process(status: int) -> None:
    """Ends the process now with `status`, after flushing output and logs, without waiting for other threads.

    Used for a preempted run: its checkpoint is written, and a data thread blocked in a stuck source (which is
    often why the input was slow) must not hold the process past the preemption grace period.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(status)


class ArgumentParser(argparse.ArgumentParser):
    """argparse with mmjax's error style (one `error:` line, exit 2) and a `--debug` flag."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.add_argument("--debug", action="store_true", help="show full tracebacks instead of one-line errors")

    def error(self, message: str):
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(EXIT_USAGE)

    def parse_with_overrides(self, argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
        """The declared arguments, and the `--config.field=value` overrides (without `--config.`) that follow
        them; anything else is refused in one line."""
        args, rest = self.parse_known_args(argv)
        overrides = []
        for item in rest:
            if not item.startswith("--config."):
                self.error(f"unrecognised argument {item!r} (overrides look like --config.field=value)")
            overrides.append(item[len("--config."):])
        return args, overrides


def int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer >= `minimum` (e.g. `--num 0` is refused with the bound)."""

    def parse(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{raw!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


class RepeatFilter(logging.Filter):
    """Rate-limits repeated warnings: the first REPEATS_SHOWN of each (logger, message template), then every
    REPEAT_EVERY-th with its count. A data set with thousands of bad records logs a handful of lines, not thousands.
    Records logged with `extra={"rate_limited": True}` are already limited at their source and pass."""

    def __init__(self):
        super().__init__()
        self._lock = threading.Lock()
        self._seen: collections.Counter = collections.Counter()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.WARNING or getattr(record, "rate_limited", False):
            return True
        key = (record.name, str(record.msg))
        with self._lock:
            self._seen[key] += 1
            n = self._seen[key]
        if n == REPEATS_SHOWN:
            record.msg = f"{record.msg} [further repeats of this warning: every {REPEAT_EVERY}th]"
        elif n > REPEATS_SHOWN:
            if n % REPEAT_EVERY:
                return False
            record.msg = f"{record.msg} [repeated {n} times]"
        return True


def setup_logging() -> None:
    """INFO to stderr with times, third-party chatter at WARNING, repeated warnings rate-limited."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    for noisy in ("absl", "orbax", "jax._src"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RepeatFilter) for f in handler.filters):
            handler.addFilter(RepeatFilter())
