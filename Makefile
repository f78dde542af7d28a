# The README's two commands: `make demo` and `make test`. Both create .venv and install into it on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.mmjax-installed
DEMO_OUT ?= demo_out

.PHONY: demo test test-all lint clean

$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "torch==2.13.0"   # CPU build of the PyTorch reference (parity tests)
	$(PY) -m pip install -q -e ".[test,parity]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) scripts/demo.py --out $(DEMO_OUT)

lint: $(STAMP)
	$(PY) -m ruff check mmjax tests scripts configs

test: $(STAMP) lint
	$(PY) -m pytest -q -n 2 --dist loadfile tests

test-all: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile -m "" tests

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache .ruff_cache
