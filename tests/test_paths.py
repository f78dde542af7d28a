"""Workdirs in object storage: a gs:// path is never made local, and the metrics writer's object-storage mode
(rewrite the whole file: no appends) keeps one record per step across a resume. No bucket is touched: the URL is
only parsed, and the object-storage mode runs on a local directory."""

from __future__ import annotations

import json
import os

from mmjax import paths
from mmjax.train import checkpoint
from mmjax.train.metrics_writer import MetricsWriter


def test_urls_stay_urls_and_local_paths_become_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert paths.absolute("gs://bucket/runs/a") == "gs://bucket/runs/a"
    assert paths.absolute("runs/a") == str(tmp_path / "runs" / "a")
    assert paths.is_remote("gs://bucket/x") and not paths.is_remote(str(tmp_path))
    # where a gs:// run keeps its checkpoints (what the trainer hands to orbax)
    assert os.path.join(paths.absolute("gs://bucket/runs/a"), "checkpoints") == "gs://bucket/runs/a/checkpoints"
    assert checkpoint.checkpoint_steps(str(tmp_path / "none")) == []
    assert not (tmp_path / "gs:").exists()


def test_object_storage_metrics_are_rewritten_whole(tmp_path, monkeypatch):
    monkeypatch.setattr(paths, "is_remote", lambda path: True)
    writer = MetricsWriter(str(tmp_path), 10, tensorboard=False)
    for step in (1, 2, 3):
        writer.write(step, "train", {"loss": 1.0 / step})
    writer.close()
    resumed = MetricsWriter(str(tmp_path), 10, initial_step=2, tensorboard=False)  # step 3 is written again
    resumed.write(3, "train", {"loss": 0.25})
    resumed.write(3, "eval", {"loss": 0.5}, final=True)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["split"]) for r in records] == [(1, "train"), (2, "train"), (3, "train"), (3, "eval")]
    assert records[2]["loss"] == 0.25 and records[3]["final"] is True
