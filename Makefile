# Two entry points a new user needs; each creates (or reuses) the virtualenv in .venv itself.
#   make demo   the whole pipeline on built-in synthetic data -> demo-out/index.html
#   make test   the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.lowprec-installed

.PHONY: demo test env clean

env: $(STAMP)

# torch==2.13.0 first: pip then keeps the CPU build for the `torch>=2.13,<2.14` requirement.
$(STAMP): pyproject.toml requirements-torchrec.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "torch==2.13.0"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	$(BIN)/python -m pip install --quiet --no-deps -r requirements-torchrec.txt \
		|| echo "torchrec could not be installed: the real-TorchRec import tests will skip"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/lowprec demo --out demo-out

# Two workers, one torch thread each (the machine's 2 cores, without oversubscribing them); tests
# that exercise threading set their thread counts themselves. A single test: .venv/bin/python -m pytest PATH
test: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n 2 --dist worksteal

clean:
	rm -rf $(VENV) demo-out
