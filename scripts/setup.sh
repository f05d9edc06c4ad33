#!/usr/bin/env bash
# Create .venv (once) and install focalexp with its test extras into it (again when pyproject changes).
# Usage: scripts/setup.sh            (PYTHON=python3.11 scripts/setup.sh to pick the interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"

"$PYTHON" - <<'PY' || { echo "focalexp needs Python >= 3.10 (set PYTHON=...)" >&2; exit 2; }
import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)
PY

if [ ! -x "$VENV/bin/python" ]; then
    echo "==> creating $VENV"
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
fi

stamp="$VENV/.focalexp-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "==> installing focalexp and its dependencies into $VENV (torch: a minute or more the first time)"
    "$VENV/bin/python" -m pip install --quiet -e '.[test]'
    touch "$stamp"
fi
# Fashion-MNIST (data.dataset: fashion_mnist, experiments/fashion_focal_levels.yaml, its tests) is Debian's
# dataset-fashion-mnist: installed here when this is root on a machine with apt and it is not installed yet,
# quietly; set-up never fails for it (without it, those runs say how to install it and the tests skip)
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
        && [ ! -e /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
    echo "==> installing Fashion-MNIST (apt-get install dataset-fashion-mnist)"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1; then
        apt-get update -qq >/dev/null 2>&1 || true
        apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 \
            || echo "==> could not install dataset-fashion-mnist with apt-get; the Fashion-MNIST runs and tests need it" >&2
    fi
fi

echo "==> ready: $("$VENV/bin/python" -c 'import torch, timm, focalexp; print(f"focalexp {focalexp.__version__}, torch {torch.__version__}, timm {timm.__version__}")')"
