# `make demo` and `make test` bootstrap everything from nothing (Python 3.10+ with venv).
PYTHON ?= python3
VENV := .venv
LEAN := .venv-runtime
BIN := $(VENV)/bin
TEST_BUNDLE := .cache/test-bundle
TEST_EPISODES := .cache/test-episodes
STUBS := .cache/typestubs

.PHONY: demo test test-slow lint lean-test clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0   # the CPU build; see README
	$(BIN)/python -m pip install -q -e ".[export,replay,dev]"
	touch $@

# The runtime alone, without torch/transformers/onnx: proves the on-robot install stays lean.
$(LEAN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(LEAN)
	$(LEAN)/bin/python -m pip install -q --upgrade pip
	$(LEAN)/bin/python -m pip install -q -e ".[replay]" pytest
	touch $@

DEMO_EPISODES := .cache/demo-episodes

demo: $(VENV)/.installed
	MOBILE_VLA_EPISODES=$(DEMO_EPISODES) $(BIN)/build_engines --int8
	$(BIN)/runtime --frames 5
	$(BIN)/runtime --benchmark
	$(BIN)/runtime --source h5:$(DEMO_EPISODES) --score

# tensorrt-stubs without TensorRT (its wheels cannot be fetched here), for mypy only. The published stubs name
# parameters `in` (a keyword) and put a parameter without default after defaults: patched so they parse.
$(STUBS)/.installed: $(VENV)/.installed
	$(BIN)/python -m pip install -q --no-deps --target $(STUBS) tensorrt-stubs==10.13.0.35.1
	sed -i -E '/^ *def /s/([(,] *)in:/\1in_:/g; /^ *def add_scale_nd/s/channel_axis: int\)/channel_axis: int = 0)/' \
		$(STUBS)/tensorrt_bindings/tensorrt.pyi
	touch $@

lint: $(VENV)/.installed $(STUBS)/.installed
	$(BIN)/ruff check .
	$(BIN)/mypy

test: lint lean-test
	$(BIN)/pytest -q

lean-test: $(VENV)/.installed $(LEAN)/.installed
	MOBILE_VLA_EPISODES=$(TEST_EPISODES) $(BIN)/build_engines --int8 --output $(TEST_BUNDLE) > /dev/null
	MOBILE_VLA_TEST_BUNDLE=$(TEST_BUNDLE) MOBILE_VLA_TEST_EPISODES=$(TEST_EPISODES) \
		$(LEAN)/bin/python -m pytest -q -p no:cacheprovider tests/runtime

test-slow: $(VENV)/.installed
	$(BIN)/pytest -q -m slow -s

clean:
	rm -rf $(VENV) $(LEAN) .cache .pytest_cache .mypy_cache .ruff_cache
