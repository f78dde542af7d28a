# The README's two commands: `make demo` and `make test`. Both create .venv and install into it on first use.
# The install comes in two parts, each with its own stamp, so `make demo` then `make test` installs each once:
#   demo: mmjax and its core dependencies (what scripts/demo.py imports: no torch, transformers or pytest);
#   test: adds the CPU build of PyTorch and the `test` and `parity` extras (pytest, ruff, libtpu, transformers).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_STAMP := $(VENV)/.mmjax-demo-installed
TEST_STAMP := $(VENV)/.mmjax-test-installed
DEMO_OUT ?= demo_out

.PHONY: demo test test-all lint clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(DEMO_STAMP): setup.py | $(PY)
	$(PY) -m pip install -q -e .
	touch $@

$(TEST_STAMP): setup.py $(DEMO_STAMP)
	$(PY) -m pip install -q "torch==2.13.0"   # CPU build of the PyTorch reference (parity tests)
	$(PY) -m pip install -q -e ".[test,parity]"
	touch $@

demo: $(DEMO_STAMP)
	$(PY) scripts/demo.py --out $(DEMO_OUT)

lint: $(TEST_STAMP)
	$(PY) -m ruff check mmjax tests scripts configs colab

test: $(TEST_STAMP) lint
	$(PY) -m pytest -q -n 2 --dist loadfile --durations=20 tests

test-all: $(TEST_STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile -m "" tests

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache .ruff_cache
