"""DataFeed: the trainer waits for batches interruptibly, gets pipeline errors in its own thread, and checkpoints
the position of the batches it consumed, not of the thread reading ahead."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest

from mmjax.data import pipeline, sources
from mmjax.train.data_feed import DataFeed


def digits_batches(preprocess=lambda r, rng: {"label": np.int32(r["label"]), "x": np.float32(rng.uniform())}):
    return pipeline.train_dataset(sources.DigitsSource("train"), preprocess, global_batch_size=4, seed=3,
                                  counter=pipeline.SkipCounter())


def test_state_is_the_position_of_the_batches_handed_out():
    feed = DataFeed(iter(digits_batches()), ahead=2)
    for _ in range(3):
        feed.next(should_stop=lambda: False)
    time.sleep(0.5)                       # the thread has read further ahead by now
    state = feed.get_state()
    fourth = feed.next(should_stop=lambda: False)
    again = DataFeed(iter(digits_batches()))
    again.set_state(state)
    resumed = again.next(should_stop=lambda: False)
    for k in ("label", "x"):
        np.testing.assert_array_equal(resumed[k], fourth[k])
    assert json.loads(state)  # the JSON grain writes for its own iterators


def test_a_stuck_source_returns_none_once_stop_is_asked():
    release = threading.Event()

    def stuck(record, rng):
        release.wait()
        return {"label": np.int32(record["label"])}

    feed = DataFeed(iter(digits_batches(stuck)))
    deadline = time.monotonic() + 1.0
    assert feed.next(should_stop=lambda: time.monotonic() > deadline) is None
    release.set()


def test_pipeline_errors_are_raised_in_the_caller_every_time():
    def broken(record, rng):
        raise ValueError("broken")

    feed = DataFeed(iter(pipeline.train_dataset(sources.DigitsSource("train"), broken, global_batch_size=4, seed=0,
                                                counter=pipeline.SkipCounter(),
                                                limits=pipeline.StarvationLimits(max_consecutive=10))))
    for _ in range(2):
        with pytest.raises(pipeline.DataStarvedError, match="ValueError"):
            feed.next(should_stop=lambda: False)


def test_state_cannot_be_set_once_the_thread_reads():
    feed = DataFeed(iter(digits_batches()))
    state = feed.get_state()
    feed.next(should_stop=lambda: False)
    with pytest.raises(RuntimeError, match="after batches were pulled"):
        feed.set_state(state)


class Counting:
    """An endless iterator that records whether it was closed."""

    def __init__(self):
        self.position, self.closed = 0, False

    def __next__(self):
        self.position += 1
        return {"i": self.position}

    def get_state(self):
        return {"position": self.position}

    def close(self):
        self.closed = True


def test_close_ends_the_reading_thread_and_closes_the_iterator():
    iterator = Counting()
    feed = DataFeed(iterator)
    assert feed.next(should_stop=lambda: False) == {"i": 1}
    assert json.loads(feed.get_state()) == {"position": 1}
    feed.close()
    feed._thread.join(timeout=5)
    assert not feed._thread.is_alive() and iterator.closed
