"""Tokenizers: byte-level round trips, special tokens, and loading tiny SentencePiece / HF models trained
here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mmjax.data.text import (
    DEFAULT_SPECIAL_TOKENS,
    ByteTokenizer,
    HFTokenizer,
    SentencePieceTokenizer,
    Tokenizer,
    make_tokenizer,
)

SENTENCES = [
    "the cat sat on the mat.",
    "a dog runs in the park!",
    "What is in the image? A red bus.",
    "USER: hello ASSISTANT: hi there",
    "The quick brown fox jumps over the lazy dog.",
] * 4


@pytest.fixture(scope="module")
def sp_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    spm = pytest.importorskip("sentencepiece")
    path = tmp_path_factory.mktemp("sp") / "tiny.model"
    with path.open("wb") as f:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(SENTENCES), model_writer=f, vocab_size=400, model_type="bpe",
            character_coverage=1.0, byte_fallback=True, hard_vocab_limit=False,
            unk_id=0, bos_id=1, eos_id=2, pad_id=3, minloglevel=2)
    return path


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A byte-level BPE like GPT-2's / Phi-1.5's, with <|endoftext|> as bos and eos in
    tokenizer_config.json."""
    tk = pytest.importorskip("tokenizers")
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = tk.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(SENTENCES, trainer)
    d = tmp_path_factory.mktemp("hf")
    tok.save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<|endoftext|>", "eos_token": {"content": "<|endoftext|>", "special": True}}))
    return d


def test_byte_round_trip_unicode() -> None:
    tok = make_tokenizer("byte")
    assert isinstance(tok, ByteTokenizer) and isinstance(tok, Tokenizer)
    for text in ["", "hello world", "héllo wörld — 猫 🐈\n\ttabs", "<not special>"]:
        ids = tok.encode(text)
        assert all(0 <= i < 256 for i in ids)
        assert ids == list(text.encode("utf-8"))
        assert tok.decode(ids) == text


def test_byte_specials_distinct_beyond_byte_range() -> None:
    tok = make_tokenizer("byte", special_tokens=["</s>", "<|im_end|>", "<image>"])
    names = [*DEFAULT_SPECIAL_TOKENS, "</s>", "<|im_end|>"]
    ids = [tok.token_to_id(t) for t in names]
    assert len(set(ids)) == len(names) and min(ids) == 256 and tok.vocab_size == 256 + len(names)
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (256, 257, 258)
    assert tok.token_to_id("<image>") == 259
    # special strings in text are parsed into their single id; decode renders them back (or skips them)
    ids = tok.encode("a<image>b</s>")
    assert ids == [ord("a"), 259, ord("b"), tok.token_to_id("</s>")]
    assert tok.decode(ids) == "a<image>b</s>"
    assert tok.decode(ids, skip_special_tokens=True) == "ab"
    # adding returns existing ids for known tokens and appends new ones
    assert tok.add_special_tokens(["<eos>", "<new>"]) == [258, tok.vocab_size - 1]
    with pytest.raises(KeyError, match="<missing>"):
        tok.token_to_id("<missing>")
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([tok.vocab_size])


def test_byte_custom_roles() -> None:
    tok = make_tokenizer("byte", special_tokens=["</s>"], eos="</s>")
    assert tok.eos_id == tok.token_to_id("</s>") and tok.bos_id == tok.token_to_id("<bos>")


def test_sentencepiece_load_and_specials(sp_path: Path) -> None:
    tok = make_tokenizer("sentencepiece", sp_path, special_tokens=["<image>"])
    assert isinstance(tok, SentencePieceTokenizer)
    base = 400
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (1, 2, 3)
    assert tok.token_to_id("<image>") == base and tok.vocab_size == base + 1
    text = "the quick brown fox sat on the mat."
    assert tok.decode(tok.encode(text)) == text
    # unseen characters go through byte fallback and come back
    assert tok.decode(tok.encode("héllo 猫")) == "héllo 猫"
    # control pieces are parsed from text like HF's LlamaTokenizer does: "</s>" is eos, "<image>" the added id
    ids = tok.encode("the cat<image>the dog</s>")
    assert ids.count(base) == 1 and ids[-1] == 2
    assert tok.decode(ids) == "the cat<image>the dog</s>"
    assert tok.add_special_tokens(["</s>", "<x>"]) == [2, base + 1]


def test_hf_tokenizer_json_load_and_specials(hf_dir: Path) -> None:
    tok = make_tokenizer("hf", hf_dir, special_tokens=["<|im_start|>", "<|im_end|>"])  # a directory works too
    assert isinstance(tok, HFTokenizer)
    eot = tok.token_to_id("<|endoftext|>")
    assert tok.bos_id == tok.eos_id == eot and tok.pad_id is None  # from tokenizer_config.json
    start, end = tok.token_to_id("<|im_start|>"), tok.token_to_id("<|im_end|>")
    assert len({eot, start, end}) == 3 and tok.vocab_size == max(eot, start, end) + 1
    text = "What is in the image? 猫 héllo\n  spaces"
    assert tok.decode(tok.encode(text)) == text
    ids = tok.encode("<|im_start|>user\nhi<|im_end|>")
    assert ids[0] == start and ids[-1] == end
    assert tok.decode(ids, skip_special_tokens=True) == "user\nhi"
    file_tok = make_tokenizer("hf", hf_dir / "tokenizer.json", pad="<|endoftext|>")
    assert file_tok.pad_id == eot and not file_tok.has_token("<|im_end|>")


def test_missing_and_bad_files_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope.model"
    with pytest.raises(FileNotFoundError, match=r"nope\.model"):
        make_tokenizer("sentencepiece", missing)
    with pytest.raises(FileNotFoundError, match=r"tokenizer\.json"):
        make_tokenizer("hf", tmp_path)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match=r"bad\.json"):
        make_tokenizer("hf", bad)
    with pytest.raises(ValueError, match=r"bad\.json"):
        make_tokenizer("sentencepiece", bad)
    with pytest.raises(ValueError, match="needs a path"):
        make_tokenizer("hf")
    with pytest.raises(ValueError, match="unknown tokenizer kind"):
        make_tokenizer("gpt2")


@pytest.mark.parametrize("kind", ["byte", "sentencepiece", "hf"])
def test_offsets_say_where_each_token_starts(kind: str, sp_path: Path, hf_dir: Path) -> None:
    path = {"byte": None, "sentencepiece": sp_path, "hf": hf_dir}[kind]
    tok = make_tokenizer(kind, path, special_tokens=["<image>", "</s>"])
    text = "héllo 猫, the cat<image>the  dog</s> 12\nend"
    ids, starts = tok.encode_with_offsets(text)
    assert ids == tok.encode(text) and len(starts) == len(ids)
    assert starts == sorted(starts) and all(0 <= s < len(text) for s in starts)
    for i, s, k in zip(ids, starts, range(len(ids))):
        piece = tok.decode([i])
        if piece in ("<image>", "</s>"):
            assert text.startswith(piece, s)
        elif piece.strip() and "\ufffd" not in piece:  # a whole-character token: its text is found where it starts
            assert text[s:].lstrip(" ").startswith(piece.strip()), (k, piece, text[s:])
    if kind == "byte":
        assert starts[:3] == [0, 1, 1]  # "é" is two bytes of character 1
