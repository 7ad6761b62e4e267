# Two entry points: `make study` and `make test`. Each does its own set-up on a fresh clone
# (venv, dependencies, data); every set-up step is guarded by a stamp or a check.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
PROFILE ?= quick
STUDY ?=
PYTEST_ARGS ?=
# WHEELHOUSE=path: a machine without internet installs from the folder `make wheelhouse` wrote, on
# top of its own PyTorch (the venv sees the system's site packages; torch is never replaced).
WHEELHOUSE ?=

.PHONY: setup data system-packages test test-fast study report dashboard bench gpu-check wheelhouse clean-venv

$(BIN)/python:
	$(PYTHON) -m venv $(if $(WHEELHOUSE),--system-site-packages) $(VENV)

# Re-installs only when pyproject.toml (or the wheelhouse) changes. Then builds the C++ CPU kernels
# (about 40 s, cached by torch; rebuilt on first use if their sources change); without a compiler
# it says so and routing and the DFT convolution run on PyTorch ops.
$(INSTALLED): pyproject.toml $(if $(WHEELHOUSE),$(WHEELHOUSE)/manifest.json) | $(BIN)/python
ifneq ($(WHEELHOUSE),)
	$(BIN)/python -m bench.wheelhouse install $(WHEELHOUSE)
else
	$(BIN)/python -m pip install --upgrade --quiet pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
endif
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

# Checks the IDX files and converts them from the first reachable source when missing. With a
# wheelhouse (offline), only the datasets it carries, and no apt-get.
data: $(INSTALLED) $(if $(WHEELHOUSE),,system-packages)
	$(BIN)/python -m studies data $(if $(WHEELHOUSE),--dataset mnist \
		$(if $(wildcard $(WHEELHOUSE)/data/FashionMNIST),--dataset fashion_mnist))

# Two pytest processes (pytest-xdist), one thread each, a test file per process at a time (a
# file's fixtures stay in one process); PYTEST_WORKERS=0 runs the suite in this process.
# `make test` runs everything; `make test-fast` leaves out the end-to-end tests (marked `e2e`:
# subprocess training runs, the PostgreSQL server, whole studies trained in the test process),
# the loop to run while editing.
PYTEST_WORKERS ?= 2
test: data
	$(BIN)/python -m pytest $(if $(filter-out 0,$(PYTEST_WORKERS)),-n $(PYTEST_WORKERS) --dist loadfile) $(PYTEST_ARGS)

test-fast: data
	$(BIN)/python -m pytest -m "not e2e" $(if $(filter-out 0,$(PYTEST_WORKERS)),-n $(PYTEST_WORKERS) --dist loadfile) $(PYTEST_ARGS)

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

# optuna-dashboard on the profile's storage (STORAGE= another), at http://127.0.0.1:$(DASHBOARD_PORT)/;
# installed into the venv on first use (it only reads and browses; nothing else needs it).
DASHBOARD_PORT ?= 8080
dashboard: $(INSTALLED)
	@$(BIN)/python -c "import optuna_dashboard" 2>/dev/null || $(BIN)/python -m pip install --quiet -e '.[dashboard]'
	$(BIN)/python -m studies dashboard --profile $(PROFILE) $(if $(STORAGE),--storage $(STORAGE)) --port $(DASHBOARD_PORT)

BENCH_ARGS ?=
# Throughput tables: results/$(PROFILE)/throughput-<device>-<dtype>[-compiled].{csv,md}
bench: $(INSTALLED)
	$(BIN)/python -m bench --profile $(PROFILE) $(BENCH_ARGS)

# The prepared check for a CUDA machine (bench/gpu_check.py, planned within 8 minutes on one H200):
# training speeds, the cuda tests, the CUDA bench, each stage in its own process under its own time
# limit; writes OUT (summary.md, logs/). Without CUDA it names what it skipped. Where the machine
# brings its own PyTorch and no venv: `python3 -m bench.gpu_check --out DIR`.
OUT ?= results/gpu
gpu-check: $(INSTALLED)
	$(BIN)/python -m bench.gpu_check --out $(OUT)

# On a machine with a package index: wheelhouse/, what a GPU machine without internet needs beyond
# its own PyTorch stack, and MNIST (bench/wheelhouse.py; default Python 3.12, manylinux_2_28_x86_64,
# within 40 MB). WHEELHOUSE_ARGS: e.g. --python 3.11, --fashion-mnist, --add psycopg2-binary.
WHEELHOUSE_ARGS ?=
wheelhouse: data
	$(BIN)/python -m bench.wheelhouse build $(WHEELHOUSE_ARGS)

clean-venv:
	rm -rf $(VENV)
