# Two entry points on a fresh Debian machine with Python 3.11:
#   make run   - creates .venv, installs upstream-bot, starts the demo (upstream-bot demo)
#   make test  - the same install plus the dev tools, then ruff and the whole test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

# Real servers and tools the tests run on 127.0.0.1: sshd (and key/certificate tools), nginx, wrk.
DEBIAN_PACKAGES := openssh-server openssh-client openssl procps wrk
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# nginx with nginx-upsync-module and nginx_upstream_check_module (the production stack the end-to-end
# tests run), built once from third_party/realnginx (in this repository) into .cache/realnginx. Needs
# root (apt-get); when it cannot be built, the tests that need it skip and say how to get it.
REALNGINX_BUILD := third_party/realnginx/build.sh
REALNGINX := .cache/realnginx/sbin/nginx

.PHONY: run test lint bench clean system-deps realnginx

system-deps:
	@missing=""; for p in $(DEBIAN_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends $$missing; \
	fi

realnginx:
	@if [ -x $(REALNGINX) ] && $(REALNGINX) -V 2>&1 | grep -q nginx-upsync-module \
	    && $(REALNGINX) -V 2>&1 | grep -q nginx_upstream_check_module; then \
	  echo "realnginx: $(REALNGINX) already built"; \
	elif [ ! -f $(REALNGINX_BUILD) ]; then \
	  echo "realnginx: no $(REALNGINX_BUILD): the real-nginx tests will skip"; \
	else \
	  PREFIX="$(abspath .cache/realnginx)" bash $(REALNGINX_BUILD) || \
	  echo "realnginx: the build failed (root and apt-get are needed): the real-nginx tests will skip"; \
	fi

$(BIN)/python:
	@$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || \
	  (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# Running needs the bot only; the tests add their tools (pytest, ruff).
$(VENV)/.installed-run: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'
	touch $@ $(VENV)/.installed-run

run: $(VENV)/.installed-run
	$(BIN)/upstream-bot demo

lint: $(VENV)/.installed
	$(BIN)/ruff check .

test: $(VENV)/.installed system-deps realnginx lint
	$(BIN)/python -m pytest -q -rs  # -rs: a test that skips says why (e.g. no real nginx)

bench: $(VENV)/.installed system-deps realnginx
	$(BIN)/python benchmarks/ack_latency.py
	$(BIN)/python benchmarks/executor.py
	$(BIN)/python benchmarks/release_overhead.py
	$(BIN)/python benchmarks/watch_scale.py
	$(BIN)/python benchmarks/crash_report.py
	-$(BIN)/python benchmarks/propagation.py  # exits 2 (and says why) without the real nginx

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
