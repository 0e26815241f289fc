# Set-up and entry points. `make test` and `make train` build .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
ARGS ?= --save saved_model --reconstruct

.PHONY: venv train analyze test bench clean

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt constraints.txt
	$(PYTHON) -m venv $(VENV)
	PIP_CONSTRAINT=$(CURDIR)/constraints.txt $(PY) -m pip install -q -r requirements.txt
	touch $@

train: venv
	$(PY) train.py $(ARGS)

analyze: venv
	$(PY) analyze.py --load saved_model $(ANALYZE_ARGS)

test: venv
	$(PY) -m pytest -m "not gpu and not slow" $(PYTEST_ARGS)

bench: venv
	$(PY) bench/bench_cpu.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV)
