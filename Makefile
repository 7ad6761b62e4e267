# Two entry points: `make study` and `make test`. Each does its own set-up on a fresh clone
# (venv, dependencies, data); every set-up step is guarded by a stamp or a check.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
PROFILE ?= quick
STUDY ?=
PYTEST_ARGS ?=

.PHONY: setup data system-packages test study report bench gpu-check clean-venv

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Re-installs only when pyproject.toml changes. Then builds the C++ CPU kernels (about 40 s,
# cached by torch; rebuilt on first use if their sources change); without a compiler it says so
# and routing and the DFT convolution run on PyTorch ops.
$(INSTALLED): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --upgrade --quiet pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	$(BIN)/python -m models.cpu.build
	touch $@

setup: $(INSTALLED)

# Fashion-MNIST's offline source is a Debian package; install it when missing and we may.
system-packages:
	@if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		echo "installing Debian's dataset-fashion-mnist (offline Fashion-MNIST source)"; \
		apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
		{ apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null; } || \
		echo "warning: could not install dataset-fashion-mnist; Fashion-MNIST needs its files in data/FashionMNIST/raw"; \
	fi

# Checks the IDX files and converts them from the first reachable source when missing.
data: $(INSTALLED) system-packages
	$(BIN)/python -m studies data

# Two pytest processes (pytest-xdist), one thread each, a test file per process at a time (a
# file's fixtures stay in one process); PYTEST_WORKERS=0 runs the suite in this process.
PYTEST_WORKERS ?= 2
test: data
	$(BIN)/python -m pytest $(if $(filter-out 0,$(PYTEST_WORKERS)),-n $(PYTEST_WORKERS) --dist loadfile) $(PYTEST_ARGS)

# STUDY= one study (default: all built-in), DATASET= override the spec's dataset,
# STORAGE= an Optuna storage URL or journal:<path> (default: SQLite under results/<profile>).
STUDY_ARGS = --profile $(PROFILE) $(if $(STUDY),--study $(STUDY)) $(if $(DATASET),--dataset $(DATASET)) \
	$(if $(STORAGE),--storage $(STORAGE))
# WORKERS=N: N worker processes on this machine share the studies.
WORKERS ?= 1

# RETRY_FAILED=1: points that failed for good (diverged, or crashed three times) get another round.
RETRY_FAILED ?=

# The main job: trains what is missing (never retrains), then rebuilds the report.
study: data
	$(BIN)/python -m studies run $(STUDY_ARGS) --workers $(WORKERS) $(if $(RETRY_FAILED),--retry-failed)

# Tables, figures and REPORT.md from the stored trials, without training.
report: $(INSTALLED)
	$(BIN)/python -m studies report $(STUDY_ARGS)

BENCH_ARGS ?=
# Throughput tables: results/$(PROFILE)/throughput-<device>-<dtype>[-compiled].{csv,md}
bench: $(INSTALLED)
	$(BIN)/python -m bench --profile $(PROFILE) $(BENCH_ARGS)

# The prepared check for a CUDA machine (bench/gpu_check.py, about 8 minutes on one H200): the cuda
# tests, one-epoch training speeds, the CUDA bench; writes results/gpu/. Without CUDA it says what it
# skipped. Where the machine brings its own PyTorch and no venv: `python3 -m bench.gpu_check`.
gpu-check: $(INSTALLED)
	$(BIN)/python -m bench.gpu_check

clean-venv:
	rm -rf $(VENV)
