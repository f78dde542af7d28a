"""The ids of a tokenized conversation are the tokenization of the whole rendered conversation, and the labels
are exactly what the reference supervises, for every template and every tokenizer kind.

The tokenizers are the kinds real runs use, built here: a SentencePiece model trained with LLaMA's options
(whitespace kept, dummy prefix, byte fallback, split digits), the byte-level tokenizer, and a GPT-2-like
byte-level BPE `tokenizer.json` (with Qwen2's convention of no bos). The expected labels are computed without
the code under test: each token's position in the text comes from decoding the ids, the supervised character
spans from searching the rendered string for the reference's supervised strings.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from mmjax.data.conversation import IGNORE_INDEX, TEMPLATES, render_conversation, tokenize_conversation
from mmjax.data.text import Tokenizer, make_tokenizer

SPECIALS = ["<image>", "</s>", "<|im_start|>", "<|im_end|>", "<|endoftext|>"]
CONVERSATIONS = [
    [{"from": "human", "value": "<image>\nWhat is on the table  (item 12)?"},
     {"from": "gpt", "value": "A red cup, ünd 猫 number 345."},
     {"from": "human", "value": "And its colour?"},
     {"from": "gpt", "value": "Red.\nMostly."}],
    [{"from": "human", "value": "Compare <image> and <image>: which is 2x bigger?"},
     {"from": "gpt", "value": "The left one is bigger."}],
]
TEMPLATE_NAMES = ["vicuna_v1", "llava_v1", "plain", "phi1.5", "chatml"]


def _supervised_strings(name: str, answer: str) -> str:
    """What the reference supervises of one assistant turn, as text."""
    return {"vicuna_v1": f" {answer}</s>", "llava_v1": f" {answer}</s>", "phi1.5": f" {answer}<|endoftext|>",
            "plain": f"{answer}\n", "chatml": f"<|im_start|>assistant\n{answer}<|im_end|>\n"}[name]


def _corpus() -> list[str]:
    return [render_conversation(c, name) for c in CONVERSATIONS for name in TEMPLATE_NAMES] * 4


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Tokenizer]:
    spm = pytest.importorskip("sentencepiece")
    tk = pytest.importorskip("tokenizers")
    from tokenizers import decoders, models, pre_tokenizers, trainers

    d = tmp_path_factory.mktemp("tok")
    with (d / "llama_like.model").open("wb") as f:  # LLaMA's tokenizer options, at a tiny vocabulary
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(_corpus()), model_writer=f, vocab_size=600, model_type="bpe",
            add_dummy_prefix=True, remove_extra_whitespaces=False, byte_fallback=True, split_digits=True,
            allow_whitespace_only_pieces=True, normalization_rule_name="identity", character_coverage=1.0,
            unk_id=0, bos_id=1, eos_id=2, pad_id=-1, hard_vocab_limit=False, minloglevel=2)
    bpe = tk.Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(_corpus(), trainers.BpeTrainer(
        vocab_size=600, special_tokens=["<|endoftext|>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    bpe.save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(json.dumps({"bos_token": None, "eos_token": "<|endoftext|>"}))
    return {"sentencepiece": make_tokenizer("sentencepiece", d / "llama_like.model", special_tokens=SPECIALS),
            "byte": make_tokenizer("byte", special_tokens=SPECIALS),
            "hf": make_tokenizer("hf", d, special_tokens=SPECIALS)}


def _token_starts(tok: Tokenizer, ids: list[int], text: str) -> list[int]:
    """Where each token starts in `text`, from decoding growing prefixes of `ids` (a token inside a character,
    e.g. one byte of '猫', starts where that character does)."""
    starts = []
    for k in range(len(ids)):
        prefix = tok.decode(ids[:k])
        starts.append(len(prefix) if text.startswith(prefix) else starts[-1])
    return starts


def _spans(text: str, pieces: list[str]) -> list[tuple[int, int]]:
    spans, pos = [], 0
    for piece in pieces:
        start = text.index(piece, pos)
        spans.append((start, start + len(piece)))
        pos = start + len(piece)
    return spans


@pytest.mark.parametrize("kind", ["sentencepiece", "byte", "hf"])
@pytest.mark.parametrize("name", TEMPLATE_NAMES)
@pytest.mark.parametrize("conv_index", range(len(CONVERSATIONS)))
def test_ids_are_the_whole_text_and_labels_are_the_references(kind: str, name: str, conv_index: int,
                                                              tokenizers: dict[str, Tokenizer]) -> None:
    tok, t, conv = tokenizers[kind], TEMPLATES[name], CONVERSATIONS[conv_index]
    if name == "plain":  # preprocess_plain takes one (image, caption) pair
        conv = conv[:2]
    image_id = tok.token_to_id("<image>")
    out = tokenize_conversation(conv, name, tok, max_len=4096, image_token_id=image_id)
    text = render_conversation(conv, name)

    # ids: the tokenization of the whole text (images as the <image> id), bos after any front image
    whole = tok.encode(text)
    n_front = text.count("<image>") if t.image == "front" else 0
    bos = [tok.bos_id] if t.bos and tok.bos_id is not None else []
    assert out.input_ids.tolist() == whole[:n_front] + bos + whole[n_front:]

    # labels: tokens starting inside a supervised string of the text (+ preprocess_qwen's unmasked tokens)
    answers = [turn["value"] for turn in conv if turn["from"] == "gpt"]
    spans = _spans(text, [_supervised_strings(name, a) for a in answers])
    starts = [*_token_starts(tok, whole, text), len(text)]
    unmask = {ids[0] for s in t.unmask if len(ids := tok.encode(s)) == 1}
    supervised = [any(a <= s < b for a, b in spans) or i in unmask for i, s in zip(whole, starts)]
    expected = [i if sup else IGNORE_INDEX for i, sup in zip(whole, supervised)]
    assert out.labels.tolist() == expected[:n_front] + [IGNORE_INDEX] * len(bos) + expected[n_front:]
    assert out.num_supervised == sum(supervised)

    # with subword tokenizers (trained on these texts, so " A" is one piece) an answer's first supervised token
    # carries its first character: no whitespace-only token in front of it
    for (a, b), answer in zip(spans, answers):
        first = next(k for k, s in enumerate(starts) if a <= s < b)
        if t.supervise == "answer" and kind != "byte":
            assert answer[0] in text[starts[first]:starts[first + 1]], (kind, name, text[starts[first]:b])
    if not t.unmask:  # then each contiguous label run is exactly one answer and its end token
        runs = np.split(np.arange(len(whole)), np.flatnonzero(np.diff(supervised)) + 1)
        texts = [text[starts[r[0]]:starts[r[-1] + 1]] for r in runs if supervised[r[0]]]
        assert texts == [_supervised_strings(name, a) for a in answers]


def test_the_old_bug_is_visible_to_this_oracle(tokenizers: dict[str, Tokenizer]) -> None:
    """Tokenizing an answer on its own (the old turn-by-turn scheme) gives a LLaMA-like SentencePiece model a
    whitespace-only token in front of it, which the whole-text tokenization (and the check above) has not."""
    sp = tokenizers["sentencepiece"]
    space = sp.token_to_id("\u2581")
    assert sp.encode(" A red cup")[0] == space
    assert space not in sp.encode("ASSISTANT: A red cup")
