# Two front-door targets: `make run` starts the whole system, `make test` passes the tests.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: run test test-fast bench bench-api bench-aws install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[test,deploy]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/nommer run

test: $(STAMP)
	$(VENV)/bin/pytest

# The in-process suites only; the process and whole-system suites take minutes.
test-fast: $(STAMP)
	$(VENV)/bin/pytest tests/contract tests/unit

bench: $(STAMP)
	$(VENV)/bin/python bench/embedded.py
	$(VENV)/bin/python bench/renditions.py
	$(VENV)/bin/python bench/api.py

# GET /jobs/<id> of the real API against a bare Bottle app, same server and threads.
bench-api: $(STAMP)
	$(VENV)/bin/python bench/api.py

bench-aws: $(STAMP)
	$(VENV)/bin/python bench/aws.py

clean:
	rm -rf $(VENV) var build *.egg-info
