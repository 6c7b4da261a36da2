# Two entry points for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
RUN ?= runs/demo
export OPENBLAS_NUM_THREADS ?= 1

.PHONY: venv demo demo-obd test test-slow bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	# obp only carries the Open Bandit Dataset sample files; it is never imported.
	$(PY) -m pip install -q --no-deps obp==0.4.1
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m puts_jax.demo --workdir $(RUN)

demo-obd: $(STAMP)
	$(PY) -m puts_jax.demo --source obd --workdir runs/demo-obd

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

bench: $(STAMP)
	$(PY) -m bench all --quick

clean:
	rm -rf runs .pytest_cache
