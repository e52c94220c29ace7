# The two commands: `make run` brings the platform up, `make test` runs the whole suite.
# Both need only Python 3.11+; everything else is installed into .venv.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python

.PHONY: run test bench bench-dispatch lint

$(VENV)/.installed: requirements.txt
	@echo "==> creating $(VENV) and installing requirements (first run takes a minute)"
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --progress-bar off -q --upgrade pip
	$(PY) -m pip install --progress-bar off -r requirements.txt
	@touch $@

run: $(VENV)/.installed
	-$(PY) scripts/test_prereqs.py bubblewrap  # the terraform sandbox; without it agents run unsandboxed, loudly
	$(PY) manage.py up

test: $(VENV)/.installed
	$(PY) scripts/test_prereqs.py
	$(VENV)/bin/lint-imports --no-logo
	$(PY) -m pytest

bench: $(VENV)/.installed
	$(PY) -m bench.confirm_latency

bench-dispatch: $(VENV)/.installed
	$(PY) -m bench.dispatch
