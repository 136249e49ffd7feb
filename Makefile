# Two commands matter: `make demo` (a local rotation to watch in the Airflow UI) and `make test`.
# Both create the virtual environment in .venv from the pinned requirements on first use.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat requirements.txt requirements-test.txt constraints.txt pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: venv test lint format demo lock clean system-packages bench machine-soak

venv: $(STAMP)

# The repo uses what it ships: the provider distribution (src/kosli_rotation) is installed into .venv in editable
# mode, its entry points included, after the pinned tree it depends on (--no-deps: nothing unpinned comes with it).
$(STAMP): requirements.txt requirements-test.txt constraints.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check \
		-r requirements.txt -r requirements-test.txt -c constraints.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	rm -f $(VENV)/.installed-*
	touch $@

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: venv
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Debian packages the tests drive: Chromium, headless, for the page's browser test, libfaketime for a worker
# whose clock runs ahead (tests/e2e/test_guarantees_under_attack.py), and PostgreSQL and Redis for the Celery
# deployment (tests/deploy/test_celery_postgres_redis.py). A fresh Debian machine (CI) gets them from apt.
LIBFAKETIME := /usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1
POSTGRES := $(firstword $(wildcard /usr/lib/postgresql/*/bin/postgres))
system-packages:
	@test -x /usr/bin/chromium -a -e $(LIBFAKETIME) -a -n "$(POSTGRES)" -a -x /usr/bin/redis-server || \
		{ export DEBIAN_FRONTEND=noninteractive; \
		apt-get update -qq && apt-get install -y -qq chromium faketime postgresql redis-server >/dev/null; }

# Two pytest-xdist workers, each taking whole files (a file's module fixtures start once): most tests wait on
# services and clocks, not on the CPU. TEST_WORKERS=0 runs them in one process.
TEST_WORKERS ?= 2
test: lint system-packages
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile

demo: venv
	$(BIN)/python -m demo

# The rotation state machine (tests/kosli_rotation/test_rotation_machine.py) with 1000 examples instead of make test's few.
machine-soak: venv
	KOSLI_MACHINE_EXAMPLES=1000 $(BIN)/pytest tests/kosli_rotation/test_rotation_machine.py

# Benchmarks against the sandboxes (about 13 minutes on 2 cores); writes bench/results.md.
bench: venv
	$(BIN)/python -m bench

# Re-pin the whole dependency tree after changing requirements*.txt (--all: setuptools and wheel build the provider).
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt -r requirements-test.txt
	.lock-venv/bin/python -m pip freeze --all --exclude-editable | grep -v '^pip==' > constraints.txt
	rm -rf .lock-venv

clean:
	rm -rf $(VENV) test-output .demo
