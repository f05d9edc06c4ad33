# The two commands a fresh machine needs (see README):
#   make demo   set up .venv and run the main job
#   make test   set up .venv and run the whole test suite
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test test-fast

setup:
	@scripts/setup.sh

demo: setup
	$(VENV)/bin/focalexp sweep experiments/focal_levels.yaml --cluster local

# As root, the SLURM tests get a real local cluster (installed and started by scripts/slurm-local.sh);
# elsewhere they are skipped unless FOCALEXP_REQUIRE_SLURM=1 (CI), which makes a missing cluster fail.
# Likewise the Fashion-MNIST tests need Debian's dataset-fashion-mnist (setup installs it as root) and skip
# without it unless FOCALEXP_REQUIRE_DATA=1 (CI).
test: setup
	@if [ "$$(id -u)" = 0 ] && [ -z "$${FOCALEXP_NO_SLURM:-}" ]; then scripts/slurm-local.sh start; \
	else echo "==> not root: the SLURM tests will skip (sudo scripts/slurm-local.sh start gives a cluster)"; fi
	$(PY) -m pytest

test-fast: setup
	$(PY) -m pytest -m "not slow"
