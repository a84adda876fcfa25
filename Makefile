# `make demo` and `make test` bootstrap everything from nothing (Python 3.10+ with venv).
PYTHON ?= python3
VENV := .venv
LEAN := .venv-runtime
BIN := $(VENV)/bin
TEST_BUNDLE := .cache/test-bundle
TEST_EPISODES := .cache/test-episodes
STUBS := .cache/typestubs

.PHONY: demo test test-slow side-by-side lint lean-test clean system-deps

# GStreamer and the headers PyGObject builds against, and systemd-analyze (Debian/Ubuntu). Installs only what is
# missing.
GST_PACKAGES := gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good gir1.2-gstreamer-1.0 \
	gir1.2-gst-plugins-base-1.0 libgirepository1.0-dev libcairo2-dev pkg-config
# Test streams only (H.264 encode/decode, an RTSP server on 127.0.0.1): tests/runtime/test_gstreamer_*.py
GST_TEST_PACKAGES := gstreamer1.0-libav gstreamer1.0-plugins-ugly gir1.2-gst-rtsp-server-1.0
DEPLOY_PACKAGES := systemd   # systemd-analyze verify in tests/deploy (works without a running systemd)
SYSTEM_PACKAGES := $(GST_PACKAGES) $(GST_TEST_PACKAGES) $(DEPLOY_PACKAGES)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
system-deps:
	@missing=$$(for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing $$missing"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing >/dev/null; \
	fi

$(VENV)/.installed: pyproject.toml | system-deps
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0   # the CPU build (a plain `torch` pulls a multi-GB CUDA build)
	$(BIN)/python -m pip install -q -e ".[export,replay,dds,dev]"
	touch $@

# The runtime alone, without torch/transformers/onnx: proves the on-robot install stays lean.
$(LEAN)/.installed: pyproject.toml | system-deps
	$(PYTHON) -m venv $(LEAN)
	$(LEAN)/bin/python -m pip install -q --upgrade pip
	$(LEAN)/bin/python -m pip install -q -e ".[replay,capture,serial,dds]" pytest
	touch $@

DEMO_EPISODES := .cache/demo-episodes

DEMO_VIDEO := .cache/demo-video.avi
DEMO_UDP := 127.0.0.1:5600

demo: $(VENV)/.installed
	MOBILE_VLA_EPISODES=$(DEMO_EPISODES) $(BIN)/build_engines --int8
	$(BIN)/runtime --frames 5 --control none
	$(BIN)/runtime --source test --benchmark --frames 160 --warmup 10 --plot .cache/demo-latency.png
	gst-launch-1.0 -q videotestsrc num-buffers=90 pattern=ball ! video/x-raw,width=640,height=480,framerate=30/1 \
		! jpegenc ! avimux ! filesink location=$(DEMO_VIDEO)
	$(BIN)/python -m runtime.listen udp:$(DEMO_UDP) --count 5 --timeout 20 & \
		sleep 1; $(BIN)/runtime --source file:$(DEMO_VIDEO) --sink udp:$(DEMO_UDP) --control none; wait
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

# The full suite reuses the bundle and episodes lean-test built (the same `build_engines --int8` its fixture would run).
test: lint lean-test
	MOBILE_VLA_TEST_BUNDLE=$(TEST_BUNDLE) MOBILE_VLA_TEST_EPISODES=$(TEST_EPISODES) $(BIN)/pytest -q

lean-test: $(VENV)/.installed $(LEAN)/.installed
	MOBILE_VLA_EPISODES=$(TEST_EPISODES) $(BIN)/build_engines --int8 --output $(TEST_BUNDLE) > /dev/null
	MOBILE_VLA_TEST_BUNDLE=$(TEST_BUNDLE) MOBILE_VLA_TEST_EPISODES=$(TEST_EPISODES) \
		$(LEAN)/bin/python -m pytest -q -p no:cacheprovider tests/runtime

test-slow: $(VENV)/.installed
	$(BIN)/pytest -q -m slow -s

# The training stack's eager forward vs `runtime` (FP32, INT8) on the same frames, interleaved; mid preset (docs/measurements.md).
side-by-side: $(VENV)/.installed
	$(BIN)/python -m build_engines.side_by_side --preset mid --frames 20 --json .cache/side-by-side-mid.json

clean:
	rm -rf $(VENV) $(LEAN) .cache .pytest_cache .mypy_cache .ruff_cache
