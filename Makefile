# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
# The virtualenv is created and the project installed (pinned by constraints.txt) on first use.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
ITEMS  ?= 100000

.PHONY: demo test bench bench-two-banks services clean pins mutate chaos

# Every dependency and the build tools (pip, setuptools, wheel) come from constraints.txt by hash
# (--require-hashes); the project itself is then installed editable with --no-deps and without build
# isolation, so nothing unpinned is fetched (pip refuses an editable install in hash-checking mode).
$(STAMP): setup.cfg pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --require-hashes --no-deps -r constraints.txt
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e . --config-settings editable_mode=compat
	$(BIN)/python -m pip check
	touch $(STAMP)

## Re-pins constraints.txt with every distribution's hash, after a dependency was added to it as name==version.
pins:
	test -x .venv-pins/bin/pip-compile || ($(PYTHON) -m venv .venv-pins && .venv-pins/bin/pip install -q pip-tools==7.7.0)
	grep -E '^[A-Za-z0-9_.-]+==' constraints.txt | sed 's/[ ;].*//' > .pins.in
	.venv-pins/bin/pip-compile -q --generate-hashes --allow-unsafe --strip-extras --no-header --no-emit-index-url --no-emit-find-links -o .pins.out .pins.in
	sed -n '1,/^# ---/p' constraints.txt > constraints.txt.new
	grep -v '^    # via' .pins.out | grep -v '^    #   ' >> constraints.txt.new
	mv constraints.txt.new constraints.txt
	rm -f .pins.in .pins.out

## Core simulator + cnbank bank simulator + the daemon, on SQLite under var/demo.
demo: $(STAMP)
	$(BIN)/python -m simulators.demo --dir var/demo

## Every test, on SQLite and on PostgreSQL (127.0.0.1:5432), with real loopback TCP/SFTP and sshd.
# Three pytest-xdist workers: the tests mostly wait on sockets, processes and the databases (a
# single worker spent 15.5 min of wall clock for 6.3 min of CPU). TEST_WORKERS=0 runs them in one.
TEST_WORKERS ?= 3
test: $(STAMP) services
	$(BIN)/python -m pytest -p no:cacheprovider -n $(TEST_WORKERS)

## Starts what the tests use if it is not running (PostgreSQL) and installs missing tools.
services:
	sh tests/services.sh

## One order of ITEMS items end to end; the last line printed is a JSON object of timings.
## DB=sqlite (the default) or a PostgreSQL server URL (a fresh database is made on it, dropped after).
bench: $(STAMP)
	$(BIN)/python bench/spine.py --items $(ITEMS) --db '$(DB)'

## Two banks at once (issue 13): a CN-item cnbank order and an ISO-transfer iso20022 order through
## the real daemon, each alone and then together (target: together <= 1.3x the slower alone).
CN  ?= 1000000
ISO ?= 100000
bench-two-banks: $(STAMP)
	$(BIN)/python bench/two_banks.py --cn $(CN) --iso $(ISO) --db '$(DB)'

## Mutation check of the rule-enforcing modules (not part of `make test`; about an hour on 2 cores).
## MODULES="--module gateway/rules.py" narrows it; the table of killed/survived is printed last.
mutate: $(STAMP) services
	$(BIN)/python tools/mutate.py --jobs 2 $(MODULES) --json var/mutate.json

## The fault campaign (not part of `make test`): the real daemon through bank, core, database and
## SIGKILL faults for DURATION seconds, checked against the banks' ledgers; table printed last,
## exit 1 on a violation. DB=sqlite or a PostgreSQL server URL (a fresh database is made on it).
SEED     ?= 1
DURATION ?= 300
DB       ?= sqlite
chaos: $(STAMP) services
	$(BIN)/python -m chaos.run --seed $(SEED) --duration $(DURATION) --db '$(DB)'

clean:
	rm -rf var build *.egg-info
