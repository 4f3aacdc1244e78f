# vision-audit: `make demo` and `make test` each set up .venv (if missing) and run.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast test-hf4 setup browser lint clean bench

setup: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Reinstall when the dependency list changes.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -e ".[dev,hf,scale]"
	touch $(STAMP)

# Debian's Chromium for the real-browser dashboard test (skipped, with a reason, if it cannot be installed).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	      || echo "note: chromium could not be installed; the browser test will be skipped"; \
	  else echo "note: chromium missing and not root; the browser test will be skipped"; fi; }

demo: setup
	$(BIN)/vision-audit demo

test: setup browser
	$(BIN)/python -m pytest
	$(MAKE) test-hf4

# The HF adapters also support transformers v4 (module names differ from v5): their tests run again
# with transformers 4.57 (and the tokenizers / huggingface_hub it needs) laid over the venv.
HF4     := $(VENV)/hf4
HF4_PKGS := transformers==4.57.3 tokenizers==0.22.1 huggingface_hub==0.36.0
HF4_TESTS := tests/unit/test_models_hf.py tests/unit/test_models_hier.py tests/unit/test_vit_variants.py \
	tests/unit/test_components_decompose.py tests/unit/test_components_variants.py tests/unit/test_probe.py \
	tests/unit/test_preprocessing.py

$(HF4)/.installed: | $(STAMP)
	$(BIN)/pip install -q --no-deps --target $(HF4) $(HF4_PKGS)
	touch $@

test-hf4: setup $(HF4)/.installed
	PYTHONPATH=$(HF4) $(BIN)/python -c "import transformers; assert transformers.__version__.startswith('4.'), transformers.__version__"
	PYTHONPATH=$(HF4) $(BIN)/python -m pytest -q $(HF4_TESTS)

# While developing: everything but the tests marked slow (simulations, notebooks, canary runs, bench smoke).
# `make test` (and CI) always runs the whole suite.
test-fast: setup
	$(BIN)/python -m pytest -m "not slow and not network and not gpu"

lint: setup
	$(BIN)/ruff check audit dashboards tests

bench: setup
	$(BIN)/vision-audit bench explain
	$(BIN)/vision-audit bench stats
	$(BIN)/vision-audit bench pipeline

clean:
	rm -rf runs/demo tests/artifacts .pytest_cache
