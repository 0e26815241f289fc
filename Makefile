# Set-up and entry points. `make train`, `make analyze` and `make test` build the
# virtual environment on first use (`make test` adds mpi4py and MPICH): PYTHON picks the
# interpreter (3.11 to 3.13), VENV its folder, e.g. `make test PYTHON=python3.12
# VENV=.venv-3.12`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
ARGS ?= --save saved_model --reconstruct
# `make train` and `make analyze` run on GPU 0 where CuPy in the venv finds a GPU, else on
# the CPU; GPU=-1 forces the CPU, GPU=1 picks another GPU (-g in ARGS also wins).
GPU ?= $(shell $(PY) -c 'import cupy; assert cupy.cuda.runtime.getDeviceCount() > 0' \
	>/dev/null 2>&1 && echo 0 || echo -1)
# `make analyze` analyzes your saved_model, or the model that ships in models/.
SHIPPED_MODEL := models/capsnet_mnist.npz
MODEL ?= $(if $(wildcard saved_model),saved_model,$(SHIPPED_MODEL))

.PHONY: venv mpi train analyze test test-gpu bench clean

venv: $(VENV)/.installed

# The pinned dependencies, then this package (editable) from pyproject.toml. Chainer's
# source build needs setuptools<81: constraints.txt holds it there.
$(VENV)/.installed: requirements.txt constraints.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	PIP_CONSTRAINT=$(CURDIR)/constraints.txt $(PY) -m pip install -q \
		--disable-pip-version-check -r requirements.txt -e .
	touch $@

# The tests also need the optional extra [affnist] (SciPy, for the affNIST .mat reader),
# so that its tests run rather than skip; the base install stays as it is.
$(VENV)/.installed-affnist: $(VENV)/.installed pyproject.toml
	PIP_CONSTRAINT=$(CURDIR)/constraints.txt $(PY) -m pip install -q \
		--disable-pip-version-check -e '.[affnist]'
	touch $@

train: venv
	@echo "make train: $(if $(filter -1,$(GPU)),on the CPU (no GPU that CuPy finds; see README.md, GPU),on GPU $(GPU))"
	$(PY) train.py -g $(GPU) $(ARGS)

analyze: venv
	@echo "make analyze: analyzing $(MODEL)$(if $(filter $(SHIPPED_MODEL),$(MODEL)), (the model that ships with the project; train your own with make train),)"
	$(PY) analyze.py -g $(GPU) --load $(MODEL) $(ANALYZE_ARGS)

# mpi4py and MPICH (the `mpi` extra), so that the tests of train.py under mpiexec run.
mpi: $(VENV)/.installed-mpi

$(VENV)/.installed-mpi: $(VENV)/.installed
	PIP_CONSTRAINT=$(CURDIR)/constraints.txt $(PY) -m pip install -q \
		--disable-pip-version-check -e '.[mpi]'
	touch $@

# The browser tests of explorer.html need the extra [browser] (Playwright) and the
# system's Chromium (/usr/bin/chromium: `apt-get install chromium`, which .ci/run does);
# without them they are skipped, saying so.
$(VENV)/.installed-browser: $(VENV)/.installed pyproject.toml
	PIP_CONSTRAINT=$(CURDIR)/constraints.txt $(PY) -m pip install -q \
		--disable-pip-version-check -e '.[browser]'
	touch $@

test: venv mpi $(VENV)/.installed-affnist $(VENV)/.installed-browser
	$(PY) -m pytest -m "not gpu and not slow" --durations=15 $(PYTEST_ARGS)

# The gpu tests alone, in a venv with CuPy added (README.md, "GPU"). Without CuPy they
# would all be skipped, so that is refused rather than reported as a pass.
test-gpu: venv
	@$(PY) -c 'import cupy' 2>/dev/null || { echo "make test-gpu: CuPy is not installed in $(VENV); add it as README.md, GPU, says"; exit 1; }
	$(PY) -m pytest -m gpu -rs $(PYTEST_ARGS)

bench: venv
	$(PY) bench/bench_cpu.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV)
