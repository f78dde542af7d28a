"""The trainer's end of the input pipeline: batches pulled on a background thread, waited for with a timeout.

A slow or stuck source must not make the run deaf: if the main thread sat inside `next(iterator)` it would run
Python's SIGTERM handler but never get back to the loop that checks it. Here a daemon thread pulls batches (one
ahead, overlapping input with the step) and the main thread waits on a queue in short slices, asking `should_stop`
between them. Errors from the pipeline (e.g. `DataStarvedError`) are re-raised in the main thread.

Because the thread runs ahead, the iterator's own state is not the trainer's position: the feed records the state
after each batch it hands out and checkpoints that (grain's checkpoint handler takes any object with
`get_state() -> bytes`, `set_state(bytes)` and `start_prefetch()`); the bytes are the JSON grain writes for its own
iterators, so checkpoints stay interchangeable.
"""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Callable
from typing import Any

POLL_SECONDS = 0.2


class DataFeed:
    """An infinite batch iterator read on a daemon thread; `next` waits interruptibly (see the module)."""

    def __init__(self, iterator: Any, ahead: int = 1):
        self._iterator = iterator
        self._queue: queue.Queue = queue.Queue(maxsize=ahead)
        self._thread: threading.Thread | None = None
        self._closed = threading.Event()
        self._state = iterator.get_state()

    def _put(self, item: tuple) -> None:
        while not self._closed.is_set():
            try:
                self._queue.put(item, timeout=POLL_SECONDS)
                return
            except queue.Full:
                continue

    def _pull(self) -> None:
        try:
            while not self._closed.is_set():
                batch = next(self._iterator)
                self._put((batch, self._iterator.get_state(), None))
        except BaseException as e:  # handed to the main thread, which raises it
            self._put((None, None, e))
        finally:
            if self._closed.is_set() and hasattr(self._iterator, "close"):
                self._iterator.close()   # grain's prefetch threads and worker processes end with it

    def close(self) -> None:
        """Stops the thread after the batch it is reading (a thread stuck in the source stays, as a daemon)."""
        self._closed.set()

    def next(self, should_stop: Callable[[], bool]) -> dict[str, Any] | None:
        """The next batch, or None once `should_stop()` is true while waiting for one."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._pull, name="mmjax-data-feed", daemon=True)
            self._thread.start()
        while True:
            try:
                batch, state, error = self._queue.get(timeout=POLL_SECONDS)
            except queue.Empty:
                if should_stop():
                    return None
                continue
            if error is not None:
                self._queue.put((None, None, error))  # every later call fails the same way
                raise error
            self._state = state
            return batch

    # -- grain checkpoint protocol (the position of the batches handed out, not of the thread) -------------------
    def get_state(self) -> bytes:
        return json.dumps(self._state, indent=4).encode()

    def set_state(self, state: bytes) -> None:
        if self._thread is not None:
            raise RuntimeError("DataFeed.set_state after batches were pulled")
        self._iterator.set_state(json.loads(state))
        self._state = self._iterator.get_state()

    def start_prefetch(self) -> None:
        """Part of grain's protocol; the feed's thread starts with the first `next`."""
