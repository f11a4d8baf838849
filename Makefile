# Two commands do all the set-up on a fresh machine:
#   make run    train + evaluate a small default experiment (~1 min on 2 CPU cores), print results
#   make test   the fast CPU test suite
#   make reduced  the paper's sweep at CPU scale, with its report
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Offline copies of MNIST / Fashion-MNIST beside the repo, when present; else ./data (downloads).
ROBUSTHP_DATA_DIR ?= $(if $(wildcard ../shared/datasets),$(abspath ../shared/datasets),$(abspath data))
export ROBUSTHP_DATA_DIR

.PHONY: run reduced test test-all bench lint clean gpu-bundle

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[test]"
	$(PY) -m pip install --quiet --no-deps -c constraints.txt torchattacks  # see pyproject's test extra
	touch $@

run: $(VENV)/.installed
	$(PY) -m robusthp.run experiment=quick

# the paper's sweep at CPU scale (MNIST / M1, 27 runs, ~20 min on 2 cores), then its table and figures
reduced: $(VENV)/.installed
	$(PY) -m robusthp.run -m experiment=paper_reduced_cpu hydra/launcher=parallel
	$(PY) -m robusthp.report outputs/sweeps/paper_reduced_cpu

test: $(VENV)/.installed
	$(PY) -m pytest -q

test-all: $(VENV)/.installed
	$(PY) -m pytest -q -m "not gpu"

bench: $(VENV)/.installed
	$(PY) benchmarks/train_throughput.py
	$(PY) benchmarks/attacks.py
	$(PY) benchmarks/hessian.py
	$(PY) benchmarks/model_step.py
	$(PY) benchmarks/sweep_throughput.py

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) outputs/runs outputs/sweeps

# what benchmarks/gpu_checks.sh needs on a lent GPU machine (Python 3.12, torch and Lightning
# there, nothing fetched): the pure-Python wheels it lacks, at this venv's versions, and MNIST
GPU_WHEELS = hydra-core omegaconf hydra-joblib-launcher PyHessian
gpu-bundle: $(VENV)/.installed
	rm -rf .gpu && mkdir -p .gpu/wheels
	$(PY) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
		--implementation cp --platform manylinux2014_x86_64 -d .gpu/wheels \
		$$($(PY) -c "import importlib.metadata as m; print(' '.join(n + '==' + m.version(n) for n in '$(GPU_WHEELS)'.split()))")
	$(PY) -m pip wheel -q --no-deps -w .gpu/wheels \
		antlr4-python3-runtime==$$($(PY) -c "import importlib.metadata as m; print(m.version('antlr4-python3-runtime'))")
	tar czf .gpu/mnist.tar.gz -C $(ROBUSTHP_DATA_DIR) MNIST
	du -sh .gpu
