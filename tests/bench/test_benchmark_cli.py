"""scripts/benchmark.py end to end with tiny shapes: every workload is built from its config and trainer step,
runs in its own process and reports numbers (timings are never checked, only that they exist)."""

import json
import os
import subprocess
import sys

import pytest


# A training workload and a generation workload run in every test session (each compiles in its own process); the
# others share their code paths (`bench.training`, `bench.generation`) and run with `-m slow`.
@pytest.mark.parametrize("workloads", [("t2i_256", "llava_ov_0p5b"),
                                       pytest.param(("vit_l14_336", "lm_decode"), marks=pytest.mark.slow)])
def test_tiny_workloads_report_numbers(tmp_path, workloads):
    out = tmp_path / "bench.json"
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "scripts/benchmark.py", *workloads, "--tiny", "--iters", "1",
                           "--json", str(out)],
                          capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(out.read_text())
    assert results["info"]["devices"] and results["info"]["gpu"] is False
    for name in workloads:
        record = results[name]["mmjax"]
        assert "error" not in record, record
        assert record["ms"] > 0
    if "llava_ov_0p5b" in workloads:
        assert results["llava_ov_0p5b"]["mmjax"]["tflops"] > 0 and results["t2i_256"]["mmjax"]["images_per_s"] > 0


def test_unknown_workload_and_bad_override_are_refused(tmp_path):
    bad = subprocess.run([sys.executable, "scripts/benchmark.py", "nope"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown workload" in bad.stderr
