"""colab/*.ipynb: each notebook runs top to bottom on a CPU in FAST mode, and the committed notebooks are exactly
what colab/build_notebooks.py builds from colab/src/, without outputs.

The notebooks share one output folder (MMJAX_NOTEBOOK_OUT), so show_o reuses the runs quickstart trained, and one
JAX compilation cache, so tokenizer's FAST run (quickstart's architecture) compiles nothing new. Each notebook gets
its own kernel, as in Colab. The runs are a couple of steps of tiny models, which makes XLA's compile time the
cost: the kernels inherit the suite's fast-compile XLA flags (tests/conftest.py).

Re-running a notebook after a setting changed trains into a new run directory (`run_dir` of the setup block, keyed
by the settings): the second run of each notebook changes its steps (MMJAX_FAST_STEPS=3, still FAST) in the same
output folder. By default only diffusion (the cheapest that trains) runs twice; every training notebook does under
`-m slow`.
"""

from __future__ import annotations

import importlib.util
import json
import os

import pytest

from tests.helpers import REPO

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")

COLAB = os.path.join(REPO, "colab")
# quickstart first: show_o and tokenizer then reuse its runs and compiled programs.
NOTEBOOKS = ("quickstart", "show_o", "tokenizer", "llava", "diffusion", "tpu")
# The run directories (under MMJAX_NOTEBOOK_OUT) each training notebook writes; tpu trains nothing.
RUNS = {"quickstart": "quickstart/showo", "show_o": "quickstart/showo", "tokenizer": "tokenizer/photos",
        "llava": "llava/stage2", "diffusion": "diffusion/d3pm_digits"}


def load_builder():
    spec = importlib.util.spec_from_file_location("build_notebooks", os.path.join(COLAB, "build_notebooks.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def notebook_out(tmp_path_factory):
    return tmp_path_factory.mktemp("notebooks")


def test_every_source_has_a_notebook_and_the_test_runs_them_all():
    sources = sorted(name[:-3] for name in os.listdir(os.path.join(COLAB, "src")) if name.endswith(".py"))
    assert sources == sorted(NOTEBOOKS)


def test_committed_notebooks_equal_their_sources_and_hold_no_outputs():
    builder = load_builder()
    assert builder.main(["--check"]) == 0, "run python colab/build_notebooks.py and commit the notebooks"
    for name in NOTEBOOKS:
        nb = nbformat.read(os.path.join(COLAB, f"{name}.ipynb"), as_version=4)
        assert nb.cells[0].cell_type == "markdown" and "**Time**" in nb.cells[0].source, name
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, f"{name}: outputs committed"


def test_the_builder_rejects_malformed_sources(tmp_path):
    builder = load_builder()
    with pytest.raises(ValueError, match="unknown cell marker"):
        builder.parse_cells("# %% [setup]\nA = 1\n# %% [raw]\n", "x.py")
    with pytest.raises(ValueError, match="exactly one"):
        builder.parse_cells("# %%\nA = 1\n", "x.py")
    with pytest.raises(ValueError, match="markdown lines must be comments"):
        builder.parse_cells("# %% [setup]\n# %% [markdown]\nnot a comment\n", "x.py")


def execute(name: str, out, monkeypatch, steps: int = 2) -> nbformat.NotebookNode:
    """Runs colab/NAME.ipynb in FAST mode with `steps` training steps, writing under `out`; returns it executed."""
    for key, value in {"MMJAX_FAST": "1", "MMJAX_FAST_STEPS": str(steps), "MMJAX_NOTEBOOK_OUT": str(out),
                       "JAX_PLATFORMS": "cpu", "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
                       "JAX_COMPILATION_CACHE_DIR": str(out / "jax_cache")}.items():
        monkeypatch.setenv(key, value)
    nb = nbformat.read(os.path.join(COLAB, f"{name}.ipynb"), as_version=4)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": COLAB}})
    client.execute()  # a failing cell raises CellExecutionError with its traceback
    return nb


def trained_steps(out, run: str) -> list[int]:
    """total_steps of each run directory of `run` (WORK/run-<digest>), sorted."""
    parent, prefix = os.path.split(os.path.join(out, run))
    dirs = [os.path.join(parent, d) for d in os.listdir(parent) if d.startswith(os.path.basename(prefix) + "-")]
    steps = []
    for d in dirs:
        with open(os.path.join(d, "config.json")) as f:
            steps.append(json.load(f)["total_steps"])
    return sorted(steps)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_on_cpu(name, notebook_out, monkeypatch):
    if name == "tpu":
        pytest.importorskip("libtpu")  # the test extra installs jax[tpu]; without it the notebook would pip install
    nb = execute(name, notebook_out, monkeypatch)
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert any(o.get("data", {}).get("image/png") for o in outputs), f"{name} drew no figure"


@pytest.mark.parametrize("name", [pytest.param(n, marks=() if n == "diffusion" else pytest.mark.slow) for n in RUNS])
def test_notebook_reruns_with_changed_settings(name, notebook_out, monkeypatch):
    """The same notebook again in the same folder with another number of steps: no "holds a run with a different
    config" error; the new settings train into their own run directory beside the first one."""
    if not os.path.isdir(os.path.join(notebook_out, os.path.dirname(RUNS[name]))):
        execute(name, notebook_out, monkeypatch)  # run on its own: the first run first
    assert 2 in trained_steps(notebook_out, RUNS[name])
    execute(name, notebook_out, monkeypatch, steps=3)
    steps = trained_steps(notebook_out, RUNS[name])
    assert 2 in steps and 3 in steps, steps
