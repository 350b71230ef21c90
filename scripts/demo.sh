#!/usr/bin/env bash
# Sets up .venv and runs `leafseg demo` on the synthetic world (extra arguments go to the demo).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/leafseg demo "$@"
