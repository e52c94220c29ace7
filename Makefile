# The two commands: `make run` brings the platform up, `make test` runs the whole suite.
# Both need only Python 3.11+; everything else is installed into .venv.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python

.PHONY: run test bench bench-cli bench-webhook bench-policy bench-dispatch bench-dispatch-guard bench-overhead bench-plan-init bench-autoscale bench-live bench-abuse faults lint

# Two stamps: `make run` installs the runtime only (requirements.txt: no test runner, browser
# driver or plotting library); `make test` and the benchmarks add requirements-dev.txt.
$(VENV)/bin/python:
	@echo "==> creating $(VENV) (first run takes a minute)"
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --progress-bar off -q --upgrade pip

$(VENV)/.installed-runtime: requirements.txt | $(VENV)/bin/python
	@echo "==> installing requirements.txt"
	$(PY) -m pip install --progress-bar off -r requirements.txt
	@touch $@

$(VENV)/.installed-dev: requirements.txt requirements-dev.txt | $(VENV)/bin/python
	@echo "==> installing requirements-dev.txt (the runtime + tests, benchmarks, lint)"
	$(PY) -m pip install --progress-bar off -r requirements-dev.txt
	@touch $@ $(VENV)/.installed-runtime

run: $(VENV)/.installed-runtime
	-$(PY) scripts/test_prereqs.py bubblewrap  # the terraform sandbox; without it agents run unsandboxed, loudly
	$(PY) manage.py up

# Three pytest-xdist workers on the two cores (the e2e tests mostly wait on terraform, sweeps and
# servers), each with its own test database, Redis, ports and work roots
# (tests/env_plugin.py, tests/live.py); TEST_WORKERS=0 runs the suite serially.
TEST_WORKERS ?= 3
test: $(VENV)/.installed-dev
	$(PY) scripts/test_prereqs.py
	$(VENV)/bin/lint-imports --no-logo
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadgroup

bench: $(VENV)/.installed-dev
	$(PY) -m bench.confirm_latency

bench-dispatch: $(VENV)/.installed-dev
	$(PY) -m bench.dispatch

# CI's guard of the warm apply under load (.ci/run): a short dispatch load that keeps every
# slot busy (16 workspaces, 2 agents x 3 slots); fails on any lost or doubled run and when
# fewer than 90% of the auto-applies ran on the fast path (the warm agent took its apply).
bench-dispatch-guard: $(VENV)/.installed-dev
	$(PY) -m bench.dispatch --runs 48 --workspaces 16 --agents 2 --slots 3 --human-share 0 \
		--gate --min-fast-share 0.9 --no-query-log --name dispatch-guard

# Policy evaluation of a 1,000-resource plan with 20 policies, a one-resource plan, exploding
# policies stopped at their bound (bench/policy.py).
bench-policy: $(VENV)/.installed-dev
	$(PY) -m bench.policy

bench-overhead: $(VENV)/.installed-dev
	$(PY) -m bench.overhead

# terraform apply through a cloud {} block (yes typed into a pty) against the bare CLI (bench/cli_apply.py).
bench-cli: $(VENV)/.installed-dev
	$(PY) -m bench.cli_apply

# 100 pushes to 20 workspaces through signed webhooks: one run per push, none lost, none twice.
bench-webhook: $(VENV)/.installed-dev
	$(PY) -m bench.webhook

# Plans cold / with the provider cache / warm (no init), and 3 concurrent inits × 20 rounds.
bench-plan-init: $(VENV)/.installed-dev
	$(PY) -m bench.plan_init

# 200 websocket viewers of one run while its log grows by 5,000 lines (bench/live_viewers.py).
bench-live: $(VENV)/.installed-dev
	$(PY) -m bench.live_viewers

# Cheap ways to make the server work hard, all at once, while a probe times the web (bench/abuse.py).
# ABUSE_ARGS=--quick for a short run.
bench-abuse: $(VENV)/.installed-dev
	$(PY) -m bench.abuse $(ABUSE_ARGS)

# The autoscaler with the local backend: a burst against a pool of min 1 / max 4 (bench/autoscale.py).
bench-autoscale: $(VENV)/.installed-dev
	$(PY) -m bench.autoscale

# The fault suite (bench/faults.py): the supervised platform with agents, web, the worker,
# Redis and PostgreSQL killed mid-run; every count of lost, doubled or stuck work must be 0.
FAULTS_N ?= 5
faults: $(VENV)/.installed-dev
	$(PY) -m bench.faults --n $(FAULTS_N)
