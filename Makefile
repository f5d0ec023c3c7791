# `make test` and `make demo` bootstrap .venv themselves (CPU torch 2.13.0, then the package).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.rimrl-installed

.PHONY: setup test test-slow lint demo clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

lint: $(STAMP)
	$(PY) -m ruff check .

clean:
	rm -rf $(VENV) runs build *.egg-info
