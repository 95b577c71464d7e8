# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
# The virtualenv is created and the project installed (pinned by constraints.txt) on first use.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
ITEMS  ?= 100000

.PHONY: demo test bench services clean mutate

$(STAMP): setup.cfg pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[test]' --config-settings editable_mode=compat
	touch $(STAMP)

## Core simulator + cnbank bank simulator + the daemon, on SQLite under var/demo.
demo: $(STAMP)
	$(BIN)/python -m simulators.demo --dir var/demo

## Every test, on SQLite and on PostgreSQL (127.0.0.1:5432), with real loopback TCP/SFTP and sshd.
test: $(STAMP) services
	$(BIN)/python -m pytest -p no:cacheprovider

## Starts what the tests use if it is not running (PostgreSQL) and installs missing tools.
services:
	sh tests/services.sh

## One order of ITEMS items end to end; the last line printed is a JSON object of timings.
bench: $(STAMP)
	$(BIN)/python bench/spine.py --items $(ITEMS)

## Mutation check of the rule-enforcing modules (not part of `make test`; about an hour on 2 cores).
## MODULES="--module gateway/rules.py" narrows it; the table of killed/survived is printed last.
mutate: $(STAMP) services
	$(BIN)/python tools/mutate.py --jobs 2 $(MODULES) --json var/mutate.json

clean:
	rm -rf var build *.egg-info
