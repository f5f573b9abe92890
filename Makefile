# Two commands for a new user: `make demo` (the main job) and `make test` (the whole suite).
# Both create/update .venv themselves; nothing else needs to be installed first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# torch and faiss each bring an OpenMP runtime; spinning pools on 2 cores slow both down ~10x.
export OMP_WAIT_POLICY ?= PASSIVE
export HF_HUB_OFFLINE := 1
export PYTHONUNBUFFERED := 1

.PHONY: venv test lint demo clean redis-server chromium

venv: $(STAMP)

# The pinned torch/torchvision are installed first and kept by the constraints file, so pip never
# resolves a CUDA torch on a CPU-only machine.
$(STAMP): pyproject.toml constraints-cpu.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints-cpu.txt torch torchvision
	$(PY) -m pip install -q -c constraints-cpu.txt -e '.[dev]'
	touch $(STAMP)

# The service tests start their own redis-server; install the Debian package if it is missing.
redis-server:
	@command -v redis-server >/dev/null || { \
	  echo "redis-server not found: installing Debian's redis-server package"; \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq redis-server; \
	  else sudo apt-get update -qq && sudo apt-get install -y -qq redis-server; fi; }

# The console's browser tests (and the demo's console screenshots) drive Debian's chromium through
# chromium-driver. Installing them is tried, not required: without them those tests skip, saying why.
chromium:
	@{ command -v chromium >/dev/null && command -v chromedriver >/dev/null; } || { \
	  echo "chromium / chromedriver not found: installing Debian's chromium and chromium-driver packages"; \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium chromium-driver; \
	  else sudo apt-get update -qq && sudo apt-get install -y -qq chromium chromium-driver; fi \
	  || echo "warning: could not install chromium; the console's browser tests will be skipped"; }

test: $(STAMP) redis-server chromium
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .

demo: $(STAMP) chromium
	$(PY) -m service.demo

clean:
	rm -rf $(VENV) demo
