"""The docs cannot silently fall behind the code: the paper-table index covers every paper config, and every
guide the README promises exists and links only to files that exist."""

from __future__ import annotations

import ast
import glob
import os
import re

from tests.helpers import REPO

INDEX = os.path.join(REPO, "docs", "paper_tables.md")
# A field of a config docstring: a capitalised label at the start of a line, then a colon ("Hardware:  ...").
FIELD = re.compile(r"^([A-Z][\w ()/,.-]*?):", flags=re.M)


def expected_field(docstring: str) -> str:
    """The text of the docstring's `Expected...:` field, up to the next field."""
    starts = [(m.start(), m.group(1)) for m in FIELD.finditer(docstring)]
    for i, (start, label) in enumerate(starts):
        if label.startswith("Expected"):
            end = starts[i + 1][0] if i + 1 < len(starts) else len(docstring)
            return docstring[start:end]
    return ""


def states_a_paper_number(docstring: str) -> bool:
    """True when the Expected field quotes a published result: it names a paper or the reference, with a number."""
    text = expected_field(docstring)
    return bool(re.search(r"paper|reference", text, flags=re.I) and re.search(r"\d", text))


def config_docstrings() -> dict[str, str]:
    out = {}
    for path in sorted(glob.glob(os.path.join(REPO, "configs", "*", "*.py"))):
        with open(path, encoding="utf-8") as f:
            out[os.path.relpath(path, REPO)] = ast.get_docstring(ast.parse(f.read())) or ""
    return out


def test_expected_field_detection():
    doc = "Title.\nHardware:  8 GPUs.\nExpected (paper, 7B): VQAv2 78.5.\nTPU:  v5e.\n"
    assert expected_field(doc) == "Expected (paper, 7B): VQAv2 78.5.\n" and states_a_paper_number(doc)
    assert not states_a_paper_number("Expected:  >= 97% top-1 on held-out digits; see docs/results.md.\n")
    assert not states_a_paper_number("Hardware: the paper uses 8x A100.\n")


def test_every_paper_config_is_in_the_index():
    with open(INDEX, encoding="utf-8") as f:
        index = f.read()
    paper_configs = [path for path, doc in config_docstrings().items() if states_a_paper_number(doc)]
    assert len(paper_configs) >= 7, paper_configs  # the detection itself must keep finding the shipped ones
    missing = [path for path in paper_configs if f"`{path}:" not in index and f"`{path}`" not in index]
    assert not missing, f"docs/paper_tables.md has no row for {missing}"
    named = set(re.findall(r"`(configs/[\w/]+\.py)", index))
    stale = sorted(p for p in named if not os.path.isfile(os.path.join(REPO, p)))
    assert not stale, f"docs/paper_tables.md names configs that do not exist: {stale}"


def test_readme_links_every_guide_and_links_resolve():
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    guides = sorted(os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, "docs", "*.md")))
    assert not [g for g in guides if g not in readme], "README.md does not link every docs/ page"
    for page in ["README.md", "CONTRIBUTING.md", *guides]:
        with open(os.path.join(REPO, page), encoding="utf-8") as f:
            text = f.read()
        targets = re.findall(r"\]\(([^)#\s]+)", text)
        base = os.path.dirname(os.path.join(REPO, page))
        broken = [t for t in targets if "://" not in t and not os.path.exists(os.path.join(base, t))]
        assert not broken, f"{page} links to missing files: {broken}"
