"""Show-o's recipe where it used to differ from the reference (issue 20), each on small inputs: caption prompts,
T2I recaptions, RefinedWeb windows, ImageNet label mappings, per-device loss normalisation, the CLIP-ViT stage-1
init, MMU sampling settings and `python -m mmjax.sample`'s defaults. And bad records on both data paths (issue 18):
each costs only itself, is named and counted as a record."""

from __future__ import annotations

import io
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from PIL import Image

from mmjax import configlib
from mmjax import sample as sample_cli
from mmjax.data import pipeline
from mmjax.data.text import make_tokenizer
from mmjax.models.showo_layout import ShowoVocab
from mmjax.train.tasks import showo_batches as sb
from mmjax.train.tasks import showo_eval
from mmjax.train.tasks import showo_examples as se
from mmjax.train.tasks.showo_loss import grouped, ntp_sums, part_loss

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOK = make_tokenizer("byte", special_tokens=["<|endoftext|>"], eos="<|endoftext|>")
VOCAB = ShowoVocab(text_vocab_size=TOK.vocab_size, codebook_size=8, bos_id=TOK.bos_id, eos_id=TOK.eos_id)
IMAGE = np.zeros((16, 16, 3), np.uint8)


def builder(parts: dict, budget: int = 96) -> se.ExampleBuilder:
    return se.ExampleBuilder(parts, TOK, VOCAB, budget, budget + 19, 16, budget)


def text(ids, n) -> str:
    return TOK.decode([int(t) for t in ids[:n] if int(t) not in (VOCAB.bos_id, VOCAB.eos_id)])


def t2i_text(example: dict) -> str:
    return text(example["text"], int(example["text_len"]))


def test_caption_rows_carry_a_random_question_prompt_all_supervised(tmp_path):
    questions = ["Describe the image.", "What is shown here?"]
    path = tmp_path / "questions.json"
    path.write_text(json.dumps(questions))
    b = builder({"mmu": {"format": "caption", "text_field": "caption", "questions": str(path)}})
    record = {"image": IMAGE, "caption": "a dog on grass"}
    seen = set()
    for seed in range(20):
        ex = b.mmu(record, np.random.default_rng(seed))
        n = int(ex["conv_len"])
        assert ex["conv"][0] == VOCAB.bos_id and ex["conv"][n - 1] == VOCAB.eos_id and ex["target"][:n].all()
        seen.add(text(ex["conv"], n))
    # the reference: 'USER: \n' + q + ' ASSISTANT:' + ' ' + caption, between bos and eos
    assert seen == {f"USER: \n{q} ASSISTANT: a dog on grass" for q in questions}
    plain = builder({"mmu": {"format": "caption", "text_field": "caption"}}).mmu(record)
    assert text(plain["conv"], int(plain["conv_len"])) == "a dog on grass"


def test_pretraining_configs_take_the_reference_side():
    for stage in (1, 2, 3):
        c = configlib.load_config_file(os.path.join(REPO, f"configs/showo/pretrain.py:stage={stage}"))
        assert c.data.train.mmu.questions and c.data.train.lm.window == 8000
        assert c.showo.loss_normalization == "device"
        assert bool(c.data.train.t2i.get("recaption", False)) == (stage > 1)
    clip1 = configlib.load_config_file(os.path.join(REPO, "configs/showo/instruct.py:stage=1,res=256,clip=1"))
    assert clip1.init.run == "/runs/showo_s3_256" and not clip1.init.lm  # Show-o under the fresh projector
    assert clip1.optim.frozen == (r"^lm/",)


def test_t2i_recaptions_first_sentence_half_the_time_and_prefixes_stripped():
    b = builder({"t2i": {"text_field": "caption", "recaption": True}})
    record = {"image": IMAGE, "caption": "The image features a red car. It is parked."}
    texts = [t2i_text(b.t2i(record, np.random.default_rng(s))) for s in range(40)]
    assert set(texts) == {"a red car", "a red car. It is parked."}
    assert 10 < texts.count("a red car") < 30
    assert t2i_text(b.t2i(record)) == "a red car. It is parked."   # no generator: the whole caption
    journey = builder({"t2i": {"text_field": "caption", "recaption": True}})   # lists: no recaption treatment
    many = {"image": IMAGE, "caption": ["one. a", "two. b", "three. c"]}
    assert {t2i_text(journey.t2i(many, np.random.default_rng(s))) for s in range(30)} == set(many["caption"])


def test_refinedweb_window_removes_newlines_and_takes_a_window():
    doc = "ab\ncd" * 10   # 40 characters without newlines
    out = {se.text_window(doc, 8, np.random.default_rng(s)) for s in range(200)}
    flat = doc.replace("\n", "")
    assert out == {flat[i:i + 8] for i in range(len(flat) - 8)}   # randint(0, len - w - 1), both ends included
    assert se.text_window("short\ntext", 8000, None) == "shorttext"
    b = builder({"lm": {"text_field": "caption", "window": 8}})
    ex = b.lm({"caption": doc}, np.random.default_rng(0))
    assert int(ex["text_len"]) == 8 and "\n" not in text(ex["text"], 8)


def test_imagenet_label_mapping_and_plain_class_names(tmp_path):
    mapping = tmp_path / "imagenet_label_mapping"
    mapping.write_text("0: tench\n1: goldfish\n2: great white shark, white shark\n")
    plain = tmp_path / "names.txt"
    plain.write_text("tench, Tinca tinca\ngoldfish\n")
    assert se.read_class_names(str(mapping)) == {0: "tench", 1: "goldfish", 2: "great white shark, white shark"}
    assert se.read_class_names(str(plain)) == {0: "tench", 1: "goldfish"}
    b = builder({"t2i": {"text_field": "caption", "class_names": str(mapping)}})
    assert t2i_text(b.t2i({"image": IMAGE, "label": 1})) == "goldfish"


def test_image_only_human_turn_is_rendered_bare_and_the_sample_masked():
    b = builder({"mmu": {"format": "conversation"}})
    record = {"image": IMAGE, "conversations": [{"from": "human", "value": "<image>"},
                                                {"from": "gpt", "value": "A dog."}]}
    ex = b.mmu(record)
    n = int(ex["conv_len"])
    assert text(ex["conv"], n) == "USER:ASSISTANT: A dog."   # the reference's " USER:ASSISTANT: ...".strip()
    assert not ex["target"].any()                             # preprocess_v0 masks the whole sample


def test_device_loss_normalisation_weighs_each_device_equally():
    nll, count = jnp.asarray([2.0, 30.0]), jnp.asarray([1.0, 10.0])
    assert float(part_loss(nll, count, "device")) == pytest.approx((2.0 + 3.0) / 2)
    assert float(part_loss(nll, count, "global")) == pytest.approx(32.0 / 11.0)
    logits = jax.random.normal(jax.random.key(0), (4, 6, 11))
    labels = jnp.asarray([[1, 2, 3, 4, 5, 6], [1, 2, -100, -100, -100, -100]] * 2)
    per_group = grouped(ntp_sums, 2)(logits, labels, "lm", 0.0)
    whole = ntp_sums(logits, labels, "lm")
    assert per_group["lm_count"].shape == (2,)
    np.testing.assert_allclose(per_group["lm_nll"].sum(), whole["lm_nll"], rtol=1e-6)
    by_hand = [ntp_sums(logits[g * 2:(g + 1) * 2], labels[g * 2:(g + 1) * 2], "lm") for g in range(2)]
    np.testing.assert_allclose(per_group["lm_nll"], [s["lm_nll"] for s in by_hand], rtol=1e-6)


def test_mmu_answers_use_top_k_sampling_settings(monkeypatch):
    seen = {}

    def fake_generate(model, params, inputs, qids, qlen, **kw):
        seen.update(kw)
        return type("Out", (), {"tokens": jnp.zeros((inputs.shape[0], 2), jnp.int32) + VOCAB.eos_id,
                                "lengths": jnp.ones((inputs.shape[0],), jnp.int32)})()

    monkeypatch.setattr(showo_eval.showo_model, "mmu_generate", fake_generate)
    task = type("Task", (), dict(
        clip=None, vocab=VOCAB, text=TOK, model=None,
        config=ml_collections.ConfigDict(dict(eval=dict(batch=2, max_new_tokens=2, seed=0, mmu_top_k=1,
                                                        mmu_temperature=1.0))),
        text_batch=lambda self, texts, width: (np.zeros((len(texts), width), np.int32),
                                               np.full((len(texts),), width, np.int32))))()
    showo_eval.answer(task, None, None, jnp.zeros((1, 4), jnp.int32), ["q?"])
    assert (seen["top_k"], seen["temperature"]) == (1, 1.0)
    showo_eval.answer(task, None, None, jnp.zeros((1, 4), jnp.int32), ["q?"], top_k=0, temperature=0.0)
    assert (seen["top_k"], seen["temperature"]) == (0, 0.0)
    from mmjax.models.generate import sample_logits  # top_k = 1 at temperature 1 samples among tied maxima
    tied = jnp.asarray([[0.0, 5.0, 5.0, 1.0]] * 64)
    picks = set(np.asarray(sample_logits(tied, jax.random.key(1), 1.0, 1)).tolist())
    assert picks == {1, 2}


def test_sample_defaults_are_the_reference_demos(monkeypatch, tmp_path):
    args = sample_cli.parse(["--workdir", "w", "--out", str(tmp_path), "--prompt", "a cat"])
    assert (args.generation_temperature, args.logit_temperature, args.top_k, args.temperature) == (1.0, 1.0, 1, 1.0)
    assert sample_cli.DEMO_SETTINGS == {"t2i": (50, 5.0), "inpaint": (16, 1.75), "extrapolate": (16, 1.75)}
    captured = {}

    class Task:   # the run's eval settings (12 steps, guidance 0) must not be used
        s, n, vocab, model = 4, 4, VOCAB, None
        config = ml_collections.ConfigDict(dict(eval=dict(t2i_steps=12, guidance_scale=0.0)))

        def text_batch(self, texts, width):
            return np.zeros((len(texts), width), np.int32), np.ones((len(texts),), np.int32)

    monkeypatch.setattr(sample_cli, "load_run", lambda workdir: (Task(), None, None))
    monkeypatch.setattr(sample_cli, "_decode_and_save", lambda *a: [])
    from mmjax.models import showo as showo_model
    monkeypatch.setattr(showo_model, "t2i_generate",
                        lambda *a, **kw: captured.update(kw) or type("O", (), {"tokens": None})())
    sample_cli.run(args)
    assert (captured["num_steps"], captured["guidance_scale"]) == (50, 5.0)


# ------------------------------------------------------------------------------------ bad records (issue 18)
def jpeg() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((16, 16, 3), 200, np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


GOOD = {"image": jpeg(), "caption": "a grey square", "key": "good"}
BAD = {
    "UnicodeCaption": {"image": jpeg(), "caption": b"\xff\xfe caption", "key": "latin"},
    "NullImage": {"image": None, "caption": "x", "key": "null"},
    "UrlImage": {"image": "http://example.com/a.jpg", "caption": "x", "key": "url"},
    "NoCaption": {"image": jpeg(), "key": "nocap"},
    "TextOnly": {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}], "key": "txt"},
    "Corrupt": {"image": b"\xff\xd8\xff\xe0 truncated", "caption": "x", "key": "corrupt"},
}


def bad_corpus() -> list:
    records = [dict(GOOD, key=f"good{i}") for i in range(10)]
    for i, record in enumerate(BAD.values()):
        records.insert(2 * i + 1, record)
    return [*records, None]   # and one the source could not read


def batches(monkeypatch, records: list, encoders) -> sb.ShowoBatches:
    monkeypatch.setattr(sb, "open_source", lambda cfg: records)
    part = lambda **kw: ml_collections.ConfigDict(dict(source=dict(name="list"), **kw))
    parts = ml_collections.ConfigDict(dict(t2i=part(text_field="caption"),
                                           mmu=part(format="caption", text_field="caption")))
    b = se.ExampleBuilder(parts, TOK, VOCAB, 32, 32 + 4 + 3, 16, 32)
    return sb.ShowoBatches(parts, {"t2i": 3, "mmu": 2}, b, encoders)


def test_pretokenized_path_skips_each_bad_record_and_names_it(monkeypatch):
    encoders = {"image": lambda px: np.zeros((len(px), 2, 2), np.int32)}
    data = batches(monkeypatch, bad_corpus(), encoders)
    assert data.size("t2i") == data.size("mmu") == 10         # only the good records, for both parts
    reasons = [r for r, _ in data.pending]
    assert len(reasons) == 2 * 7                               # 7 bad records, each for both parts
    assert reasons.count("undecodable") == 2
    details = " ".join(d for _, d in data.pending)
    for key in ("latin", "null", "url", "nocap", "txt", "corrupt"):
        assert repr(key) in details                            # every skip names its record
    first, counts = data.counted_bundle(0, np.random.default_rng(0))
    assert first["t2i_codes"].shape == (3, 4)
    assert counts["kept"] == 5 and len(counts["skipped"]) == 14
    assert data.counted_bundle(1, np.random.default_rng(1))[1]["skipped"] == []   # reported once


def test_raw_path_replaces_bad_draws_and_the_pipeline_counts_records(monkeypatch):
    data = batches(monkeypatch, bad_corpus(), None)
    counter = pipeline.SkipCounter()
    def preprocess(record, rng):   # as ShowoTask.preprocess: the arrays plus the bundle's record counts
        arrays, counts = data.counted_bundle(record["index"], rng)
        return {**arrays, pipeline.RECORDS_KEY: counts}

    ds = pipeline.train_dataset(sb.BundleSource(40), preprocess, global_batch_size=1, seed=0, counter=counter)
    it = iter(ds)
    for _ in range(30):
        batch = next(it)
        assert batch["t2i_image"].shape == (1, 3, 16, 16, 3) and pipeline.RECORDS_KEY not in batch
    skipped = sum(counter.counts.values())
    assert skipped > 0 and "DrawsExhausted" not in counter.counts   # no bundle was lost
    assert set(counter.counts) <= {"ValueError", "KeyError", "ImageDecodeError", "undecodable"}
    assert {"ValueError", "KeyError", "ImageDecodeError"} <= set(counter.counts)


def test_tiny_config_switches_to_a_corpus_with_one_argument(tmp_path):
    load = lambda arg: configlib.load_config_file(os.path.join(REPO, f"configs/showo/tiny.py:{arg}"))
    c = load("corpus=/data/pets/*.tar")
    for split in ("train", "eval"):
        assert {p: dict(c.data[split][p].source) for p in ("t2i", "lm", "mmu")} == {
            p: {"name": "webdataset", "pattern": "/data/pets/*.tar"} for p in ("t2i", "lm", "mmu")}
    assert c.data.train.mmu.format == "caption" and (c.eval.num_t2i, c.eval.num_mmu) == (0, 0)
    assert dict(load(f"corpus={tmp_path}").data.train.t2i.source) == {"name": "imagefolder", "root": str(tmp_path)}
    with pytest.raises(configlib.ConfigError, match=r"corpus='/data/x\.zip'"):
        load("corpus=/data/x.zip")
