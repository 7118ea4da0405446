# Set-up and entry points. `make run` and `make test` each create or update the virtual
# environment from the project's own files first, then do their job.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CORES ?= all
# Two pytest workers (pytest-xdist), each running one test file at a time, the longest files
# first (tests/conftest.py): the workflow and SLURM tests wait on snakemake and the cluster much
# of the time, and the unit tests run beside them. PYTEST_PARALLEL= runs them one after another.
PYTEST_PARALLEL ?= -n 2 --dist loadfile --no-loadscope-reorder

.PHONY: run test test-fast lint dag bench gallery clean-venv

$(STAMP): pyproject.toml requirements/lock.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	# the CPU build of torch first, so that nothing below pulls a CUDA build
	$(BIN)/python -m pip install --quiet "torch==2.13.0"
	$(BIN)/python -m pip install --quiet -c requirements/lock.txt -e ".[dev]"
	touch $(STAMP)

## run: the main job on config.yaml (offline default)
run: $(STAMP)
	$(BIN)/snakemake --cores $(CORES)
	$(BIN)/snakemake --cores $(CORES) --report results/report.html

## test: the whole test suite (unit + workflow + real-model tests + the workflow on a one-node
## SLURM cluster started on localhost: tests/slurm/run.py, which installs slurm-wlm and munge
## with apt-get where missing and skips, saying why, without root or passwordless sudo)
test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_PARALLEL)

test-fast: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_PARALLEL) -m "not slow and not workflow and not slurm"

lint: $(STAMP)
	$(BIN)/snakemake --lint
	$(BIN)/snakefmt --check Snakefile workflow/rules
	$(BIN)/ruff check workflow tests bench

## gallery: refresh the README's figures (docs/gallery/) and its results table from the last run
gallery: $(STAMP)
	$(BIN)/python -m saestab.gallery results/figures docs/gallery --summary results/summary.json --readme README.md

dag: $(STAMP)
	$(BIN)/snakemake --rulegraph | dot -Tsvg > rulegraph.svg

SAELENS_VENV := bench/.venv-saelens

# SAELens pins transformer-lens < 4, so the training bench drives it in a venv of its own.
$(SAELENS_VENV)/.installed:
	test -x $(SAELENS_VENV)/bin/python || $(PYTHON) -m venv $(SAELENS_VENV)
	$(SAELENS_VENV)/bin/python -m pip install --quiet "torch==2.13.0"
	$(SAELENS_VENV)/bin/python -m pip install --quiet "sae-lens==6.54.12"
	touch $@

## bench: every benchmark (needs `make run` first for the SmolLM2 cache)
bench: $(STAMP) $(SAELENS_VENV)/.installed
	OMP_WAIT_POLICY=PASSIVE $(BIN)/python bench/cache_throughput.py
	OMP_WAIT_POLICY=PASSIVE $(BIN)/python bench/train_throughput.py
	OMP_WAIT_POLICY=PASSIVE $(BIN)/python bench/parallel_jobs.py
	OMP_WAIT_POLICY=PASSIVE $(BIN)/python bench/relu_sparse.py
	OMP_WAIT_POLICY=PASSIVE $(BIN)/python bench/stability_scaling.py --quick
	OMP_WAIT_POLICY=PASSIVE $(BIN)/python bench/stability_scaling.py --compare-kernels --compare-blocking
	OMP_WAIT_POLICY=PASSIVE $(BIN)/python bench/variant_l0.py
	$(BIN)/python bench/saelens_compat.py

clean-venv:
	rm -rf $(VENV)
