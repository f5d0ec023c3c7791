# `make test` and `make demo` bootstrap .venv themselves (CPU torch 2.13.0, then the package).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.rimrl-installed

.PHONY: setup test test-slow lint demo study clean

DEMO_STEPS ?= 200000
DEMO_RUN := runs/rimrl-Pickup-Train-v0/rim/seed0

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

# Train the default RIM agent on the distractor train variant, then evaluate it in and out of
# distribution (train, more, novel, more+novel; 100 episodes each, sampled actions as in the
# training-time evaluation) and plot the result.
demo: $(STAMP)
	$(PY) train.py --env rimrl/Pickup-Train-v0 --core rim --seed 0 -n $(DEMO_STEPS) --overwrite
	$(PY) evaluate.py $(DEMO_RUN) --episodes 100 --stochastic --plot --out $(DEMO_RUN)/eval

# The out-of-distribution study: lstm gru rim srm x seeds 0-4 on rimrl/Pickup-Train-v0, 300k steps
# each, every model evaluated on the 4 variants (benchmarks/README.md). Rerunning it resumes.
# Options go in STUDY_ARGS, e.g. make study STUDY_ARGS="--cores lstm rim --seeds 0 1 2".
STUDY_ARGS ?=
study: $(STAMP)
	$(PY) benchmarks/study.py $(STUDY_ARGS)

clean:
	rm -rf $(VENV) runs build *.egg-info
