# Two commands matter: `make demo` (a local rotation to watch in the Airflow UI) and `make test`.
# Both create the virtual environment in .venv from the pinned requirements on first use.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat requirements.txt requirements-test.txt constraints.txt | cksum | cut -d' ' -f1)

.PHONY: venv test lint format demo lock clean chromium bench

venv: $(STAMP)

$(STAMP): requirements.txt requirements-test.txt constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check \
		-r requirements.txt -r requirements-test.txt -c constraints.txt
	rm -f $(VENV)/.installed-*
	touch $@

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: venv
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# The browser test drives Debian's Chromium headless; a fresh Debian machine (CI) gets it from apt.
chromium:
	@test -x /usr/bin/chromium || { export DEBIAN_FRONTEND=noninteractive; \
		apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }

test: lint chromium
	$(BIN)/pytest

demo: venv
	$(BIN)/python -m demo

# Benchmarks against the sandboxes (about 13 minutes on 2 cores); writes bench/results.md.
bench: venv
	$(BIN)/python -m bench

# Re-pin the whole dependency tree after changing requirements*.txt.
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt -r requirements-test.txt
	.lock-venv/bin/python -m pip freeze --exclude-editable > constraints.txt
	rm -rf .lock-venv

clean:
	rm -rf $(VENV) test-output .demo
