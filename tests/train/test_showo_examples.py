"""Show-o MMU text formats on small records: LLaVA-Pretrain in the CLIP-ViT variant's `plain` format, LLaVA
conversations after Show-o's `preprocess_multimodal` (placeholder and its newline gone), and the two variants'
question formats."""

from __future__ import annotations

import numpy as np
import pytest

from mmjax.data.text import make_tokenizer
from mmjax.models.showo_layout import ShowoVocab
from mmjax.train.tasks.showo_examples import ExampleBuilder, strip_image_placeholders

TOK = make_tokenizer("byte", special_tokens=["<|endoftext|>"], eos="<|endoftext|>")
VOCAB = ShowoVocab(text_vocab_size=TOK.vocab_size, codebook_size=8, bos_id=TOK.bos_id, eos_id=TOK.eos_id)
IMAGE = np.zeros((16, 16, 3), np.uint8)
PRETRAIN = {"id": "000", "image": IMAGE, "conversations": [
    {"from": "human", "value": "<image>\nWrite a terse but informative summary of the picture."},
    {"from": "gpt", "value": "a dog running on the grass"}]}


def builder(fmt: str, budget: int = 64, clip=None) -> ExampleBuilder:
    return ExampleBuilder({"mmu": {"format": fmt, "text_field": "caption"}}, TOK, VOCAB, budget, budget + 19, 16,
                          budget, clip)


def text_of(example: dict, supervised_only: bool = False) -> tuple[list[int], str]:
    n = int(example["conv_len"])
    ids = [int(t) for t, s in zip(example["conv"][:n], example["target"][:n]) if s or not supervised_only]
    return ids, TOK.decode([t for t in ids if t not in (VOCAB.bos_id, VOCAB.eos_id)])


def reference_preprocess_multimodal(value: str) -> str:
    """showlab/Show-o llava/*_data.py `preprocess_multimodal`, one sentence, transcribed step by step."""
    if "<image>" in value:
        value = value.replace("<image>", "").strip()
        value = ("<image>" + "\n" + value).strip()
        value = value.replace("<image>", "").strip()
    return value


def test_plain_drops_the_human_turn_and_supervises_caption_newline_eos():
    ex = builder("plain").mmu(PRETRAIN)
    ids, _ = text_of(ex)
    assert ids == [*TOK.encode("a dog running on the grass\n"), VOCAB.eos_id]  # no bos, no instruction
    assert ex["target"][: len(ids)].all() and not ex["target"][len(ids):].any()
    assert ex["image"].shape == (16, 16, 3)
    short = builder("plain", budget=10).mmu(PRETRAIN)  # cut at the budget, eos lost, as the reference's collate
    assert int(short["conv_len"]) == 10 and text_of(short)[1] == "a dog runn"
    caption = builder("plain").mmu({"image": IMAGE, "caption": "a red circle"})  # shapes: the caption is the text
    assert text_of(caption)[0] == [*TOK.encode("a red circle\n"), VOCAB.eos_id]


def test_plain_refuses_multi_turn_records():
    record = dict(PRETRAIN, conversations=PRETRAIN["conversations"] * 2)
    with pytest.raises(ValueError, match="has 4 turns"):
        builder("plain").mmu(record)


@pytest.mark.parametrize("value", ["<image>\nWhat is this?", "What is this?\n<image>", "What is <image> this?",
                                   "  <image>\n\nTwo lines\nhere ", "No image here"])
def test_placeholders_are_stripped_as_the_reference_does(value):
    conv = [{"from": "human", "value": value}, {"from": "gpt", "value": "<image> a"}]
    out = strip_image_placeholders(conv)
    assert [t["value"] for t in out] == [reference_preprocess_multimodal(value), "a"]
    assert conv[0]["value"] == value  # the record is not modified


def test_conversation_has_no_placeholder_newline_and_supervises_only_answers():
    record = {"image": IMAGE, "conversations": [
        {"from": "human", "value": "<image>\nWhat is on the grass?"}, {"from": "gpt", "value": "A dog."},
        {"from": "human", "value": "What colour?"}, {"from": "gpt", "value": "Brown."}]}
    ex = builder("conversation", budget=96).mmu(record)
    ids, text = text_of(ex)
    assert text == "USER: What is on the grass? ASSISTANT: A dog.USER: What colour? ASSISTANT: Brown."
    assert ids.count(VOCAB.eos_id) == 2
    assert text_of(ex, supervised_only=True)[1] == " A dog. Brown."


def test_question_formats_of_the_two_variants():
    record = {"image": IMAGE, "question": "What shape is it?", "answer": "circle"}
    discrete = builder("qa").mmu(record)
    ids, text = text_of(discrete)
    assert ids[0] == VOCAB.bos_id and text == "USER: \nWhat shape is it? ASSISTANT: circle"
    assert text_of(discrete, supervised_only=True)[1] == " circle"

    class Clip:  # a stand-in tower: only `pixels` is used to build examples
        def pixels(self, image):
            return np.full((8, 8, 3), 0.5, np.float32)

    clip = builder("qa", clip=Clip()).mmu(record)
    ids, text = text_of(clip)
    assert ids[0] != VOCAB.bos_id and text == "USER: What shape is it? ASSISTANT: circle"
    assert "image" not in clip and clip["clip_image"].shape == (8, 8, 3)
