"""The input pipeline's skip accounting: per-reason counts carried to the consumer (threads and worker processes),
rate-limited warnings, and a starved source stopping with the reasons instead of spinning forever."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from mmjax.data import pipeline


class Numbers:
    """A source of {"x": i}; indices in `undecodable` come back as None, like a corrupt ArrayRecord."""

    def __init__(self, n: int, undecodable: tuple[int, ...] = ()):
        self.n, self.undecodable = n, set(undecodable)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        return None if i in self.undecodable else {"x": i}


def every_third_bad(record, rng):
    if record["x"] % 3 == 1:
        raise KeyError("label")
    if record["x"] % 3 == 2:
        return None
    return {"x": np.int32(record["x"])}


def always_bad(record, rng):
    raise ValueError(f"record {record['x']} is broken")


def test_batches_carry_per_reason_counts_to_the_consumer_and_not_themselves():
    counter = pipeline.SkipCounter()
    it = iter(pipeline.train_dataset(Numbers(30, undecodable=(0, 3)), every_third_bad, global_batch_size=2, seed=0,
                                     counter=counter, limits=None))
    seen = [int(x) for _ in range(20) for x in next(it)["x"]]   # 40 kept records: four epochs of the 10 good ones
    assert all(x % 3 == 0 and x not in (0, 3) for x in seen)
    # carried counts lag what was read ahead, never exceed it, and cover at least the records before the batches
    assert set(counter.counts) == {"KeyError", "rejected", "undecodable"}
    epochs_done = len(seen) // 8
    assert counter.counts["undecodable"] >= 2 * epochs_done and counter.counts["KeyError"] >= 10 * epochs_done
    assert pipeline.SKIPS_KEY not in next(it)


def test_worker_processes_send_their_counts_with_the_batches():
    counter = pipeline.SkipCounter()
    it = iter(pipeline.train_dataset(Numbers(30, undecodable=(0, 3)), every_third_bad, global_batch_size=2, seed=0,
                                     counter=counter, worker_count=2, limits=None))
    for _ in range(20):
        assert pipeline.SKIPS_KEY not in next(it)
    assert set(counter.counts) == {"KeyError", "rejected", "undecodable"}
    assert counter.counts["KeyError"] >= 10 and counter.counts["undecodable"] >= 2


def test_all_bad_records_stop_the_pipeline_with_the_reasons():
    it = iter(pipeline.train_dataset(Numbers(50, undecodable=(7,)), always_bad, global_batch_size=4, seed=0,
                                     counter=pipeline.SkipCounter(),
                                     limits=pipeline.StarvationLimits(max_consecutive=20)))
    with pytest.raises(pipeline.DataStarvedError, match=r"the last \d+ records were all skipped\. Reasons: "
                                                        r"ValueError x\d+ \(e\.g\. record \d+ is broken\)"):
        next(it)


def test_a_mostly_bad_source_stops_on_the_skip_fraction():
    counter = pipeline.SkipCounter(pipeline.StarvationLimits(max_consecutive=0, max_fraction=0.5, check_after=30))
    for i in range(29):   # 2 of 3 skipped, but fewer than check_after records read: no verdict yet
        if i % 3:
            counter.add("KeyError")
            counter.check_starved()
        else:
            counter.keep()
    counter.keep()
    counter.add("KeyError")
    with pytest.raises(pipeline.DataStarvedError, match=r"20 of 31 records \(65%\) were skipped"):
        counter.check_starved()


def test_evaluation_counters_never_stop_and_keep_counting():
    counter = pipeline.SkipCounter()
    batches = list(pipeline.eval_batches(Numbers(2000), always_bad, global_batch_size=4, counter=counter))
    assert batches == [] and counter.counts == {"ValueError": 2000}


def test_skip_warnings_are_rate_limited_per_reason(caplog):
    counter = pipeline.SkipCounter()
    with caplog.at_level(logging.WARNING, logger="mmjax.data.pipeline"):
        for _ in range(2500):
            pipeline.skip(counter, "KeyError", "'label'")
        pipeline.skip(counter, "ImageDecodeError", "bad.png")
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 3 + 2 + 1   # the first three, every 1000th, and the other reason's first
    assert messages[0] == "skipping a record: KeyError: 'label' (1 skipped for this reason so far)"
    assert messages[2].endswith("(3 skipped for this reason so far; showing every 1000th from now)")
    assert messages[4] == "skipping a record: KeyError: 'label' (2000 skipped for this reason so far)"
    assert messages[5].startswith("skipping a record: ImageDecodeError: bad.png (1 skipped")
