"""CIDEr-D, the caption score of the COCO caption evaluation (`pycocoevalcap`'s "CIDEr"), in pure Python.

As pycocoevalcap computes it: captions are lower-cased and tokenised, punctuation tokens dropped; each caption is
a bag of 1- to 4-grams weighted by TF-IDF, with the document frequency counted over the images' REFERENCE
sets and `log(#images)` as the corpus size. For each n the candidate's vector is compared with each reference's
by a clipped cosine (`min(cand, ref) * ref`, the "-D" that stops repeating a word from paying), times a
Gaussian length penalty `exp(-delta^2 / (2 * 6^2))`; the four n are averaged, the references averaged, and the
result times 10. Two quirks are kept because they change numbers: the "length" in the penalty counts the
caption's bigrams (words - 1), and the corpus statistics make a caption's score depend on the whole test set,
so CIDEr is only comparable over the same split.

pycocoevalcap tokenises with Stanford CoreNLP's PTBTokenizer (Java); `ptb_tokenize` approximates it in Python
(the cases that matter for captions: clitics, punctuation, brackets, quotes); `tests/eval/test_cider.py` checks
it against the Java-free part of pycocoevalcap when that is installed.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence

# Tokens pycocoevalcap deletes after PTB tokenisation (its PUNCTUATIONS list; PTB writes brackets as -LRB- ...).
PUNCTUATION = frozenset({"''", "'", "``", "`", "-lrb-", "-rrb-", "-lcb-", "-rcb-", ".", "?", "!", ",", ":", "-",
                         "--", "...", ";"})
# How PTB writes brackets and double quotes (a '"' becomes `` or '', both deleted).
_PTB_FORMS = {"(": "-lrb-", ")": "-rrb-", "{": "-lcb-", "}": "-rcb-", "[": "-lsb-", "]": "-rsb-", '"': "''"}
_CLITIC = re.compile(r"(?i)^(.+?)(n't|'s|'re|'ve|'ll|'d|'m|')$")
_TOKEN = re.compile(r"\.\.\.|--|[A-Za-z0-9]+(?:[.'&-][A-Za-z0-9]+)*'?|\S")


def ptb_tokenize(text: str) -> list[str]:
    """Lower-cased PTB-style tokens with pycocoevalcap's punctuation removed: "A man's dog (black)." ->
    ["a", "man", "'s", "dog", "black"]. Hyphenated words stay whole ("black-and-white"), as PTB keeps them."""
    tokens = []
    for token in _TOKEN.findall(text.replace("\n", " ").lower()):
        token = _PTB_FORMS.get(token, token)
        match = _CLITIC.match(token)
        parts = [match.group(1), match.group(2)] if match and match.group(1) != "'" else [token]
        tokens += [p for p in parts if p not in PUNCTUATION]
    return tokens


def _ngrams(tokens: Sequence[str], n: int) -> Counter:
    return Counter(tuple(tokens[i : i + k]) for k in range(1, n + 1) for i in range(len(tokens) - k + 1))


def cider_d(
    references: Mapping[object, Sequence[str]], candidates: Mapping[object, str], *, n: int = 4,
    sigma: float = 6.0, tokenize: bool = True,
) -> tuple[float, dict[object, float]]:
    """(corpus CIDEr-D, per-image scores) of one candidate caption per image against its references.

    `tokenize=False` takes captions already tokenised (space-separated), as pycocoevalcap's Cider does.
    """
    if set(references) != set(candidates):
        raise ValueError("references and candidates must cover the same images")
    if any(not refs for refs in references.values()):
        raise ValueError("every image needs at least one reference caption")
    split = ptb_tokenize if tokenize else str.split
    keys = list(references)
    refs = {k: [_ngrams(split(r), n) for r in references[k]] for k in keys}
    cands = {k: _ngrams(split(candidates[k]), n) for k in keys}
    doc_freq: Counter = Counter()
    for k in keys:
        doc_freq.update(set().union(*refs[k]))
    log_docs = math.log(float(len(keys)))

    def vector(counts: Counter) -> tuple[list[dict], list[float], int]:
        vec: list[dict] = [{} for _ in range(n)]
        for gram, tf in counts.items():
            vec[len(gram) - 1][gram] = tf * (log_docs - math.log(max(1.0, doc_freq[gram])))
        norms = [math.sqrt(sum(v * v for v in part.values())) for part in vec]
        bigrams = sum(tf for gram, tf in counts.items() if len(gram) == 2)
        return vec, norms, bigrams

    scores = {}
    for k in keys:
        cand_vec, cand_norm, cand_len = vector(cands[k])
        total = 0.0
        for ref in refs[k]:
            ref_vec, ref_norm, ref_len = vector(ref)
            penalty = math.exp(-((cand_len - ref_len) ** 2) / (2 * sigma**2))
            for i in range(n):
                dot = sum(min(v, ref_vec[i].get(g, 0.0)) * ref_vec[i].get(g, 0.0) for g, v in cand_vec[i].items())
                if cand_norm[i] and ref_norm[i]:
                    dot /= cand_norm[i] * ref_norm[i]
                total += dot * penalty
        scores[k] = 10.0 * total / n / len(refs[k])
    return sum(scores.values()) / len(scores), scores
