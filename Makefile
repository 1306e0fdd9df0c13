# neostore: `make demo` runs a local cluster with a ZODB program on it;
# `make test` runs the whole test suite.  Both install what they need into
# a virtualenv (.venv) first.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install demo test test-fast test-slow test-docker docker-base docker-image protos check-protos bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: install
	$(VENV)/bin/neo-cluster --data .demo-data --name demo --port 0 -- $(PY) examples/demo.py

test: install check-protos test-fast test-slow test-docker

check-protos: install
	$(PY) tools/gen_protos.py --check

test-fast: install
	$(PY) -m pytest -m "not slow and not docker" -q

test-slow: install
	$(PY) -m pytest -m slow -q

# The Docker image and docker-compose.yml, end to end (needs docker and Compose).
test-docker: install
	$(PY) -m pytest -m docker -q

# A local base image from Debian packages, for machines without a registry,
# and the neostore image on it.
docker-base:
	docker/build-base.sh

docker-image: docker-base
	docker build --build-arg BASE_IMAGE=neostore-base:bookworm -t neostore:latest .

protos: install
	$(PY) tools/gen_protos.py

bench: install
	$(PY) benchmarks/latency.py

clean:
	rm -rf $(VENV) .demo-data .pytest_cache
