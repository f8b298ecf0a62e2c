# Two commands: `make demo` and `make test`. Both create .venv and install hpcvit into it first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo test bench clean

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,generate]'
	touch $@

install: $(BIN)/.installed

demo: install
	$(BIN)/hpcvit validate jobs/smoke.yaml
	$(BIN)/hpcvit submit jobs/smoke.yaml --wait

test: install
	$(BIN)/python -m pytest -q -ra

bench: install
	$(BIN)/python benchmarks/sweep_scale.py

clean:
	rm -rf runs mlruns .pytest_cache
