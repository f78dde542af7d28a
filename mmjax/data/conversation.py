"""Conversation templates and label masking for instruction tuning (LLaVA, Show-o MMU, Qwen2-based OneVision).

A conversation is the LLaVA JSON form: a list of `{"from": "human" | "gpt", "value": str}` turns, where human
turns may hold `<image>` placeholders. A template says how turns are rendered; `tokenize_conversation` turns a
conversation into `(input_ids, labels)`.

Ids are those of the references: the rendered text between images is tokenized in one piece (LLaVA's
`tokenizer_image_token` tokenizes the whole prompt, chunk by chunk between `<image>`s; LLaVA-NeXT's
`preprocess_qwen` turn by turn, which for chatml is the same thing because every turn starts and ends with a
special token). So `input_ids` equal the tokenization of the rendered conversation; a SentencePiece model that
keeps whitespace sees `ASSISTANT: a` as `:` `▁a`, never `:` `▁` `▁a`. Which ids are supervised is decided by
character offsets (`Tokenizer.encode_with_offsets`): a token is supervised when it starts inside a supervised
span of the text. The reference instead re-tokenizes pieces of the prompt and counts tokens; when the counts
disagree with the real tokenization it masks the whole sample, silently (its "tokenization mismatch"). Counting
by offsets cannot disagree with the ids, so that cannot happen here.

What is supervised follows each reference (see `Template.supervise` / `Template.unmask`): the answer and its
end token for `vicuna_v1` / `plain` / `phi1.5`; for `chatml` the whole assistant turn, header and trailing
newline included, plus every `\\n` / `<|im_start|>` / `<|im_end|>` token of the conversation. Everything else is
IGNORE_INDEX. Labels are NOT shifted: position i's label is input i; the loss shifts (logits[:, :-1] vs
labels[:, 1:]).

Each image placeholder becomes ONE `image_token_id` (the model expands it into the image features, which get
no labels). `image_token_len` counts how many positions that expansion will take, so `max_len` limits the real
length.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np

from mmjax.data.text import Tokenizer

IMAGE_PLACEHOLDER = "<image>"
IGNORE_INDEX = -100
VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                 "The assistant gives helpful, detailed, and polite answers to the user's questions.")
# LLaVA's `llava_v1` (LLaVA-1 era fine-tunes): vicuna_v1 with "human" for "user" in the system message.
LLAVA_V1_SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. "
                   "The assistant gives helpful, detailed, and polite answers to the human's questions.")
CHATML_SYSTEM = "You are a helpful assistant."
# LLaVA evaluation response-format prompts, appended to a question after a newline: f"{question}\n{PROMPT}".
SHORT_ANSWER_PROMPT = "Answer the question using a single word or phrase."
OPTION_LETTER_PROMPT = "Answer with the option's letter from the given choices directly."

_ROLES = {"human": True, "user": True, "gpt": False, "assistant": False}  # -> is_user
_TEXT, _ANSWER, _IMAGE, _BOS, _END = "text", "answer", "image", "bos", "end"


class ConversationError(ValueError):
    """A record's conversation cannot be rendered (wrong structure, unknown role, turns out of order)."""


class EmptyConversationError(ConversationError):
    """A record's conversation has no turns at all."""


@dataclasses.dataclass(frozen=True)
class Template:
    """How turns are rendered. A user turn is `user_start + value + user_end`; an assistant turn is
    `assistant_start + answer_lead + value + assistant_end + after_assistant`. The inference prompt ends with
    `assistant_start`.

    supervise: "answer" supervises `answer_lead + value + assistant_end` (LLaVA `preprocess_v1` /
    `preprocess_plain`, Show-o `preprocess_v0`: the lead space belongs to the answer's first token); "turn" the
    whole assistant turn (LLaVA-NeXT `preprocess_qwen`). unmask: strings supervised wherever they occur as one
    token, in system and user turns too (`preprocess_qwen` unmasks "\\n" = Qwen2 id 198, `<|im_start|>` and
    `<|im_end|>`); a string that is not one token of the tokenizer has no id to unmask.
    bos: start with the tokenizer's bos, when it has one (the reference's `tokenizer(text)` adds LLaMA's `<s>`;
    Qwen2 has none).
    image: "inline" keeps each placeholder where it is; "front" removes placeholders from the text (then strips
    it, as Show-o's `preprocess_multimodal`) and puts the image tokens at the very start of the sequence
    (Show-o's `<|mmu|><|soi|> img <|eoi|>` prefix); "only" replaces a user turn by its placeholders alone (LLaVA
    `plain`: the question text is dropped).
    special_tokens: strings the template writes that must be single tokens of the tokenizer.
    bare_empty_user: the references' `SeparatorStyle.TWO` (LLaVA v1, Show-o's phi1.5 v0): a user turn whose text is
    empty (e.g. `"<image>"` alone once the image moved to the front) renders as the bare role `"USER:"` with no
    separator, so the next turn starts `"ASSISTANT: ..."`; the reference's masking (`preprocess_v0/v1`) then
    finds no `" ASSISTANT: "` in that round, stops, sees a token-count mismatch and masks the WHOLE sample.
    Such a sample is rendered and masked the same way here (`TokenizedConversation.masked`).
    """

    name: str
    prefix: str = ""
    user_start: str = ""
    user_end: str = ""
    assistant_start: str = ""
    answer_lead: str = ""
    assistant_end: str = ""
    after_assistant: str = ""
    bos: bool = False
    prompt_bos: bool | None = None  # bos for inference prompts, when it differs from training
    image: Literal["inline", "front", "only"] = "inline"
    special_tokens: tuple[str, ...] = ()
    supervise: Literal["answer", "turn"] = "answer"
    unmask: tuple[str, ...] = ()
    bare_empty_user: bool = False


TEMPLATES: dict[str, Template] = {
    # LLaVA stage 1 (alignment): <image> caption \n, caption and \n supervised; LLaMA's tokenizer adds bos.
    "plain": Template("plain", assistant_end="\n", bos=True, image="only"),
    # LLaVA-1.5 stage 2: "{system} USER: <image>\n{q} ASSISTANT: {a}</s>USER: ..." (sep " ", sep2 "</s>");
    # supervised: the answer's first token (" a" -> "▁a") through "</s>".
    "vicuna_v1": Template("vicuna_v1", prefix=VICUNA_SYSTEM + " ", user_start="USER: ",
                          assistant_start=" ASSISTANT:", answer_lead=" ", assistant_end="</s>", bos=True,
                          special_tokens=("</s>",), bare_empty_user=True),
    "llava_v1": Template("llava_v1", prefix=LLAVA_V1_SYSTEM + " ", user_start="USER: ",
                         assistant_start=" ASSISTANT:", answer_lead=" ", assistant_end="</s>", bos=True,
                         special_tokens=("</s>",), bare_empty_user=True),
    # Show-o LLaVA-data tuning: image prefix + "USER: q ASSISTANT: a<|endoftext|>", no bos, q stripped of its
    # placeholder and surrounding whitespace. The reference's MMU inference prompt does put bos after the image
    # prefix: kept.
    "phi1.5": Template("phi1.5", user_start="USER: ", assistant_start=" ASSISTANT:", answer_lead=" ",
                       assistant_end="<|endoftext|>", bos=False, prompt_bos=True, image="front",
                       special_tokens=("<|endoftext|>",), bare_empty_user=True),
    # Qwen2 (LLaVA-OneVision): <|im_start|>role\n...<|im_end|>\n. Supervised as preprocess_qwen does: each
    # assistant turn whole (header, answer, <|im_end|>, "\n") and every "\n", <|im_start|>, <|im_end|> token.
    "chatml": Template("chatml", prefix=f"<|im_start|>system\n{CHATML_SYSTEM}<|im_end|>\n",
                       user_start="<|im_start|>user\n", user_end="<|im_end|>\n",
                       assistant_start="<|im_start|>assistant\n", assistant_end="<|im_end|>",
                       after_assistant="\n", special_tokens=("<|im_start|>", "<|im_end|>"), supervise="turn",
                       unmask=("\n", "<|im_start|>", "<|im_end|>")),
}


def get_template(template: str | Template) -> Template:
    """The template of that name (or the template itself)."""
    if isinstance(template, Template):
        return template
    if template not in TEMPLATES:
        raise ValueError(f"unknown conversation template {template!r}; expected one of {sorted(TEMPLATES)}")
    return TEMPLATES[template]


@dataclasses.dataclass(frozen=True)
class TokenizedConversation:
    """One training sample. `answer_mask` marks the tokens of the supervised answers (the labels also hold a
    template's `unmask` tokens); none left (e.g. the answers were truncated away) means the sample teaches
    nothing: the pipeline counts and reports those. `num_positions` is the length once images are expanded."""

    input_ids: np.ndarray  # int32 [n]
    labels: np.ndarray  # int32 [n], IGNORE_INDEX where not supervised
    answer_mask: np.ndarray  # bool [n]
    num_supervised: int
    num_images: int
    num_positions: int
    truncated: bool
    masked: bool = False  # the reference masks the whole sample (an empty user turn: `Template.bare_empty_user`)


def _turns(conv: Sequence[Mapping[str, object]]) -> list[tuple[bool, str]]:
    """Validated (is_user, value) pairs. A leading assistant turn is dropped, as the reference does."""
    if isinstance(conv, str | bytes) or not isinstance(conv, Sequence):
        raise ConversationError(f"a conversation is a list of {{'from', 'value'}} turns, got {conv!r:.80}")
    turns = []
    for i, turn in enumerate(conv):
        if not isinstance(turn, Mapping) or "from" not in turn or "value" not in turn:
            raise ConversationError(f"turn {i}: expected a dict with 'from' and 'value', got {turn!r:.80}")
        role, value = turn["from"], turn["value"]
        if role not in _ROLES:
            raise ConversationError(f"turn {i}: unknown role {role!r}; expected one of {sorted(_ROLES)}")
        if not isinstance(value, str):
            raise ConversationError(f"turn {i}: 'value' must be a string, got {type(value).__name__}")
        turns.append((_ROLES[role], value))
    skip = 1 if turns and not turns[0][0] else 0
    if len(turns) <= skip:
        raise EmptyConversationError(f"the conversation has no human turn ({len(turns)} turns)")
    for i, (is_user, _) in enumerate(turns[skip:]):
        if is_user != (i % 2 == 0):
            raise ConversationError(f"turn {i + skip}: turns must alternate human, gpt, human, ... ")
    return turns[skip:]


def _segments(conv: Sequence[Mapping[str, object]], t: Template,
              generation_prompt: bool) -> tuple[list[tuple[str, str]], bool]:
    """The sequence as (kind, text) segments: prompt text, supervised text, images and bos; and whether the
    reference masks the whole sample (an empty user turn under `bare_empty_user`)."""
    turns = _turns(conv)
    n_front, bare, masked = 0, False, False
    body: list[tuple[str, str]] = [(_TEXT, t.prefix)]
    for is_user, value in turns:
        if not is_user:
            if bare:  # the bare "USER:" wrote no separator: the assistant turn starts without it
                body.append((_TEXT, t.assistant_start.lstrip()))
                body += [(_ANSWER, t.answer_lead + value + t.assistant_end), (_TEXT, t.after_assistant)]
                bare = False
            elif t.supervise == "turn":
                body.append((_ANSWER, t.assistant_start + t.answer_lead + value + t.assistant_end
                             + t.after_assistant))
            else:
                body += [(_TEXT, t.assistant_start), (_ANSWER, t.answer_lead + value + t.assistant_end),
                         (_TEXT, t.after_assistant)]
            continue
        text = value.replace(IMAGE_PLACEHOLDER, "").strip() if t.image == "front" else value
        if t.bare_empty_user and not text:  # the reference's `role + ":"` for an empty message
            n_front += value.count(IMAGE_PLACEHOLDER) if t.image == "front" else 0
            body.append((_TEXT, t.user_start.rstrip()))
            bare = masked = True
            continue
        body.append((_TEXT, t.user_start))
        if t.image == "only":
            body += [(_IMAGE, "")] * value.count(IMAGE_PLACEHOLDER)
        elif t.image == "front":
            n_front += value.count(IMAGE_PLACEHOLDER)
            if IMAGE_PLACEHOLDER in value:
                value = value.replace(IMAGE_PLACEHOLDER, "").strip()
            body.append((_TEXT, value))
        else:
            first, *rest = value.split(IMAGE_PLACEHOLDER)
            body.append((_TEXT, first))
            for text in rest:
                body += [(_IMAGE, ""), (_TEXT, text)]
        body.append((_TEXT, t.user_end))
    if generation_prompt:
        if not turns[-1][0]:
            raise ConversationError("an inference prompt's conversation must end with a human turn")
        body.append((_TEXT, t.assistant_start.lstrip() if bare else t.assistant_start))
    use_bos = t.bos if not generation_prompt or t.prompt_bos is None else t.prompt_bos
    segments = [(_IMAGE, "")] * n_front + ([(_BOS, "")] if use_bos else []) + body
    return [(kind, text) for kind, text in segments if text or kind in (_IMAGE, _BOS)], masked


def render_conversation(conv: Sequence[Mapping[str, object]], template: str | Template,
                        generation_prompt: bool = False) -> str:
    """The text a template makes of a conversation (images as `<image>`, bos not included): for reading, for
    parity with reference format strings, and for logging samples."""
    t = get_template(template)
    segments, _ = _segments(conv, t, generation_prompt)
    return "".join(IMAGE_PLACEHOLDER if kind == _IMAGE else text for kind, text in segments if kind != _BOS)


def _encode_text(text: str, spans: list[tuple[int, int]], tokenizer: Tokenizer) -> tuple[list[int], list[bool]]:
    """Ids of `text` tokenized in one piece, and whether each starts inside one of the (start, end) `spans`."""
    ids, starts = tokenizer.encode_with_offsets(text)
    return ids, [any(a <= s < b for a, b in spans) for s in starts]


def _encode_segments(segments: list[tuple[str, str]], t: Template, tokenizer: Tokenizer,
                     image_token_id: int | None) -> tuple[list[int], list[bool], list[bool]]:
    """ids, answer flags and image flags of the segments. The text between two images (or bos) is tokenized
    in one piece, like the reference; answers are located in it by character offsets."""
    for token in t.special_tokens:
        if not tokenizer.has_token(token):
            raise ValueError(f"template {t.name!r} needs {token!r} as a single token, but {tokenizer!r} "
                             f"lacks it; pass special_tokens={list(t.special_tokens)} to make_tokenizer")
    ids: list[int] = []
    answer: list[bool] = []
    is_image: list[bool] = []
    text, spans = "", []
    for kind, piece in [*segments, (_END, "")]:
        if kind in (_TEXT, _ANSWER):
            if kind == _ANSWER:
                spans.append((len(text), len(text) + len(piece)))
            text += piece
            continue
        if text:  # the text since the last image / bos, in one piece
            text_ids, text_answer = _encode_text(text, spans, tokenizer)
            ids += text_ids
            answer += text_answer
            is_image += [False] * len(text_ids)
            text, spans = "", []
        token = {_BOS: tokenizer.bos_id, _IMAGE: image_token_id, _END: None}[kind]
        if token is not None:  # no bos in the tokenizer, or the caller lays images out itself
            ids.append(token)
            answer.append(False)
            is_image.append(kind == _IMAGE)
    return ids, answer, is_image


def tokenize_conversation(conv: Sequence[Mapping[str, object]], template: str | Template,
                          tokenizer: Tokenizer, max_len: int, image_token_id: int | None, *,
                          image_token_len: int = 1) -> TokenizedConversation:
    """(input_ids, labels) of a training conversation (see the module docstring).

    Each `<image>` becomes one `image_token_id` counted as `image_token_len` positions; `image_token_id=None`
    drops placeholders (the caller lays out the image itself). Sequences longer than `max_len` positions are
    cut at the end (`truncated=True`); an image that would not fit whole is cut with everything after it.
    """
    if max_len <= 0 or image_token_len <= 0:
        raise ValueError(f"max_len and image_token_len must be positive, got {max_len}, {image_token_len}")
    t = get_template(template)
    segments, masked = _segments(conv, t, False)
    ids, answer, is_image = _encode_segments(segments, t, tokenizer, image_token_id)
    unmask = {one[0] for text in t.unmask if len(one := tokenizer.encode(text)) == 1}
    supervised = [(a or i in unmask) and not masked for a, i in zip(answer, ids)]
    positions, keep = 0, len(ids)
    for i, img in enumerate(is_image):
        cost = image_token_len if img else 1
        if positions + cost > max_len:
            keep = i
            break
        positions += cost
    labels = [i if s else IGNORE_INDEX for i, s in zip(ids[:keep], supervised[:keep])]
    return TokenizedConversation(
        input_ids=np.asarray(ids[:keep], np.int32), labels=np.asarray(labels, np.int32),
        answer_mask=np.asarray(answer[:keep], bool), num_supervised=sum(supervised[:keep]),
        num_images=sum(is_image[:keep]), num_positions=positions, truncated=keep < len(ids), masked=masked)


def build_prompt(conv: str | Sequence[Mapping[str, object]], template: str | Template, tokenizer: Tokenizer,
                 image_token_id: int | None) -> np.ndarray:
    """Token ids of an inference prompt: the conversation so far (ending with a human turn; a string is one
    human turn) followed by the assistant prefix, so the model's next token starts the answer. No labels, no
    truncation."""
    if isinstance(conv, str):
        conv = [{"from": "human", "value": conv}]
    t = get_template(template)
    ids, _, _ = _encode_segments(_segments(conv, t, True)[0], t, tokenizer, image_token_id)
    return np.asarray(ids, np.int32)


def stop_token_ids(template: str | Template, tokenizer: Tokenizer) -> list[int]:
    """Ids that end an assistant turn in generation: the template's end token (if one token) and eos."""
    t = get_template(template)
    end = tokenizer.encode(t.assistant_end)
    ids = end if len(end) == 1 else []
    eos = tokenizer.eos_id
    return ids + ([eos] if eos is not None and eos not in ids else [])


def move_image_first(conv: Sequence[Mapping[str, object]]) -> list[dict[str, object]]:
    """LLaVA's normalisation of a human turn holding one image: `"<image>\\n" + text without the placeholder`,
    stripped. Turns with several placeholders are left alone (LLaVA-NeXT's `preprocess_multimodal`: interleaved
    multi-image text keeps its order). The references apply it before every template but `plain`; the data
    pipeline opts in through the config."""
    out = []
    for turn in conv:
        turn = dict(turn)
        value = turn.get("value")
        is_user = isinstance(turn.get("from"), str) and _ROLES.get(turn["from"], False)
        if is_user and isinstance(value, str) and value.count(IMAGE_PLACEHOLDER) == 1:
            turn["value"] = IMAGE_PLACEHOLDER + "\n" + value.replace(IMAGE_PLACEHOLDER, "").strip()
        out.append(turn)
    return out
