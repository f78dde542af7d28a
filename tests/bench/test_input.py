"""Input benchmarks: the generated corpora are real images of the asked size, and each workload's tiny variant runs
the task's real preprocessing through the pipeline (0 and 1 worker processes) without skipping a record.
Nothing here asserts a time."""

from __future__ import annotations

import pytest

from mmjax.bench import input as bench
from mmjax.data.images import decode_image


def test_photos_are_distinct_jpegs_of_the_asked_size():
    jpegs = bench.photos(3, 96)
    assert len(set(jpegs)) == 3 and all(j.startswith(b"\xff\xd8") for j in jpegs)
    assert decode_image(jpegs[0]).shape == (96, 96, 3)


@pytest.mark.parametrize("name", sorted(bench.WORKLOADS))
def test_tiny_workloads_preprocess_every_record(name):
    fn, _, tiny = bench.WORKLOADS[name]
    result = fn(**tiny)["result"]
    assert result["records_per_s_w0"] > 0 and result["records_per_s_w1"] > 0 and result["cpu_ms_per_record"] > 0
    assert result["cores_per_accelerator"] == pytest.approx(
        result["demand_records_per_s"] * result["cpu_ms_per_record"] / 1e3, rel=0.05, abs=0.01)
    assert result["skipped"] == 0


def test_host_demand_is_accelerators_times_their_rate():
    rates = {0: {"records_per_s": 10.0, "cpu_s_per_record": 0.02, "skipped": 0}}
    row = bench.report(bench.Demand(4, 0.25, "test"), rates)   # 16 records/s per H200
    assert row["demand_records_per_s_h200_x8"] == 128.0 and row["cores_h200_x8"] == 2.56
    assert row["demand_records_per_s_v5e_x4"] == pytest.approx(4 * 16 * 197 / 989, abs=0.01)
    assert row["cores_v5e_x4"] == pytest.approx(4 * 16 * 197 / 989 * 0.02, abs=0.01)
