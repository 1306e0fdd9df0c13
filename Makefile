# neostore: `make demo` runs a local cluster with a ZODB program on it;
# `make test` runs the whole test suite.  Both install what they need into
# a virtualenv (.venv) first.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install demo test test-fast test-slow protos check-protos bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: install
	$(VENV)/bin/neo-cluster --data .demo-data --name demo --port 0 -- $(PY) examples/demo.py

test: install check-protos test-fast test-slow

check-protos: install
	$(PY) tools/gen_protos.py --check

test-fast: install
	$(PY) -m pytest -m "not slow" -q

test-slow: install
	$(PY) -m pytest -m slow -q

protos: install
	$(PY) tools/gen_protos.py

bench: install
	$(PY) benchmarks/latency.py

clean:
	rm -rf $(VENV) .demo-data .pytest_cache
