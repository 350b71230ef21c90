#!/usr/bin/env bash
# Sets up .venv with the test tools and runs the whole test suite (CPU only, no downloads).
# pytest's own exit status is returned: 5 (no tests collected) fails like any other error.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
exec .venv/bin/python -m pytest -q "$@"
