# Set-up from nothing into .venv, then act. Override TORCH_SPEC for a CUDA build,
# e.g. `make test TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cu124"`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0

.PHONY: install install-run test test-slow test-all demo bench gpu-check clean

# What running pointcoc needs: torch, the package and numba (the compiled CPU FPS/kNN). pip shows its progress.
$(VENV)/.installed-run: pyproject.toml
	@echo "make: setting up $(VENV): $(TORCH_SPEC), then pointcoc[fast]"
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install $(TORCH_SPEC)
	$(PY) -m pip install -e ".[fast]"
	touch $@

# + what the tests use (pytest, triton, onnxruntime, scikit-image, ...).
$(VENV)/.installed: $(VENV)/.installed-run
	@echo "make: adding the test tools to $(VENV)"
	$(PY) -m pip install -e ".[test]"
	touch $@

install-run: $(VENV)/.installed-run
install: $(VENV)/.installed

test: install
	$(PY) -m pytest -q

test-slow: install
	$(PY) -m pytest -q -m slow

# Real data end to end, through the installed `pointcoc` command: PointMLP-elite on the shipped modelnet10
# (the ten ModelNet10 classes of ModelNet40, 3,991 train / 908 test shapes); the recipe file is
# pointcoc/recipes/demo.toml (--threads 1: CPU results are bitwise reproducible only for a fixed torch thread count).
demo: install-run
	$(VENV)/bin/pointcoc train --config demo --overwrite
	$(VENV)/bin/pointcoc evaluate runs/demo/last.pt --votes 1 --threads 1

bench: install-run
	$(PY) scripts/benchmark.py --quick

# Everything that needs a GPU in one run of at most ~8 minutes (docs/gpu_check.md). It uses the GPU
# machine's own python3 and CUDA build of torch as they are: no venv, no torch pin, no install (it
# works offline); the checkout is imported through PYTHONPATH. Writes gpu_check_out/gpu_check.{json,md}.
GPU_PYTHON ?= python3
gpu-check:
	PYTHONPATH=$(CURDIR) $(GPU_PYTHON) scripts/gpu_check.py --out gpu_check_out

clean:
	rm -rf $(VENV) build *.egg-info
