"""Conversation templates: reference format strings, labels, images, truncation, prompts (the invariant over
tokenizer kinds is in test_tokenization_invariant.py)."""

from __future__ import annotations

import numpy as np
import pytest

from mmjax.data.conversation import (
    IGNORE_INDEX,
    OPTION_LETTER_PROMPT,
    SHORT_ANSWER_PROMPT,
    TEMPLATES,
    ConversationError,
    EmptyConversationError,
    build_prompt,
    move_image_first,
    render_conversation,
    stop_token_ids,
    tokenize_conversation,
)
from mmjax.data.text import Tokenizer, make_tokenizer

SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
          "The assistant gives helpful, detailed, and polite answers to the user's questions.")
CONV = [
    {"from": "human", "value": "<image>\nWhat is on the table?"},
    {"from": "gpt", "value": "A red cup, ünd 猫."},
    {"from": "human", "value": "And its colour?"},
    {"from": "gpt", "value": "Red."},
]
ANSWERS = ["A red cup, ünd 猫.", "Red."]
# supervised text of each answer: answer_lead + answer + end token
SUPERVISED = {
    "vicuna_v1": [f" {a}</s>" for a in ANSWERS],
    "phi1.5": [f" {a}<|endoftext|>" for a in ANSWERS],
}


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return make_tokenizer("byte", special_tokens=["</s>", "<|im_start|>", "<|im_end|>", "<|endoftext|>"])


def spans(ids: np.ndarray, labels: np.ndarray) -> list[list[int]]:
    """Contiguous runs of supervised ids; also checks labels equal inputs wherever supervised."""
    sup = labels != IGNORE_INDEX
    assert np.array_equal(labels[sup], ids[sup])
    out: list[list[int]] = []
    for i in np.flatnonzero(sup):
        if out and sup[i - 1]:
            out[-1].append(int(ids[i]))
        else:
            out.append([int(ids[i])])
    return out


def test_reference_format_strings() -> None:
    vicuna = (f"{SYSTEM} USER: <image>\nWhat is on the table? ASSISTANT: A red cup, ünd 猫.</s>"
              "USER: And its colour? ASSISTANT: Red.</s>")
    assert render_conversation(CONV, "vicuna_v1") == vicuna
    chatml = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
              "<|im_start|>user\n<image>\nWhat is on the table?<|im_end|>\n"
              "<|im_start|>assistant\nA red cup, ünd 猫.<|im_end|>\n"
              "<|im_start|>user\nAnd its colour?<|im_end|>\n<|im_start|>assistant\nRed.<|im_end|>\n")
    assert render_conversation(CONV, "chatml") == chatml
    assert render_conversation(CONV, "phi1.5") == (
        "<image>USER: What is on the table? ASSISTANT: A red cup, ünd 猫.<|endoftext|>"
        "USER: And its colour? ASSISTANT: Red.<|endoftext|>")
    assert render_conversation(CONV[:2], "plain") == "<image>A red cup, ünd 猫.\n"
    # inference prompts end with the assistant prefix
    assert render_conversation(CONV[:3], "vicuna_v1", generation_prompt=True).endswith(
        "</s>USER: And its colour? ASSISTANT:")
    assert render_conversation(CONV[:1], "chatml", generation_prompt=True).endswith(
        "<|im_end|>\n<|im_start|>assistant\n")


@pytest.mark.parametrize("name", ["vicuna_v1", "phi1.5"])
def test_whole_string_ids_and_answer_labels(name: str, tok: Tokenizer) -> None:
    image_id = tok.token_to_id("<image>")
    out = tokenize_conversation(CONV, name, tok, max_len=1024, image_token_id=image_id)
    bos = [tok.bos_id] if TEMPLATES[name].bos else []
    assert out.input_ids.dtype == np.int32 and out.input_ids.shape == out.labels.shape
    assert out.input_ids.tolist() == bos + tok.encode(render_conversation(CONV, name))
    got = [tok.decode(s) for s in spans(out.input_ids, out.labels)]
    assert got == SUPERVISED[name]
    assert out.num_supervised == sum(len(tok.encode(s)) for s in SUPERVISED[name])
    assert out.num_images == 1 and not out.truncated and out.num_positions == len(out.input_ids)
    assert out.labels[out.input_ids == image_id].tolist() == [IGNORE_INDEX]


def test_chatml_supervises_what_preprocess_qwen_does(tok: Tokenizer) -> None:
    """LLaVA-NeXT's preprocess_qwen supervises each assistant turn whole (header, answer, <|im_end|>, newline)
    and unmasks every "\\n", <|im_start|> and <|im_end|> token, in the system and user turns too."""
    out = tokenize_conversation(CONV, "chatml", tok, max_len=1024, image_token_id=tok.token_to_id("<image>"))
    assert out.input_ids.tolist() == tok.encode(render_conversation(CONV, "chatml"))
    assistant = [f"<|im_start|>assistant\n{a}<|im_end|>\n" for a in ANSWERS]
    assert [tok.decode(s) for s in spans(out.input_ids, out.labels)] == [
        "<|im_start|>", "\n", "<|im_end|>\n<|im_start|>", "\n", "\n",  # system, user (after <image>: "\n")
        "<|im_end|>\n" + assistant[0] + "<|im_start|>", "\n", "<|im_end|>\n" + assistant[1]]


def test_plain_template(tok: Tokenizer) -> None:
    conv = [{"from": "human", "value": "Describe the image.\n<image>"}, {"from": "gpt", "value": "a cat"}]
    out = tokenize_conversation(conv, "plain", tok, 64, image_token_id=-200)
    assert out.input_ids.tolist() == [tok.bos_id, -200, *tok.encode("a cat\n")]
    assert out.labels.tolist() == [IGNORE_INDEX, IGNORE_INDEX, *tok.encode("a cat\n")]


def test_image_placeholders(tok: Tokenizer) -> None:
    conv = [{"from": "human", "value": "<image> left, <image> right?"}, {"from": "gpt", "value": "same"}]
    out = tokenize_conversation(conv, "vicuna_v1", tok, 512, image_token_id=-200)
    ids = out.input_ids.tolist()
    assert ids.count(-200) == 2 == out.num_images
    first = ids.index(-200)
    assert tok.decode(ids[1:first]).endswith("USER: ")
    assert tok.decode(ids[first + 1 : first + 8]) == " left, "
    # None drops placeholders: the caller lays the image out itself (Show-o's prefix)
    text_only = tokenize_conversation(conv, "vicuna_v1", tok, 512, image_token_id=None)
    assert -200 not in text_only.input_ids and text_only.num_images == 0
    assert len(text_only.input_ids) == len(ids) - 2
    # phi1.5 moves the image to the front, before anything else
    phi = tokenize_conversation(CONV, "phi1.5", tok, 512, image_token_id=-200).input_ids.tolist()
    assert phi[0] == -200 and tok.decode(phi[1:]).startswith("USER: What is")  # stripped, as Show-o does
    assert move_image_first([{"from": "human", "value": "What?\n<image>"}, CONV[1]]) == [
        {"from": "human", "value": "<image>\nWhat?"}, CONV[1]]
    # several images keep their places (LLaVA-NeXT): collapsing them would lose images
    two = [{"from": "human", "value": "A <image> and B <image>?"}, CONV[1]]
    assert move_image_first(two) == two


def test_truncation_and_zero_supervision(tok: Tokenizer) -> None:
    full = tokenize_conversation(CONV, "vicuna_v1", tok, 1024, image_token_id=-200)
    n = len(full.input_ids) - 3  # cuts into the last answer
    cut = tokenize_conversation(CONV, "vicuna_v1", tok, n, image_token_id=-200)
    assert cut.truncated and len(cut.input_ids) == n == cut.num_positions
    assert np.array_equal(cut.input_ids, full.input_ids[:n]) and np.array_equal(cut.labels, full.labels[:n])
    assert cut.num_supervised == full.num_supervised - 3
    # the first answer starts after the prompt: cutting before it leaves nothing to learn, and says so
    answer_start = int(np.flatnonzero(full.labels != IGNORE_INDEX)[0])
    none = tokenize_conversation(CONV, "vicuna_v1", tok, answer_start, image_token_id=-200)
    assert none.truncated and none.num_supervised == 0 and (none.labels == IGNORE_INDEX).all()
    # the image counts as image_token_len positions; one that does not fit whole is dropped with what follows
    img_at = full.input_ids.tolist().index(-200)
    fits = tokenize_conversation(CONV, "vicuna_v1", tok, 1024 + 575, image_token_id=-200, image_token_len=576)
    assert not fits.truncated and fits.num_positions == len(full.input_ids) + 575
    short = tokenize_conversation(CONV, "vicuna_v1", tok, img_at + 575, -200, image_token_len=576)
    assert short.truncated and short.num_images == 0 and len(short.input_ids) == img_at


def test_inference_prompt(tok: Tokenizer) -> None:
    prompt = build_prompt(CONV[:3], "vicuna_v1", tok, image_token_id=-200)
    train = tokenize_conversation(CONV, "vicuna_v1", tok, 1024, image_token_id=-200)
    # the prompt is exactly the training sequence up to the last answer
    assert np.array_equal(prompt, train.input_ids[: len(prompt)])
    assert train.labels[len(prompt) - 1] == IGNORE_INDEX and train.labels[len(prompt)] != IGNORE_INDEX
    # Show-o MMU inference: image prefix, bos, 'USER: ' + q + ' ASSISTANT:' (q stripped, as in training)
    q = f"What is this?\n{SHORT_ANSWER_PROMPT}"
    phi = build_prompt(f"<image>\n{q}", "phi1.5", tok, image_token_id=-200)
    assert phi.tolist() == [-200, tok.bos_id, *tok.encode("USER: " + q + " ASSISTANT:")]
    assert OPTION_LETTER_PROMPT.startswith("Answer with the option's letter")
    with pytest.raises(ConversationError, match="end with a human turn"):
        build_prompt(CONV, "chatml", tok, None)
    assert stop_token_ids("chatml", tok) == [tok.token_to_id("<|im_end|>"), tok.eos_id]
    assert stop_token_ids("plain", tok) == [ord("\n"), tok.eos_id]


def test_errors_name_the_problem(tok: Tokenizer) -> None:
    with pytest.raises(ValueError, match="'</s>' as a single token"):
        tokenize_conversation(CONV, "vicuna_v1", make_tokenizer("byte"), 64, None)
    with pytest.raises(ConversationError, match="turn 1: unknown role"):
        tokenize_conversation([CONV[0], {"from": "bot", "value": "x"}], "chatml", tok, 64, None)
    with pytest.raises(ConversationError, match="turn 2: turns must alternate"):
        tokenize_conversation([CONV[0], CONV[1], CONV[1]], "chatml", tok, 64, None)
    with pytest.raises(ConversationError, match="turn 0: 'value' must be a string"):
        tokenize_conversation([{"from": "human", "value": None}], "chatml", tok, 64, None)
    for empty in ([], [CONV[1]]):  # nothing, or only an assistant turn (dropped as a leading one)
        with pytest.raises(EmptyConversationError, match="no human turn"):
            tokenize_conversation(empty, "chatml", tok, 64, None)
    with pytest.raises(ValueError, match="unknown conversation template"):
        render_conversation(CONV, "llama3")
    # a leading assistant turn is dropped, as the reference does
    assert render_conversation([CONV[1], *CONV[:2]], "chatml") == render_conversation(CONV[:2], "chatml")


def test_empty_human_turn_renders_bare_and_masks_the_sample_as_the_references():
    from mmjax.data.conversation import IGNORE_INDEX, render_conversation, tokenize_conversation
    from mmjax.data.text import make_tokenizer

    tok = make_tokenizer("byte", special_tokens=["<|endoftext|>", "</s>"], eos="<|endoftext|>")
    conv = [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": "A dog."},
            {"from": "human", "value": "More?"}, {"from": "gpt", "value": "No."}]
    # Show-o: " " + "USER:" + "ASSISTANT: A dog.<|endoftext|>" ..., stripped (conv_phi_v0.get_prompt)
    assert render_conversation(conv, "phi1.5") == ("<image>USER:ASSISTANT: A dog.<|endoftext|>USER: More? "
                                                   "ASSISTANT: No.<|endoftext|>")
    out = tokenize_conversation(conv, "phi1.5", tok, 200, None)
    assert out.masked and out.num_supervised == 0 and (out.labels == IGNORE_INDEX).all()
    text_only = [{"from": "human", "value": ""}, {"from": "gpt", "value": "Hi."}]
    assert render_conversation(text_only, "vicuna_v1").endswith(" USER:ASSISTANT: Hi.</s>")
    assert tokenize_conversation(text_only, "vicuna_v1", tok, 400, None).masked
    normal = tokenize_conversation(conv[2:], "phi1.5", tok, 200, None)
    assert not normal.masked and normal.num_supervised > 0
