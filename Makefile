# Lazaretto: `make run` starts the whole system on loopback, `make test` runs every check.
SHELL := /bin/bash
# uv lives in a venv of its own (Debian's Python is externally managed): deploy/bin/install-deps puts it there.
UV_HOME ?= /opt/lazaretto/uv
UV := $(UV_HOME)/bin/uv
PY := .venv/bin/python
PACKAGES := $(wildcard libs/*) $(wildcard services/*)

.PHONY: deps peers test test-cluster test-fresh lint typecheck pytest run fuzz bench-e2e bench-snort bench-smtp bench-cmts bench-vs bench-policy bench-provisioner test-faults

# Bytecode compiled once, here: where PYTHONDONTWRITEBYTECODE is set (as on CI machines), every Python
# process would otherwise compile each module it imports from source (a lab's services: 21 s -> 11 s).
deps:
	LAZARETTO_UV_HOME=$(UV_HOME) deploy/bin/install-deps
	$(UV) sync --frozen --compile-bytecode
	$(PY) -m compileall -q libs/*/src services/*/src
	deploy/bin/link-system-nftables .venv

peers: deps
	deploy/bin/start-peers

lint: deps
	$(UV) run --frozen ruff check .
	$(UV) run --frozen ruff format --check .

# One mypy run per package: every service has a tests/ folder (and a conftest) of its own.
typecheck: deps
	@set -e; for p in $(PACKAGES); do echo "mypy $$p"; $(UV) run --frozen mypy $$p/src $$p/tests; done
	@set -e; for p in tests bench; do echo "mypy $$p"; $(UV) run --frozen mypy $$p; done

# Two workers, a test file to each (its module fixtures, such as a 3-node cluster, start once).
pytest: peers
	$(UV) run --frozen pytest -n 2 --dist loadfile

test: lint typecheck pytest

# A real 3-node RabbitMQ cluster on loopback (lazaretto_lab.rabbit_nodes): a long flood while the queue
# leader's node is killed, then two policy replicas on the cluster (`make test` runs a short flood).
test-cluster: peers
	LAZARETTO_CLUSTER_FLOOD=20000 $(UV) run --frozen pytest -q -s libs/lazaretto-core/tests/test_bus_cluster.py services/policy/tests/test_policy_cluster.py
	LAZARETTO_PG_FAILOVER_FLOOD=1000 $(UV) run --frozen pytest -q -s services/policy/tests/test_policy_pg_failover.py

# Faults (under 40 minutes here): 1,000 subscribers behind four lab CMTSes while each service is
# SIGKILLed, PostgreSQL restarted, BIND down 30 s, 30% SNMP loss, Kea's database cut 20 s, two replicas
# of each consumer; prints lost=… duplicates=… diverged=… duplicate_resets=… unexplained_dlq=… and
# heal_seconds_<fault>=…, fails unless all are 0. A short run (100 subscribers) is part of `make test`.
test-faults: peers
	$(UV) run --frozen python tests/faults/run_faults.py

# Slow (2-4 minutes here, as root), not part of `make test`: the README's install step in a fresh Debian 12 chroot.
test-fresh:
	deploy/bin/test-fresh

# Hostile input, counted (under 40 minutes here): every parser fed at least 1,000,000 inputs, then
# schemathesis against every admin API and the portal on a running lab system. Prints inputs=… crashes=…
# and the number of generated requests; fails on any crash, 500 or unauthenticated success.
fuzz: peers
	$(UV) run --frozen python tests/fuzz/run.py --inputs 1000000 --minutes 28
	LAZARETTO_SCHEMATHESIS_EXAMPLES=200 $(UV) run --frozen pytest -q -s tests/security/test_api_fuzz.py

run: peers
	$(UV) run --frozen python -m lazaretto_lab.run $(RUN_ARGS)

bench-e2e: peers
	$(UV) run --frozen python bench/e2e.py

bench-snort: peers
	$(UV) run --frozen python bench/snort.py

bench-smtp: peers
	$(UV) run --frozen python bench/smtp.py

bench-cmts: peers
	$(UV) run --frozen python bench/cmts.py

bench-vs: peers
	$(UV) run --frozen python bench/vs.py

bench-policy: peers
	$(UV) run --frozen python bench/policy.py

bench-provisioner: peers
	$(UV) run --frozen python -P bench/provisioner.py
