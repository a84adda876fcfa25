# `make demo` and `make test` bootstrap everything from nothing (Python 3.10+ with venv).
PYTHON ?= python3
VENV := .venv
LEAN := .venv-runtime
BIN := $(VENV)/bin
TEST_BUNDLE := .cache/test-bundle
TEST_EPISODES := .cache/test-episodes
STUBS := .cache/typestubs

.PHONY: demo test test-slow side-by-side lint lean-test clean system-deps lock test-latest

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

# Our own installs come from the locks in requirements/ (`make lock` writes them; docs/development.md): every
# package pinned with its hashes, nothing resolved at install time. The project itself goes in without its
# dependencies, built by the locked setuptools. LOCKED=no installs from pyproject.toml's ranges instead (make test-latest).
LOCKED ?= yes
FULL_LOCK := requirements/dev.txt
LEAN_LOCK := requirements/runtime-test.txt
ifeq ($(LOCKED),no)
FULL_INSTALL = $(1)/bin/python -m pip install -q torch==2.13.0 && \
	$(1)/bin/python -m pip install -q --upgrade --upgrade-strategy eager -e ".[export,replay,dds,dev]"
LEAN_INSTALL = $(1)/bin/python -m pip install -q --upgrade --upgrade-strategy eager -e ".[replay,capture,serial,dds,test]"
else
LOCK_PYTHON_CHECK = $(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' || { echo "the locks in \
	requirements/ are for CPython 3.11 (x86-64 Linux); $(PYTHON) is not: pass PYTHON=python3.11, or run make \
	test-latest to install from pyproject.toml's ranges instead" >&2; exit 2; }
# torch==2.13.0+cpu: the CPU build, found through pip's find-links (a plain `torch` pulls a multi-GB CUDA build)
FULL_INSTALL = $(1)/bin/python -m pip install -q --require-hashes --no-deps -r $(FULL_LOCK) && \
	$(1)/bin/python -m pip install -q --no-deps --no-build-isolation -e .
LEAN_INSTALL = $(1)/bin/python -m pip install -q --require-hashes --no-deps -r $(LEAN_LOCK) && \
	$(1)/bin/python -m pip install -q --no-deps --no-build-isolation -e .
endif

$(VENV)/.installed: pyproject.toml $(FULL_LOCK) | system-deps
	$(LOCK_PYTHON_CHECK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(call FULL_INSTALL,$(VENV))
	touch $@

# The runtime alone, without torch/transformers/onnx: proves the on-robot install stays lean.
$(LEAN)/.installed: pyproject.toml $(LEAN_LOCK) | system-deps
	$(LOCK_PYTHON_CHECK)
	$(PYTHON) -m venv $(LEAN)
	$(LEAN)/bin/python -m pip install -q --upgrade pip
	$(call LEAN_INSTALL,$(LEAN))
	touch $@

# Refresh the locks with uv (pinned): the workstation's venvs for CPython 3.11 on x86-64 Linux (the CI machine's),
# the robot's for Linux (aarch64 and x86-64) from Python 3.10 up (JetPack 6: 3.10, JetPack 7: 3.12).
UV_VERSION := 0.13.10
UV := .cache/lock-tool/bin/uv
# where torch-2.13.0+cpu lies for the resolver (a directory of wheels, or PyTorch's CPU wheel index)
TORCH_CPU_WHEELS ?= /opt/wheels
LOCK_HOST := --python-version 3.11 --python-platform x86_64-manylinux_2_28
LOCK_FLAGS := --generate-hashes --quiet --custom-compile-command "make lock"
$(UV):
	$(PYTHON) -m venv .cache/lock-tool
	.cache/lock-tool/bin/python -m pip install -q uv==$(UV_VERSION)
lock: $(UV)
	$(UV) pip compile pyproject.toml requirements/build.in --extra export --extra replay --extra dds --extra dev \
		$(LOCK_HOST) --find-links $(TORCH_CPU_WHEELS) $(LOCK_FLAGS) -o $(FULL_LOCK)
	$(UV) pip compile pyproject.toml requirements/build.in --extra replay --extra capture --extra serial --extra dds \
		--extra test $(LOCK_HOST) $(LOCK_FLAGS) -o $(LEAN_LOCK)
	$(UV) pip compile pyproject.toml requirements/build.in --extra replay --extra capture --extra serial \
		--extra jetson --universal --python-version 3.10 $(LOCK_FLAGS) -o requirements/robot.txt
	$(UV) pip compile requirements/robot-cuda.in --universal --python-version 3.10 $(LOCK_FLAGS) \
		-o requirements/robot-cuda.txt
	@echo "locks written: requirements/*.txt (commit them; make test installs from them)"

# The suite on the newest versions pyproject.toml's ranges allow (not part of CI), then what moved against the lock.
# Its last result and date: docs/development.md.
test-latest:
	$(MAKE) test LOCKED=no VENV=.venv-latest LEAN=.venv-latest-runtime BIN=.venv-latest/bin \
		TEST_BUNDLE=.cache/latest-bundle TEST_EPISODES=.cache/latest-episodes; status=$$?; \
	python3 requirements/moved.py $(FULL_LOCK) .venv-latest; \
	python3 requirements/moved.py $(LEAN_LOCK) .venv-latest-runtime; exit $$status

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
# INT8 by construction: gates that only a NaN fails, so every part of the test bundle is INT8 whatever the build host
# (tests/conftest.py INT8_BY_CONSTRUCTION, which the fixture asserts); the demo's own gate is tested with the defaults.
INT8_BY_CONSTRUCTION := --gate-mae 1 --gate-sign 0.001 --gate-cosine 0.001
test: lint lean-test
	MOBILE_VLA_TEST_BUNDLE=$(TEST_BUNDLE) MOBILE_VLA_TEST_EPISODES=$(TEST_EPISODES) $(BIN)/pytest -q

lean-test: $(VENV)/.installed $(LEAN)/.installed
	MOBILE_VLA_EPISODES=$(TEST_EPISODES) $(BIN)/build_engines --int8 $(INT8_BY_CONSTRUCTION) --output $(TEST_BUNDLE) \
		> /dev/null
	MOBILE_VLA_TEST_BUNDLE=$(TEST_BUNDLE) MOBILE_VLA_TEST_EPISODES=$(TEST_EPISODES) \
		$(LEAN)/bin/python -m pytest -q -p no:cacheprovider tests/runtime

test-slow: $(VENV)/.installed
	$(BIN)/pytest -q -m slow -s

# The training stack's eager forward vs `runtime` (FP32, INT8) on the same frames, interleaved; mid preset (docs/measurements.md).
side-by-side: $(VENV)/.installed
	$(BIN)/python -m build_engines.side_by_side --preset mid --frames 20 --json .cache/side-by-side-mid.json

clean:
	rm -rf $(VENV) $(LEAN) .venv-latest .venv-latest-runtime .cache .pytest_cache .mypy_cache .ruff_cache
