# lit_linreg: `make train` and `make test` do all the set-up on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: help install train test test-slow faults lint bench serve tensorboard clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, pinned: on a CPU machine the CPU build, never a multi-GB CUDA one pulled in as a dependency
	$(PY) -m pip install --quiet -c constraints.txt torch==2.13.0
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev,serve]'
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install the package with pinned versions (idempotent)

train: install  ## train the toy config (f(5), as the notebooks) and the table config, printing a prediction of each
	$(PY) -m lit_linreg fit --config configs/toy.yaml --trainer.enable_progress_bar false
	$(PY) -m lit_linreg predict --config configs/toy.yaml --ckpt_path last --trainer.enable_progress_bar false
	@awk -F, 'NR == 2 {printf "Prediction after training: f(%g) = %.3f\n", $$1, $$2}' \
		"$$(ls -td runs/lightning_logs/version_*/ | head -1)predictions.csv"
	$(PY) -m lit_linreg fit --config configs/table.yaml --trainer.enable_progress_bar false
	$(PY) -m lit_linreg predict --config configs/table.yaml --ckpt_path best --trainer.enable_progress_bar false \
		--data.predict_path data/new_houses.csv
	@awk -F, 'NR == 2 {printf "Predicted price_k of house N0001 (120 m2, 4 rooms, 20 years, 8.5 km): %.4f\n", $$NF}' \
		"$$(ls -td runs/lightning_logs/version_*/ | head -1)predictions.csv"

test: install  ## run the test suite (slow tests excluded), printing the 10 slowest tests
	$(PY) -m pytest -q --durations=10

test-slow: install  ## run only the slow tests
	$(PY) -m pytest -q -m slow

faults: install  ## run every test, slow ones too, and print the table of faults injected and work lost
	mkdir -p runs
	LIT_LINREG_FAULT_REPORT=runs/faults.md $(PY) -m pytest -q -m 'slow or not slow'
	@cat runs/faults.md

lint: install  ## ruff check and format check
	$(PY) -m ruff check lit_linreg tests benchmarks
	$(PY) -m ruff format --check lit_linreg tests benchmarks

bench: install  ## time and measure lit_linreg against plain PyTorch and Lightning (long: run it on a quiet machine)
	$(PY) benchmarks/bench.py
	$(PY) benchmarks/convergence.py
	$(PY) benchmarks/wide.py  # the exact reference at 16,384 x 2,046 against one numpy.linalg.qr
	$(PY) benchmarks/full_batch_step.py  # a full-batch step by row blocks against the plain layer
	$(PY) benchmarks/streamed_full_batch.py  # configs/table.yaml streamed: peak RSS at 4x the rows, epoch against read + in memory
	$(PY) benchmarks/serve.py  # `serve` against a bare LitServe API: memory, ready time, requests/s, p99

SERVE_CONFIG ?= configs/table.yaml
serve: install  ## serve the newest best checkpoint of SERVE_CONFIG (configs/table.yaml) on 127.0.0.1:8000
	$(PY) -m lit_linreg serve --config $(SERVE_CONFIG) --ckpt_path best

tensorboard: install  ## serve the dashboards of runs/ on 127.0.0.1:6006
	$(PY) -m tensorboard.main --logdir runs --host 127.0.0.1 --port 6006

clean:  ## remove runs, caches and .venv
	rm -rf runs lightning_logs .pytest_cache .ruff_cache .hypothesis $(VENV) *.egg-info
