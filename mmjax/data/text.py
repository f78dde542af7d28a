"""Text tokenizers behind one small interface: byte-level (default), SentencePiece, HF `tokenizer.json`.

Why one interface: conversation templates (`mmjax/data/conversation.py`), the data pipeline and generation
code only need `encode` / `decode`, the vocabulary size and a few special ids. Configs pick an implementation
by name through `make_tokenizer(kind, path, special_tokens)`, so a tiny CPU run (byte-level, no files) and a
LLaVA / Show-o run (the released tokenizer file) share every other line of code.

Conventions shared by all implementations:
- `encode` never adds bos/eos (templates decide that) and parses special-token strings that occur in the text
  (`"<image>"`, `"</s>"`, `"<|im_end|>"`) into their single ids, as HF tokenizers do for added tokens.
- `encode_with_offsets` is `encode` plus where each token starts in the text: conversation templates tokenize
  a whole rendered conversation at once (as the references do) and find the answer tokens by these offsets.
- `decode` renders special tokens as their text unless `skip_special_tokens=True`.
- `add_special_tokens` appends new tokens after the existing vocabulary and returns the ids of all requested
  tokens (existing ones keep their id), so a model's embedding table size is simply `vocab_size`.
- A missing or unreadable tokenizer file is an error that names the file.

Heavy libraries (`sentencepiece`, `tokenizers`) are imported inside the constructors that use them.
"""

from __future__ import annotations

import abc
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

DEFAULT_SPECIAL_TOKENS: tuple[str, ...] = ("<pad>", "<bos>", "<eos>", "<image>")
TOKENIZER_KINDS: tuple[str, ...] = ("byte", "sentencepiece", "hf")


def _split_on_specials(text: str, pattern: re.Pattern | None,
                       specials: Mapping[str, int]) -> list[tuple[int, str | int]]:
    """Cuts `text` into plain-text pieces and special-token ids (longest special matched first), each with the
    index in `text` where it starts."""
    if pattern is None:
        return [(0, text)] if text else []
    out: list[tuple[int, str | int]] = []
    pos = 0
    for m in pattern.finditer(text):
        if m.start() > pos:
            out.append((pos, text[pos : m.start()]))
        out.append((m.start(), specials[m.group()]))
        pos = m.end()
    if pos < len(text):
        out.append((pos, text[pos:]))
    return out


def _encode_with_offsets(text: str, pattern: re.Pattern | None, specials: Mapping[str, int],
                         encode_piece: Callable[[str], tuple[list[int], list[int]]]) -> tuple[list[int], list[int]]:
    """(ids, the index in `text` where each id's characters start): special tokens are one id each, plain-text
    pieces go through `encode_piece(piece) -> (ids, starts within the piece)`."""
    ids: list[int] = []
    starts: list[int] = []
    for pos, piece in _split_on_specials(text, pattern, specials):
        if isinstance(piece, int):
            ids.append(piece)
            starts.append(pos)
        else:
            piece_ids, piece_starts = encode_piece(piece)
            ids.extend(piece_ids)
            starts.extend(pos + start for start in piece_starts)
    return ids, starts


def _compile_specials(tokens: Iterable[str]) -> re.Pattern | None:
    tokens = sorted((t for t in tokens if t), key=len, reverse=True)
    return re.compile("|".join(re.escape(t) for t in tokens)) if tokens else None


class Tokenizer(abc.ABC):
    """The interface every tokenizer implements. bos/eos/pad are named by token text and resolved on access,
    so they stay valid after `add_special_tokens`; `None` means the tokenizer has no such token."""

    def __init__(self, bos: str | None, eos: str | None, pad: str | None) -> None:
        self._bos, self._eos, self._pad = bos, eos, pad

    @abc.abstractmethod
    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, with special-token strings parsed; never adds bos/eos."""

    @abc.abstractmethod
    def encode_with_offsets(self, text: str) -> tuple[list[int], list[int]]:
        """`encode(text)` and, per id, the index in `text` of the first character the token covers."""

    @abc.abstractmethod
    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        """Text of `ids`; special tokens rendered as their text unless skipped."""

    @property
    @abc.abstractmethod
    def vocab_size(self) -> int:
        """Number of ids (base vocabulary plus added tokens); the model's embedding needs this many rows."""

    @abc.abstractmethod
    def _lookup(self, token: str) -> int | None:
        """Id of a whole token, or None."""

    @abc.abstractmethod
    def _add(self, tokens: Sequence[str]) -> None:
        """Registers tokens that `_lookup` does not know yet."""

    def token_to_id(self, token: str) -> int:
        """Id of a (special) token; KeyError naming the token if it is not one token of this tokenizer."""
        i = self._lookup(token)
        if i is None:
            raise KeyError(f"{token!r} is not a single token of {self!r}; add it with "
                           "add_special_tokens([...]) or make_tokenizer(..., special_tokens=[...])")
        return i

    def has_token(self, token: str) -> bool:
        """Whether `token` is one token of this tokenizer."""
        return self._lookup(token) is not None

    def add_special_tokens(self, tokens: Sequence[str]) -> list[int]:
        """Appends the tokens not yet known after the vocabulary; returns the ids of all of them."""
        new = [t for t in dict.fromkeys(tokens) if self._lookup(t) is None]
        if any(not t for t in new):
            raise ValueError("special tokens must be non-empty strings")
        if new:
            self._add(new)
        return [self.token_to_id(t) for t in tokens]

    def _named_id(self, name: str | None) -> int | None:
        return None if name is None else self.token_to_id(name)

    @property
    def bos_id(self) -> int | None:
        return self._named_id(self._bos)

    @property
    def eos_id(self) -> int | None:
        return self._named_id(self._eos)

    @property
    def pad_id(self) -> int | None:
        return self._named_id(self._pad)


class ByteTokenizer(Tokenizer):
    """UTF-8 bytes as ids 0..255, special tokens appended from id 256. Needs no files, never has unknown
    input, and encoding is concatenation-compatible (encode(a + b) == encode(a) + encode(b) when no special
    token is cut), which is what makes it the default for tiny configs and tests."""

    def __init__(self, special_tokens: Sequence[str] = DEFAULT_SPECIAL_TOKENS, bos: str | None = "<bos>",
                 eos: str | None = "<eos>", pad: str | None = "<pad>") -> None:
        super().__init__(bos, eos, pad)
        self._specials: dict[str, int] = {}
        self._by_id: dict[int, str] = {}
        self._pattern: re.Pattern | None = None
        self.add_special_tokens([*special_tokens, *(t for t in (pad, bos, eos) if t is not None)])

    def __repr__(self) -> str:
        return f"ByteTokenizer(specials={list(self._specials)})"

    @property
    def vocab_size(self) -> int:
        return 256 + len(self._specials)

    def _lookup(self, token: str) -> int | None:
        return self._specials.get(token)

    def _add(self, tokens: Sequence[str]) -> None:
        for t in tokens:
            self._specials[t] = 256 + len(self._specials)
            self._by_id[self._specials[t]] = t
        self._pattern = _compile_specials(self._specials)

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for _, piece in _split_on_specials(text, self._pattern, self._specials):
            ids.extend(piece.encode("utf-8") if isinstance(piece, str) else (piece,))
        return ids

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[int]]:
        def piece_bytes(piece: str) -> tuple[list[int], list[int]]:
            encoded = [char.encode("utf-8") for char in piece]
            return ([b for e in encoded for b in e], [i for i, e in enumerate(encoded) for _ in e])

        return _encode_with_offsets(text, self._pattern, self._specials, piece_bytes)

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        out: list[str] = []
        buf = bytearray()
        for i in ids:
            i = int(i)
            if 0 <= i < 256:
                buf.append(i)
                continue
            if i not in self._by_id:
                raise ValueError(f"id {i} is outside the vocabulary of {self!r} (size {self.vocab_size})")
            out.append(buf.decode("utf-8", errors="replace"))
            buf.clear()
            if not skip_special_tokens:
                out.append(self._by_id[i])
        out.append(buf.decode("utf-8", errors="replace"))
        return "".join(out)


def _check_file(path: str | Path, kind: str) -> Path:
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"{kind} tokenizer file not found: {str(p)!r}")
    return p


class SentencePieceTokenizer(Tokenizer):
    """A SentencePiece `.model` file (LLaMA / Vicuna). Control pieces (`<s>`, `</s>`) and `<unk>` are parsed
    from text like HF's LlamaTokenizer does, so a template's `"</s>"` becomes the eos id; added specials get
    ids after the model's pieces. bos/eos/pad default to the ones the model file declares. Like SentencePiece
    itself, each text run is encoded with the dummy-prefix space and decoded without it, so spaces right after
    a special token do not round-trip (plain text does)."""

    def __init__(self, path: str | Path, bos: str | None = None, eos: str | None = None,
                 pad: str | None = None) -> None:
        import sentencepiece as spm

        self.path = _check_file(path, "SentencePiece")
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.Load(str(self.path))
        except (OSError, RuntimeError) as e:
            raise ValueError(f"could not load SentencePiece model {str(self.path)!r}: {e}") from e
        sp = self._sp
        declared = [sp.id_to_piece(i) if i >= 0 else None for i in (sp.bos_id(), sp.eos_id(), sp.pad_id())]
        super().__init__(bos or declared[0], eos or declared[1], pad or declared[2])
        self._base = sp.get_piece_size()
        self._n_added = 0
        # pieces SentencePiece would not parse from text, but that templates write literally
        self._specials = {sp.id_to_piece(i): i for i in range(self._base)
                          if sp.is_control(i) or sp.is_unknown(i)}
        self._by_id = {i: t for t, i in self._specials.items()}
        self._pattern = _compile_specials(self._specials)

    def __repr__(self) -> str:
        return f"SentencePieceTokenizer({str(self.path)!r})"

    @property
    def vocab_size(self) -> int:
        return self._base + self._n_added

    def _lookup(self, token: str) -> int | None:
        if token in self._specials:
            return self._specials[token]
        i = self._sp.piece_to_id(token)
        return i if self._sp.id_to_piece(i) == token else None

    def _add(self, tokens: Sequence[str]) -> None:
        for t in tokens:
            self._specials[t] = self.vocab_size
            self._by_id[self._specials[t]] = t
            self._n_added += 1
        self._pattern = _compile_specials(self._specials)

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for _, piece in _split_on_specials(text, self._pattern, self._specials):
            ids.extend(self._sp.encode(piece, out_type=int) if isinstance(piece, str) else (piece,))
        return ids

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[int]]:
        def piece_pieces(piece: str) -> tuple[list[int], list[int]]:
            # SentencePiece reports UTF-8 byte offsets into the piece; map them to character indices
            char_of_byte = [i for i, char in enumerate(piece) for _ in char.encode("utf-8")] + [len(piece)]
            pieces = self._sp.encode(piece, out_type="proto").pieces
            return ([p.id for p in pieces], [char_of_byte[min(p.begin, len(char_of_byte) - 1)] for p in pieces])

        return _encode_with_offsets(text, self._pattern, self._specials, piece_pieces)

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        out: list[str] = []
        run: list[int] = []
        for i in ids:
            i = int(i)
            if i in self._by_id:
                out.append(self._sp.decode(run))
                run = []
                if not skip_special_tokens:
                    out.append(self._by_id[i])
            elif 0 <= i < self._base:
                run.append(i)
            else:
                raise ValueError(f"id {i} is outside the vocabulary of {self!r} (size {self.vocab_size})")
        out.append(self._sp.decode(run))
        return "".join(out)


def _token_text(entry: object) -> str | None:
    """tokenizer_config.json stores special tokens as a string or as {"content": str, ...}."""
    if isinstance(entry, dict):
        entry = entry.get("content")
    return entry if isinstance(entry, str) else None


class HFTokenizer(Tokenizer):
    """An HF `tokenizer.json` (GPT-2 BPE of Phi-1.5, Qwen2, LLaMA-3) through the `tokenizers` library. `path`
    may be the file or its directory. bos/eos/pad default to those in a sibling `tokenizer_config.json` when
    there is one (the `tokenizer.json` itself does not say which token is which). The file's post-processor
    (which may add bos) is bypassed: templates add bos themselves."""

    def __init__(self, path: str | Path, bos: str | None = None, eos: str | None = None,
                 pad: str | None = None) -> None:
        from tokenizers import Tokenizer as HFRustTokenizer

        p = Path(path).expanduser()
        self.path = _check_file(p / "tokenizer.json" if p.is_dir() else p, "HF")
        try:
            self._tok = HFRustTokenizer.from_file(str(self.path))
        except Exception as e:  # the library raises a bare Exception on malformed JSON
            raise ValueError(f"could not load HF tokenizer file {str(self.path)!r}: {e}") from e
        declared: dict[str, str | None] = {}
        config = self.path.parent / "tokenizer_config.json"
        if config.is_file():
            try:
                cfg = json.loads(config.read_text())
            except (OSError, ValueError) as e:
                raise ValueError(f"could not read {str(config)!r}: {e}") from e
            declared = {k: _token_text(cfg.get(f"{k}_token")) for k in ("bos", "eos", "pad")}
        super().__init__(bos or declared.get("bos"), eos or declared.get("eos"), pad or declared.get("pad"))

    def __repr__(self) -> str:
        return f"HFTokenizer({str(self.path)!r})"

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def _lookup(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def _add(self, tokens: Sequence[str]) -> None:
        from tokenizers import AddedToken

        self._tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in tokens])

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False).ids) if text else []

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[int]]:
        if not text:
            return [], []
        encoding = self._tok.encode(text, add_special_tokens=False)
        return list(encoding.ids), [start for start, _ in encoding.offsets]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"id {bad[0]} is outside the vocabulary of {self!r} (size {self.vocab_size})")
        return self._tok.decode(ids, skip_special_tokens=skip_special_tokens)


def make_tokenizer(kind: str = "byte", path: str | Path | None = None, special_tokens: Sequence[str] = (),
                   *, bos: str | None = None, eos: str | None = None, pad: str | None = None) -> Tokenizer:
    """The tokenizer a config names. `kind` is one of TOKENIZER_KINDS; `path` is required for the file-based
    kinds. `special_tokens` are added (after DEFAULT_SPECIAL_TOKENS for "byte"); `bos`/`eos`/`pad` override
    which token text plays that role (for "byte" the defaults are `<bos>`, `<eos>`, `<pad>`)."""
    if kind == "byte":
        if path is not None:
            raise ValueError(f"the byte tokenizer takes no file, got path={str(path)!r}")
        specials = list(dict.fromkeys([*DEFAULT_SPECIAL_TOKENS, *special_tokens]))
        return ByteTokenizer(specials, bos=bos or "<bos>", eos=eos or "<eos>", pad=pad or "<pad>")
    if kind not in TOKENIZER_KINDS:
        raise ValueError(f"unknown tokenizer kind {kind!r}; expected one of {TOKENIZER_KINDS}")
    if path is None:
        raise ValueError(f"tokenizer kind {kind!r} needs a path to its file")
    cls = SentencePieceTokenizer if kind == "sentencepiece" else HFTokenizer
    tok = cls(path, bos=bos, eos=eos, pad=pad)
    if special_tokens:
        tok.add_special_tokens(special_tokens)
    return tok
