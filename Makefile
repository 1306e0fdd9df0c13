# neostore: `make demo` runs a local cluster with a ZODB program on it;
# `make test` runs the whole test suite.  Both install what they need into
# a virtualenv (.venv) first.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install demo test lint test-fast test-slow test-docker docker-base docker-image protos check-protos bench bench-postgresql clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: install
	$(VENV)/bin/neo-cluster --data .demo-data --name demo --port 0 -- $(PY) examples/demo.py

test: install check-protos lint test-fast test-slow test-docker

lint: install
	$(VENV)/bin/ruff check .
	$(PY) tools/typecheck.py

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

# `make bench`: benchmarks/commit.py with its full defaults (several minutes):
# neostore next to ZEO + FileStorage and RelStorage on PostgreSQL.  The bench
# extra (RelStorage, psycopg2) is installed here only: `make test` does not
# need it.  PostgreSQL's server is installed with apt-get when it is missing
# and we are root; that step never fails the target: without a server the
# script skips the RelStorage column and says why.
BENCH_STAMP := $(VENV)/.bench-installed-stamp

$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(PY) -m pip install --quiet -e '.[dev,bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP) bench-postgresql
	$(PY) benchmarks/commit.py

# Debian's package would create and start a cluster of its own: the
# benchmark starts its own in a temporary directory, so none is created.
bench-postgresql:
	-@if command -v postgres >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then \
		:; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "bench: installing PostgreSQL with apt-get (for the RelStorage column)..."; \
		mkdir -p /etc/postgresql-common/createcluster.d && \
		echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.d/neostore-bench.conf; \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; } \
			|| echo "bench: PostgreSQL could not be installed: the RelStorage column will be skipped"; \
	else \
		echo "bench: no PostgreSQL server, and no apt-get as root: the RelStorage column will be skipped"; \
	fi

clean:
	rm -rf $(VENV) .demo-data .pytest_cache
