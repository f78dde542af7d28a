"""A user's corpus mistakes: each gives one `error:` line naming the thing and exit status 2 before anything
compiles, or is skipped and counted under its own reason with the record's shard / file and key / row."""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import pytest

from mmjax import configlib
from mmjax.data import pipeline
from mmjax.data.sources import DataError, make_source, match_files
from mmjax.train import __main__ as train_main
from mmjax.train import trainer as trainer_module
from tests.data.corpora import CORRUPT_JPEG, shape_samples, write_corpus

VQ = "configs/vq/tiny.py:size=16,tokens=4,ch=8,bits=6,steps=2,batch=4"


@pytest.fixture
def no_compile(monkeypatch):
    """Fails the test if a run gets as far as its checkpointer (built after the data, before the first compile)."""
    def refuse(*args, **kwargs):
        raise AssertionError("the run got past its data checks")

    monkeypatch.setattr(trainer_module, "Checkpointer", refuse)


def train_error(capsys, tmp_path, config: str, *overrides: str) -> str:
    """Runs `python -m mmjax.train` in this process; asserts exit status 2 and one `error:` line; returns it."""
    status = train_main.main(["--config", config, "--workdir", str(tmp_path / "run"),
                              *[f"--config.{o}" for o in overrides]])
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("error:")]
    assert status == 2 and len(errors) == 1, err
    return errors[0]


# ------------------------------------------------------------------------------------- paths and patterns


def test_patterns_folders_and_literal_bracket_folders(tmp_path):
    dated = tmp_path / "[2024]"
    dated.mkdir()
    for name in ("a.tar", "b.tar"):
        (dated / name).write_bytes(b"")
    (tmp_path / "2").mkdir()   # what `[2024]` means as a glob: must not be matched instead
    (tmp_path / "2" / "c.tar").write_bytes(b"")
    assert match_files(str(dated / "*.tar"), "shards") == [str(dated / "a.tar"), str(dated / "b.tar")]
    assert match_files(str(dated / "a.tar"), "shards") == [str(dated / "a.tar")]
    with pytest.raises(DataError, match=r"is a folder; the shards option wants files: a glob such as '.*\*'"):
        match_files(str(dated), "shards")
    with pytest.raises(DataError, match=r"no shards match '.*\*\.parquet' \(the folder '.*\[2024\]' holds no match\)"):
        match_files(str(dated / "*.parquet"), "shards")
    with pytest.raises(DataError, match=r"no shards match '/nonexistent/\*\.tar' \(the folder '/nonexistent' does "
                                        r"not exist\)"):
        match_files("/nonexistent/*.tar", "shards")


@pytest.mark.parametrize("kind", ["webdataset", "parquet", "jsonl", "arrayrecord"])
def test_every_pattern_source_refuses_a_folder_and_an_empty_match(kind, tmp_path):
    with pytest.raises(DataError, match="is a folder"):
        make_source({"name": kind, "pattern": str(tmp_path)})
    with pytest.raises(DataError, match=r"no .* match"):
        make_source({"name": kind, "pattern": str(tmp_path / "*.none")})


def test_image_folder_class_subfolders_become_labels(tmp_path):
    samples = shape_samples(8, labels=True)
    source = make_source(write_corpus("imagefolder", str(tmp_path / "train"), samples))
    classes = sorted({f"class{s['label']}" for s in samples})
    assert source.local.classes == tuple(classes)
    by_key = {s["key"]: s for s in samples}
    for i in range(len(source)):
        record = source[i]
        sample = by_key[os.path.splitext(os.path.basename(record["path"]))[0]]
        assert record["class"] == f"class{sample['label']}" and record["label"] == classes.index(record["class"])
        assert record["caption"] == sample["caption"] and record["image"] == sample["image"]


# ---------------------------------------------------------------------- refused before anything compiles


def test_an_empty_corpus_stops_with_one_line_before_compiling(capsys, tmp_path, no_compile):
    write_corpus("jsonl", str(tmp_path / "c"), [])
    line = train_error(capsys, tmp_path, f"{VQ},data=jsonl,corpus={tmp_path / 'c' / '*.jsonl'}")
    assert line == "error: config.data.train (jsonl) has no records (an empty corpus)"


def test_a_folder_as_pattern_and_a_pattern_matching_nothing_are_one_line(capsys, tmp_path, no_compile):
    line = train_error(capsys, tmp_path, f"{VQ},data=webdataset,corpus={tmp_path}")
    assert line.startswith(f"error: '{tmp_path}' is a folder; the webdataset shards option wants files")
    line = train_error(capsys, tmp_path, f"{VQ},data=parquet,corpus={tmp_path}/*.parquet")
    assert line.startswith(f"error: no parquet files match '{tmp_path}/*.parquet'")


def test_a_missing_required_field_names_it_and_the_fields_there(capsys, tmp_path, no_compile):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "a.jsonl").write_text(json.dumps({"imge": "x.png", "caption": "a"}) + "\n")
    line = train_error(capsys, tmp_path, f"{VQ},data=jsonl,corpus={tmp_path / 'c' / 'a.jsonl'}")
    assert "config.data.train (jsonl): the first 1 record(s)" in line
    assert "have no field 'image' (did you mean 'imge'?); VQTask reads image; the records have ['caption', 'imge']" \
        in line


def test_a_misspelt_llava_field_is_refused_naming_the_valid_ones(capsys, tmp_path, no_compile):
    samples = shape_samples(4)
    section = write_corpus("llava_json", str(tmp_path / "c"), samples)
    path = tmp_path / "c" / "data.json"
    data = json.loads(path.read_text())
    for r in data:
        r["imges"] = r.pop("image")
    path.write_text(json.dumps(data))
    line = train_error(capsys, tmp_path, "configs/llava/tiny.py:stage=1,steps=2,data=llava_json,"
                       f"corpus={section['json']},images={section['images']}")
    assert line == (f"error: {section['json']} record 0 has a field 'imges': did you mean 'image'? LLaVA records "
                    "have ['id', 'image', 'conversations']")


@pytest.mark.parametrize("content, reason", [(None, "no such file"), ("[{broken", "JSONDecodeError")])
def test_a_missing_or_unparseable_llava_json_is_one_line(capsys, tmp_path, no_compile, content, reason):
    path = tmp_path / "chat.json"
    if content is not None:
        path.write_text(content)
    line = train_error(capsys, tmp_path, f"configs/llava/tiny.py:stage=1,steps=2,data=llava_json,corpus={path}")
    assert line.startswith(f"error: cannot read LLaVA JSON '{path}': {reason}")


def test_the_llava15_command_without_json_is_one_line(capsys, tmp_path, no_compile):
    line = train_error(capsys, tmp_path, "configs/llava/llava15.py:stage=1")
    assert line == ("error: config.data.train.json is empty: pass --config.data.train.json=FILE "
                    "(and --config.data.train.images=DIR)")


def test_data_arg_needs_a_corpus_and_a_known_source(capsys, tmp_path):
    assert "needs corpus=PATH (the pattern of the webdataset source" in train_error(
        capsys, tmp_path, f"{VQ},data=webdataset")
    assert "data='tars' is not a corpus source; choose one of" in train_error(capsys, tmp_path, f"{VQ},data=tars,"
                                                                              "corpus=x")


def test_a_corpus_section_takes_dotted_overrides(tmp_path):
    config = configlib.apply_overrides(configlib.load_config_file(f"{VQ},data=webdataset,corpus=/d/*.tar"),
                                       ["data.train.caption_key=text", "data.eval.pattern=/held/*.tar"])
    assert config.data.train.caption_key == "text" and config.data.train.pattern == "/d/*.tar"
    assert config.data.eval.pattern == "/held/*.tar" and config.data.eval.name == "webdataset"
    with pytest.raises(configlib.ConfigError, match=r"unknown config field 'data\.train\.captionkey'"):
        configlib.apply_overrides(config, ["data.train.captionkey=x"])


# -------------------------------------------------------------------------------- skipped and counted


def test_mostly_bad_early_records_stop_within_the_first_hundred():
    counter = pipeline.SkipCounter(pipeline.StarvationLimits())
    for i in range(99):
        if i % 3:
            pipeline.skip(counter, "ImageDecodeError", f"a.tar sample '{i:04d}': cannot decode")
        else:
            counter.keep()
    with pytest.raises(pipeline.DataStarvedError,
                       match=r"67 of the first 100 records \(67%\) were skipped\. Reasons: ImageDecodeError x67 "
                             r"\(e\.g\. a\.tar sample '0001': cannot decode\)"):
        pipeline.skip(counter, "ImageDecodeError", "a.tar sample '0099': cannot decode")
    fine = pipeline.SkipCounter(pipeline.StarvationLimits())
    for i in range(300):   # a third bad: trains on
        pipeline.skip(fine, "ImageDecodeError") if i % 3 == 0 else fine.keep()


def test_skips_name_the_shard_and_key_and_captionless_records_are_counted(tmp_path, caplog):
    from mmjax.train.tasks.llava import LlavaTask

    samples = shape_samples(6, corrupt=(1,))
    del samples[2]["caption"]
    section = write_corpus("webdataset", str(tmp_path / "w"), samples, shards=1)
    config = configlib.load_config_file(f"configs/llava/tiny.py:stage=1,data=webdataset,corpus={section['pattern']}")
    task = LlavaTask(config)
    counter = pipeline.SkipCounter()
    with caplog.at_level(logging.WARNING):
        batches = list(pipeline.eval_batches(task.source("train"), task.preprocess, global_batch_size=8,
                                             counter=counter))
    assert int(sum(b["valid"].sum() for b in batches)) == 4
    assert counter.counts == {"ImageDecodeError": 1, "NoCaptionError": 1}
    shard = section["pattern"].replace("*", "00000")
    assert f"ImageDecodeError: {shard} sample '0000001'" in caplog.text
    assert f"NoCaptionError: {shard} sample '0000002': the record has no caption" in caplog.text
    assert "<bytes>" not in caplog.text and np.bytes_ is not None
    assert CORRUPT_JPEG not in caplog.text.encode()


def test_the_console_train_line_carries_the_per_reason_counts(tmp_path, caplog):
    from mmjax.train.metrics_writer import MetricsWriter

    writer = MetricsWriter(str(tmp_path), 10, tensorboard=False)
    with caplog.at_level(logging.INFO):
        writer.write(5, "train", {"loss": 1.0, "skipped_records": 3, "skipped/ImageDecodeError": 2,
                                  "skipped/NoCaptionError": 1})
    writer.close()
    assert "step 5/10, loss 1, skipped 3 records (ImageDecodeError=2 NoCaptionError=1)" in caplog.text


def test_a_corpus_of_only_bad_images_is_one_line_naming_a_record(capsys, tmp_path, no_compile):
    samples = shape_samples(5, corrupt=tuple(range(5)))
    section = write_corpus("webdataset", str(tmp_path / "w"), samples, shards=1)
    line = train_error(capsys, tmp_path, f"{VQ},data=webdataset,corpus={section['pattern']}")
    shard = section["pattern"].replace("*", "00000")
    assert line.startswith(f"error: none of the first 5 records of config.data.train can be used, e.g. {shard} "
                           f"sample '0000000': ImageDecodeError: cannot decode image \"{shard} sample '0000000'\"")


def test_corpus_sections_list_every_option_of_their_source():
    """`corpus_section` holds each source's options at their defaults: the same names the source accepts."""
    import importlib

    from mmjax.data import sources, webdataset

    for kind in ("webdataset", "parquet", "imagefolder", "jsonl"):
        assert set(sources.CORPUS_OPTIONS[kind]) == set(importlib.import_module(f"mmjax.data.{kind}").OPTIONS)
    assert sources.CORPUS_OPTIONS["webdataset"]["image_exts"] == webdataset.IMAGE_EXTS
    for kind in sources.CORPUS_OPTIONS:   # each builds a section that opens (here: refuses a missing corpus)
        with pytest.raises(DataError):
            make_source(sources.corpus_section(kind, "/nonexistent/x"))
