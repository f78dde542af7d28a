"""Builds colab/*.ipynb from the percent-format sources in colab/src/: `python colab/build_notebooks.py`.

A source is Python with cell markers: `# %% [markdown]` starts a markdown cell (its lines are comments, `# `
stripped), `# %%` a code cell, and `# %% [setup]` the setup cell: the notebook's own settings (the lines a user
changes for a GPU or TPU runtime, or for longer runs) between SETUP_IMPORTS and SETUP below, the install block
every notebook shares. Sources keep the notebooks reviewable as code; the .ipynb files are generated and
committed without outputs, and tests/test_notebooks.py checks that they equal what this script builds (`--check`
does the same here) and that each one runs top to bottom on a CPU. ruff checks the generated notebooks.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat

COLAB = Path(__file__).resolve().parent
SOURCES = COLAB / "src"
MARKER = "# %%"

SETUP_IMPORTS = "import importlib.util\nimport os\nimport subprocess\nimport sys\n\n"
SETUP = '''
# ---- install: nothing to change below this line ----
ROOT = next((p for p in (".", "..") if os.path.isfile(os.path.join(p, "configs", "vq", "tiny.py"))), None)
if ROOT is None:  # a fresh runtime: fetch the repository (its configs/ are the experiments)
    if "<org>" in REPO_URL:
        raise ValueError("set REPO_URL at the top of this cell to the git URL of the mmjax repository")
    subprocess.run(["git", "clone", "--depth=1", REPO_URL, "mmjax"], check=True)
    ROOT = "mmjax"
ROOT = os.path.abspath(ROOT)
if importlib.util.find_spec("mmjax") is None:  # not installed yet: the package, the notebook extras, the jax build
    extras = {"cpu": "notebooks", "gpu": "notebooks,gpu", "tpu": "notebooks,tpu"}[RUNTIME]
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", f"{ROOT}[{extras}]"], check=True)
    sys.path.insert(0, ROOT)  # an editable install shows in new processes; this one gets the path directly
os.chdir(ROOT)  # config paths below are relative to the checkout
FAST = os.environ.get("MMJAX_FAST") == "1"  # the test suite's switch: a few steps of everything
FAST_STEPS = int(os.environ.get("MMJAX_FAST_STEPS", "2"))  # the training steps of a FAST run
WORK = os.path.abspath(os.environ.get("MMJAX_NOTEBOOK_OUT", "runs/colab"))  # where runs and images go
print(f"mmjax checkout {ROOT}, runs in {WORK}, runtime {RUNTIME}{' (FAST)' if FAST else ''}")


def run_dir(name, config):
    """WORK/name-<digest of the config>: one run directory per settings, so re-running a cell after editing a
    setting trains afresh, and re-running it unchanged resumes its run (or returns at once when it is done)."""
    import hashlib
    import json

    from mmjax import configlib

    digest = hashlib.sha256(json.dumps(configlib.to_dict(config), sort_keys=True, default=str).encode())
    path = f"{WORK}/{name}-{digest.hexdigest()[:8]}"
    print(f"run directory {path} (one per settings; delete it to train these settings again from scratch)")
    return path
'''.strip("\n")


def parse_cells(text: str, name: str) -> list[tuple[str, str]]:
    """(kind, source) of each cell; kind is "markdown", "code" or "setup"."""
    cells: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        if line.startswith(MARKER):
            tag = line[len(MARKER):].strip()
            kinds = {"": "code", "[markdown]": "markdown", "[setup]": "setup"}
            if tag not in kinds:
                raise ValueError(f"{name}: unknown cell marker {line!r}; use {sorted(kinds)}")
            cells.append((kinds[tag], []))
        elif cells:
            cells[-1][1].append(line)
        elif line.strip():
            raise ValueError(f"{name}: text before the first cell marker: {line!r}")
    out = []
    for kind, lines in cells:
        if kind == "markdown":
            bad = [ln for ln in lines if ln.strip() and not ln.startswith("#")]
            if bad:
                raise ValueError(f"{name}: markdown lines must be comments, got {bad[0]!r}")
            lines = [ln[2:] if ln.startswith("# ") else ln.lstrip("#") for ln in lines]
        out.append((kind, "\n".join(lines).strip("\n")))
    if [k for k, _ in out].count("setup") != 1:
        raise ValueError(f"{name}: needs exactly one `# %% [setup]` cell")
    return out


def build(source: Path) -> nbformat.NotebookNode:
    """The notebook of one source, with stable cell ids (so rebuilding an unchanged source changes nothing)."""
    nb = nbformat.v4.new_notebook()
    nb.metadata = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                   "language_info": {"name": "python"}, "colab": {"provenance": []}}
    for i, (kind, text) in enumerate(parse_cells(source.read_text(), source.name)):
        if kind == "markdown":
            cell = nbformat.v4.new_markdown_cell(text)
        else:
            cell = nbformat.v4.new_code_cell(f"{SETUP_IMPORTS}{text}\n{SETUP}" if kind == "setup" else text)
        cell.id = f"{source.stem}-{i:02d}"
        nb.cells.append(cell)
    nbformat.validate(nb)
    return nb


def notebook_path(source: Path) -> Path:
    return COLAB / f"{source.stem}.ipynb"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only report notebooks that differ from their source")
    args = parser.parse_args(argv)
    stale = []
    for source in sorted(SOURCES.glob("*.py")):
        text = nbformat.writes(build(source)) + "\n"
        target = notebook_path(source)
        if target.exists() and target.read_text() == text:
            continue
        if args.check:
            stale.append(target.name)
        else:
            target.write_text(text)
            print(f"wrote {target.relative_to(COLAB.parent)}")
    if stale:
        print(f"out of date (run python colab/build_notebooks.py): {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
