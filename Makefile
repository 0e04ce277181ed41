# tiergate: `make demo` and `make test` do all the set-up they need on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup system-deps demo test lint typecheck unit package bench clean

# The package's files, as the strict editable install links them (one a line, in a stable order).
PACKAGE_FILES = find models streams -type f ! -path '*/__pycache__/*' ! -name '*.pyc' ! -name '*.so' | LC_ALL=C sort
LINKED := $(VENV)/.linked

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip 'setuptools>=77'
	TIERGATE_PURE_PYTHON=1 $(BIN)/pip install -q -e '.[dev,kafka]' --config-settings editable_mode=strict
	touch $(STAMP)

# The strict editable install links each file and compiles the fold (setup.py: mypyc builds models/ and
# replay's loop as C extensions). Re-install when files were added or removed since the last link (the list in
# $(LINKED)), or when a compiled module's source changed since it was compiled: a stale extension would run in
# place of the edited source. When nothing changed, `make setup` does nothing and says nothing.
COMPILED := $(VENV)/.compiled

COMPILED_SOURCES := $(shell sed -n 's/^    "\(.*\.py\)",$$/\1/p' setup.py)  # setup.py's COMPILED, the one list

$(COMPILED): $(STAMP) setup.py $(wildcard models/*.py) $(COMPILED_SOURCES)
	@echo "compiling the fold (mypyc) into $(VENV)"
	@PYTHONWARNINGS=ignore $(BIN)/pip install -q --no-deps --no-build-isolation -e . --config-settings editable_mode=strict
	@$(PACKAGE_FILES) > $(LINKED)
	@touch $(COMPILED)

setup: $(COMPILED)
	@$(PACKAGE_FILES) | cmp -s - $(LINKED) || { \
		echo "linking the package's new files into $(VENV)"; \
		PYTHONWARNINGS=ignore $(BIN)/pip install -q --no-deps --no-build-isolation -e . --config-settings editable_mode=strict \
			&& $(PACKAGE_FILES) > $(LINKED); }

# Debian's Prometheus (prometheus, promtool) for the observability tests and Debian's chromium for the console's
# browser tests (Playwright drives it; it downloads no browser); Java and Maven for the Kafka broker come with
# the machine. The broker itself is started by the tests (tests/test_kafka.py) when it is not running.
system-deps:
	@command -v promtool >/dev/null || { apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }
	@command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium >/dev/null; }
	@command -v java >/dev/null && command -v mvn >/dev/null || { echo "Java and Maven are needed for the Kafka broker" >&2; exit 1; }

demo: setup
	$(BIN)/tiergate demo

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: setup
	$(BIN)/mypy models streams

# Everything, the package test included (tests/test_package.py: `python -m build` makes the sdist and the
# wheel, the wheel is installed into a fresh venv outside the repo, and `tiergate demo` runs there).
unit: setup system-deps
	$(BIN)/pytest

package: setup
	$(BIN)/pytest tests/test_package.py

test: lint typecheck unit

bench: setup
	$(BIN)/python bench/replay.py

clean:
	rm -rf $(VENV) build dist *.egg-info *.so models/*.so streams/*.so tiergate-demo tiergate-data tiergate-worker-data bench/.data
