# The two commands a fresh machine needs (see README):
#   make demo   set up .venv and run the main job
#   make test   set up .venv and run the whole test suite
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test test-fast

setup:
	@scripts/setup.sh

demo: setup
	$(VENV)/bin/focalexp flops --model focalnet_t_srf

test: setup
	$(PY) -m pytest

test-fast: setup
	$(PY) -m pytest -m "not slow"
