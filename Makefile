# Simple-Registry developer entry points. `make run` and `make test` are the README's two commands.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install run test lint binary bench clean

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c requirements.lock -e '.[dev,s3,redis]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/registry server

# Test files run in parallel processes (pytest-xdist): most tests wait on real servers and clients.
PYTEST_WORKERS ?= 3

test: $(STAMP)
	$(BIN)/ruff check app tests
	$(BIN)/mypy
	$(BIN)/pytest -p no:cacheprovider -n $(PYTEST_WORKERS) $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check app tests
	$(BIN)/ruff format --check app tests
	$(BIN)/mypy

binary: dist/registry

# Rebuilt only when the code, the spec or the dependencies changed (make test relies on that).
dist/registry: $(STAMP) build/registry.spec $(shell find app -name '*.py')
	$(BIN)/pyinstaller --clean --noconfirm --distpath dist --workpath build/work build/registry.spec
	touch dist/registry

# Not a test: zb-style workloads against ours and distribution 2.8 (apt-get install -y docker-registry);
# writes bench-report.json and bench-report.md. BENCH_ARGS="--quick" for a shorter run.
bench: $(STAMP)
	$(BIN)/python -m tests.bench.run $(BENCH_ARGS)

clean:
	rm -rf $(VENV) dist build/work .pytest_cache .mypy_cache .ruff_cache
