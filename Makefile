# The README's two commands: `make demo` and `make test`. Both install first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Used only when no torch is importable from $(PYTHON): the pair known to work with
# mosaicml-streaming (which imports torchvision). A GPU user's own torch is kept.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
export DS_BUILD_OPS ?= 0

.PHONY: setup demo test test-fast slurm-deps clean
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@if $(PYTHON) -c "import torch" 2>/dev/null; then \
	  echo "keeping the torch of $(PYTHON)"; $(PYTHON) -m venv --system-site-packages $(VENV); \
	else \
	  $(PYTHON) -m venv $(VENV) && $(PY) -m pip install -q $(TORCH_SPEC); \
	fi
	$(PY) -m pip install -q -e ".[train,dev]"
	touch $@

demo: setup
	$(VENV)/bin/coordinator run configs/demo.yaml --run-dir runs/demo
	$(VENV)/bin/coordinator status runs/demo

# The SLURM tests start a real single-machine cluster from Debian's slurm-wlm + munge.
slurm-deps:
	@command -v slurmctld >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get install -y -q slurm-wlm munge >/dev/null 2>&1 || \
	     (apt-get update -q >/dev/null && apt-get install -y -q slurm-wlm munge >/dev/null)) \
	    || echo "could not install slurm-wlm; SLURM tests will be skipped"; \
	  else echo "slurm-wlm not installed and not root: SLURM tests will be skipped"; fi; }

test: setup slurm-deps
	$(PY) -m pytest -q tests

test-fast: setup
	$(PY) -m pytest -q -m "not slurm and not slow" tests

clean:
	rm -rf runs .pytest_cache
