# The two commands the README opens with: `make demo` and `make test`.
# Each creates .venv and installs what it needs on a fresh machine.
VENV := .venv
BIN := $(VENV)/bin
PYTHON ?= python3
# glibc page-faulted ~600k times per training step without these (about 1.6x slower).
export MALLOC_MMAP_MAX_ := 0
export MALLOC_TRIM_THRESHOLD_ := 17179869184
export PREFECT_SERVER_ANALYTICS_ENABLED := false

.PHONY: demo test test-all install clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The CPU wheel first: any other torch spec pulls the CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/tuneline demo --out artifacts

test: $(VENV)/.installed
	$(BIN)/pytest -q -p no:cacheprovider -m "not slow"

# End-to-end flow, kill/rerun, deployment and multi-stage training tests (minutes each).
test-all: $(VENV)/.installed
	$(BIN)/pytest -q -p no:cacheprovider

clean:
	rm -rf artifacts .pytest_cache
