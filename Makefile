# Thin targets. `make test` and `make demo` create the environment on first use.
PY        ?= python3
VENV      ?= .venv
VPY       := $(VENV)/bin/python
STAMP     := $(VENV)/.installed
RT_VENV   ?= .venv-runtime
DEMO_DIR  ?= artifacts/demo
PYTEST_ARGS ?=

.PHONY: venv test test-fast test-gpu test-runtime-only demo kernels lint trt-check clean

$(STAMP): requirements/dev.txt pyproject.toml runtime/pyproject.toml
	$(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -r requirements/dev.txt
	$(VPY) -m pip install -q --no-deps -e ./runtime -e .
	touch $(STAMP)

venv: $(STAMP)

# The CPU suite. GPU tests are collected and reported as skipped here.
test: $(STAMP)
	$(VPY) -m pytest -q $(PYTEST_ARGS) tests

test-gpu: $(STAMP)
	$(VPY) -m pytest -q -m gpu tests/gpu

# hulurt installed alone (no torch, transformers, onnx, huluexport) into a fresh venv.
test-runtime-only:
	rm -rf $(RT_VENV)
	$(PY) -m venv $(RT_VENV)
	$(RT_VENV)/bin/python -m pip install -q --upgrade pip
	$(RT_VENV)/bin/python -m pip install -q -c requirements/dev.txt "./runtime[ort,tokenizer,image,volume,video]" pytest
	$(RT_VENV)/bin/python -m pytest -q -p no:cacheprovider tests/runtime_only

demo: $(STAMP)
	$(VPY) scripts/demo.py --out $(DEMO_DIR)

kernels:
	$(MAKE) -C kernels

lint: $(STAMP)
	$(VENV)/bin/lint-imports

clean:
	rm -rf $(VENV) $(RT_VENV) artifacts kernels/build
