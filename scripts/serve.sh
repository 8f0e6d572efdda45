#!/usr/bin/env bash
# Set up .venv if needed, then start the server. Extra arguments go to `python -m fastvc.server`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/python -m fastvc.server --config server.toml "$@"
