#!/usr/bin/env bash
# Set up .venv if needed, then run the whole test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/install-browser.sh  # Chromium for the demo page's browser test (skipped if it cannot be installed)
exec .venv/bin/python -m pytest -q "$@"
