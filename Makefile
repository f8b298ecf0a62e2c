# Two commands: `make demo` and `make test`. Both create .venv and install hpcvit into it first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo test bench clean data-top data-qg data-egamma data-mass data-hits

$(BIN)/.installed: pyproject.toml hpcvit/data/_reorder.c
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

# Physics data sets generated here with Pythia 8 (about 2-4 minutes each on 2 cores).
data-top: install
	$(BIN)/hpcvit data generate --process top-vs-qcd -n 8000 --seed 1 -o data/top_vs_qcd_n8000.parquet

data-qg: install
	$(BIN)/hpcvit data generate --process quark-vs-gluon -n 6000 --seed 2 -o data/quark_gluon_n6000.parquet

# Detector-level sets simulated here (about a minute each on 2 cores).
data-egamma: install
	$(BIN)/hpcvit data generate --process electron-vs-photon -n 16000 --seed 1 -o data/egamma

data-mass: install
	$(BIN)/hpcvit data generate --process diphoton-mass -n 4000 --seed 1 -o data/diphoton_mass_n4000_seed1.parquet

# Calorimeter hits of jets through an ILD-like barrel, per-event hit lists in the seed's HDF5 layout (seed 003).
data-hits: install
	$(BIN)/hpcvit data generate --process calo-hits -n 20000 --seed 1 --jet-energy 10 30 --particles 2 6 --ecal-cell-mm 10 -o data/calo_hits_n20000_seed1.h5
