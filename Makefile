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

# A tiny random bundle built by the dev venv, for the runtime-only venv's CLI tests (which cannot build one).
RT_BUNDLE ?= artifacts/runtime-only/bundle
$(RT_BUNDLE)/manifest.json: $(STAMP)
	$(VENV)/bin/huluexport init-checkpoint --size tiny --out artifacts/runtime-only/checkpoint
	$(VENV)/bin/huluexport build --checkpoint artifacts/runtime-only/checkpoint --out $(RT_BUNDLE) --overwrite

# hulurt installed alone (no torch, transformers, onnx, huluexport) into a fresh venv.
test-runtime-only: $(RT_BUNDLE)/manifest.json
	rm -rf $(RT_VENV)
	$(PY) -m venv $(RT_VENV)
	$(RT_VENV)/bin/python -m pip install -q --upgrade pip
	# the dev pins as constraints (pip refuses extras in a constraints file: `ray[serve]==X` -> `ray==X`)
	sed -E 's/^([A-Za-z0-9_.-]+)\[[^]]*\]/\1/' requirements/dev.txt > $(RT_VENV)/constraints.txt
	$(RT_VENV)/bin/python -m pip install -q -c $(RT_VENV)/constraints.txt "./runtime[ort,tokenizer,image,volume,video]" pytest
	HULU_RUNTIME_ONLY_VENV=1 HULU_RUNTIME_ONLY_BUNDLE=$(RT_BUNDLE) \
	  $(RT_VENV)/bin/python -m pytest -q -p no:cacheprovider tests/runtime_only

demo: $(STAMP)
	$(VPY) scripts/demo.py --out $(DEMO_DIR)

kernels:
	$(MAKE) -C kernels

# Static checks, configured in pyproject.toml: ruff (style, pyflakes, bugbear, import order), import-linter
# (layers and forbidden imports), mypy (runtime/hulurt). Any finding fails.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy

# TensorRT compatibility of the exported graphs (tensorrt-rtx parses and builds engines on the CPU).
trt-check: $(STAMP)
	$(VPY) -m pytest -q -m trt tests/export

clean:
	rm -rf $(VENV) $(RT_VENV) artifacts kernels/build
