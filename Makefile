# The few commands a newcomer needs. `make test` and `make serve` set up .venv first (idempotent).
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# torch: the CPU wheel from PyTorch's CPU index (`torch==2.13.0` from PyPI on Linux is the CUDA build, several
# GB of NVIDIA libraries). When that index does not answer, the plain pin from the configured indexes (a local
# wheel set-up, as on CI machines, or PyPI's CUDA build as the last resort, with a warning).
# A CUDA wheel instead: make setup TORCH_INDEX=https://download.pytorch.org/whl/cu130
TORCH_PIN := torch==2.13.0
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
STAMP := $(VENV)/.setup-done

.PHONY: setup system test test-slow lint serve bench tiny-model clean

setup: system $(STAMP)

# redis-server, nginx, chromium, prometheus, podman, ...: the tests run them for real. The list and the
# install (apt as root; otherwise the exact command to run) live in the script.
system:
	scripts/system_packages.sh

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q --timeout 15 --retries 1 --index-url "$(TORCH_INDEX)" "$(TORCH_PIN)" \
	  || { echo "make setup: $(TORCH_INDEX) did not answer; $(TORCH_PIN) from the configured indexes" \
	       "(on PyPI for Linux that is the CUDA build)" >&2; $(BIN)/python -m pip install -q "$(TORCH_PIN)"; }
	$(BIN)/python -m pip install -q -e ".[train,export,serve,dev]" "$(TORCH_PIN)"
	# only for the LPIPS linear-head weight files it ships; --no-deps keeps torchvision out
	$(BIN)/python -m pip install -q --no-deps lpips
	touch $(STAMP)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy rsd service
	$(BIN)/lint-imports

test: lint
	$(BIN)/pytest -q

test-slow: setup
	$(BIN)/pytest -q -m slow

serve: setup
	$(BIN)/rsd serve

bench: setup
	$(BIN)/python bench/core_bench.py

tiny-model: setup
	scripts/tiny_model.sh

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache
