# Two entry points for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
CLI := $(VENV)/bin/puts-jax
STAMP := $(VENV)/.installed-stamp
RUN ?= runs/demo
export OPENBLAS_NUM_THREADS ?= 1
# bash's `time` keyword (sh has none and fell back to GNU time's verbose output)
SHELL := /bin/bash
export TIMEFORMAT := stage wall time %1Rs

.PHONY: venv demo demo-obd test test-slow bench obp-agreement clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	# obp only carries the Open Bandit Dataset sample files; it is never imported.
	$(PY) -m pip install -q --no-deps obp==0.4.1
	touch $(STAMP)

# The main job, stage by stage (each line is a documented CLI command; see README).
DEMO_LOGS ?= 1000000
demo: $(STAMP)
	@mkdir -p $(RUN)
	@echo "== 1/7 simulate"; time $(CLI) simulate --out $(RUN)/data --n-logs $(DEMO_LOGS)
	@echo "== 2/7 train"; time $(PY) -m train --config default --logs $(RUN)/data/logs.parquet \
	    --heldout $(RUN)/data/heldout.parquet --workdir $(RUN)/train
	@echo "== 3/7 sweep"; time $(CLI) sweep --model $(RUN)/train/selected_model \
	    --logs $(RUN)/data/evaluation.parquet --out $(RUN)/frontier
	@echo "== 4/7 select"; $(CLI) policy select --frontier $(RUN)/frontier/frontier.json \
	    --maximize session_success --guardrail "clicks >= -10%" --out $(RUN)/selection.json
	@echo "== 5/7 publish"; $(CLI) policy publish --registry $(RUN)/policies \
	    --model $(RUN)/train/selected_model --frontier $(RUN)/frontier/frontier.json \
	    --logs $(RUN)/data/logs.parquet --selection $(RUN)/selection.json --reason "make demo"
	@echo "== 6/7 score"; time $(CLI) score --policy $(RUN)/policies \
	    --requests $(RUN)/data/requests.parquet --out $(RUN)/scored.parquet
	@echo "== 7/7 ground truth"; $(CLI) truth --data $(RUN)/data --model $(RUN)/train/selected_model \
	    --frontier $(RUN)/frontier/frontier.json --registry $(RUN)/policies

OBD_RUN ?= runs/demo-obd
demo-obd: $(STAMP)
	@mkdir -p $(OBD_RUN)
	@echo "== 1/4 convert the Open Bandit Dataset sample"; $(CLI) data obd --out $(OBD_RUN)/data
	@echo "== 2/4 split: the Q-network (also DR's reward model) never sees the evaluation rows"
	$(CLI) data split --logs $(OBD_RUN)/data/logs.parquet --out-a $(OBD_RUN)/data/train.parquet \
	    --out-b $(OBD_RUN)/data/evaluation.parquet --share 0.5
	@echo "== 3/4 train"; $(PY) -m train --config obd --logs $(OBD_RUN)/data/train.parquet \
	    --heldout $(OBD_RUN)/data/train.parquet --workdir $(OBD_RUN)/train
	@echo "== 4/4 sweep (exact Clopper-Pearson intervals on matched clicks)"
	$(CLI) sweep --model $(OBD_RUN)/train/selected_model \
	    --logs $(OBD_RUN)/data/evaluation.parquet --out $(OBD_RUN)/frontier

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

obp-agreement: $(STAMP)
	# Our IPS/SNIPS/DR vs the Open Bandit Pipeline's on the OBD sample (obp in a throwaway venv).
	$(PY) scripts/obp_agreement.py

bench: $(STAMP)
	$(PY) -m bench all --quick

clean:
	rm -rf runs .pytest_cache
