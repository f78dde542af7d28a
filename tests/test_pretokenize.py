"""`mmjax.pretokenize` without a model (a stand-in encoder): a job refuses to resume into shards of another job
(another tokenizer, even with the same path) before it opens the data, and starts over when asked; a host's shard
of another job is refused even when tokenizer.json agrees; tokenizer.json appears with the first shard, not
before; SIGTERM stops the writer between batches; records without text are counted, not written."""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest

from mmjax import pretokenize
from mmjax.data.sources import DataError

SPEC = {"grid": [2, 2], "codebook_size": 256, "tokenizer": "runs/vq", "tokenizer_step": 3,
        "tokenizer_sha256": "a" * 64, "data": {"name": "memory"}, "records_per_shard": 4, "host_count": 1}


def records(n: int) -> list[dict]:
    rng = np.random.default_rng(0)
    return [{"image": rng.integers(0, 256, (8, 8, 3), np.uint8), "caption": f"scene {i}", "key": f"{i:03d}"}
            for i in range(n)]


def encode(images: np.ndarray) -> np.ndarray:
    """Codes that depend on each image: its pixel sums over 2x2 blocks, mod 256."""
    return images.reshape(len(images), 2, 4, 2, 4, 3).sum(axis=(2, 4, 5)).astype(np.int64) % 256


def writer(source, out, spec=SPEC, **kw) -> pretokenize.ShardWriter:
    return pretokenize.ShardWriter(source, pretokenize.decoded(lambda x: x.astype(np.float32)), encode, str(out), 0,
                                   4, 2, workers=1, spec=spec, **kw)


def files(out) -> list[str]:
    return sorted(os.listdir(out))


def test_another_tokenizer_is_refused_before_the_data_is_opened_and_restart_starts_over(tmp_path):
    out = tmp_path / "ids"
    pretokenize.prepare_output(str(out), 0, SPEC)
    assert not writer(records(10), out).run(stop_after=6)["complete"]   # shard 0 written, shard 1 in progress
    newer = {**SPEC, "tokenizer_step": 4, "tokenizer_sha256": "b" * 64}   # the same run, trained further
    with pytest.raises(DataError, match=r"holds shards of another tokenization job \(tokenizer_sha256, "
                                        r"tokenizer_step differ from .*tokenizer.json\).*--restart"):
        pretokenize.prepare_output(str(out), 0, newer)
    pretokenize.prepare_output(str(out), 0, SPEC)   # the same job resumes
    pretokenize.prepare_output(str(out), 0, newer, restart=True)
    assert files(out) == []                          # this host's shards and the identity file are gone
    summary = writer(records(10), out, newer).run()
    assert summary["complete"] and summary["records"] == 10
    assert json.loads((out / "tokenizer.json").read_text()) == newer


def test_restart_on_one_host_refuses_while_another_hosts_old_shards_remain(tmp_path):
    out = tmp_path / "ids"
    two_hosts = {**SPEC, "host_count": 2}
    for host in (0, 1):
        pretokenize.ShardWriter(records(4), pretokenize.decoded(lambda x: x.astype(np.float32)), encode, str(out),
                                host, 4, 2, workers=1, spec=two_hosts).run()
    newer = {**two_hosts, "tokenizer_sha256": "b" * 64}
    with pytest.raises(DataError, match="other hosts' shards of that job remain: run --restart on every host"):
        pretokenize.prepare_output(str(out), 0, newer, restart=True)
    pretokenize.prepare_output(str(out), 1, newer, restart=True)   # the last host's restart clears the folder
    assert files(out) == []


def test_a_shard_of_another_job_is_refused_even_when_tokenizer_json_agrees(tmp_path):
    out = tmp_path / "ids"
    writer(records(4), out).run()
    (out / "tokenizer.json").write_text(json.dumps({**SPEC, "tokenizer_sha256": "c" * 64}))  # another host restarted
    with pytest.raises(DataError, match=r"ids-h0000-000000\.array_record was written by another tokenization job"):
        writer(records(8), out, {**SPEC, "tokenizer_sha256": "c" * 64}).run()


def test_tokenizer_json_is_written_with_the_first_shard_and_a_stale_one_is_removed(tmp_path):
    out = tmp_path / "ids"
    os.makedirs(out)
    assert not writer(records(10), out).run(stop_after=2)["complete"]   # stopped inside shard 0
    assert not (out / "tokenizer.json").exists()
    (out / "tokenizer.json").write_text(json.dumps({**SPEC, "data": {"name": "a typo"}}))   # a failed first attempt
    pretokenize.prepare_output(str(out), 0, SPEC)
    assert not (out / "tokenizer.json").exists()
    writer(records(10), out).run(stop_after=4)
    assert "tokenizer.json" in files(out) and "ids-h0000-000000.array_record" in files(out)


def test_sigterm_stops_between_batches_and_restores_the_handler(tmp_path):
    out = tmp_path / "ids"
    calls = []

    def encode_then_terminate(images):
        calls.append(1)
        if len(calls) == 3:
            signal.raise_signal(signal.SIGTERM)
        return encode(images)

    with pretokenize.stop_on_sigterm() as stop:
        w = pretokenize.ShardWriter(records(12), pretokenize.decoded(lambda x: x.astype(np.float32)),
                                    encode_then_terminate, str(out), 0, 4, 2, workers=1, spec=SPEC, stop=stop)
        summary = w.run()
    assert summary["preempted"] and not summary["complete"] and summary["shards"] == 1 and len(calls) == 3
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_records_without_text_or_with_a_non_utf8_caption_are_counted(tmp_path):
    source = records(8)
    source[1]["caption"] = ""
    del source[2]["caption"]
    source[3]["caption"] = b"\xff\xfe not utf-8"
    source[4] = {"image": source[4]["image"], "label": np.int64(0), "key": "004"}   # a label is text enough
    source[5]["caption"] = "caf\u00e9".encode()                                       # UTF-8 bytes: kept, as text
    summary = writer(source, tmp_path / "ids", text_fields=pretokenize.TEXT_FIELDS).run()
    assert summary["skipped"] == {"NoTextError": 2, "UnicodeDecodeError": 1} and summary["records"] == 5


def test_params_digest_names_every_value_and_dtype():
    params = {"enc": {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}, "codebook": np.ones(4, np.float32)}
    same = {"enc": {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}, "codebook": np.ones(4, np.float32)}
    assert pretokenize.params_digest(params) == pretokenize.params_digest(same)
    same["enc"]["w"][1, 2] += 1e-6
    assert pretokenize.params_digest(params) != pretokenize.params_digest(same)
    assert pretokenize.params_digest(params) != pretokenize.params_digest(
        {**params, "codebook": np.ones(4, np.float16)})
