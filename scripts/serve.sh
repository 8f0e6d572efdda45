#!/usr/bin/env bash
# Set up .venv if needed, fetch the Seed-VC weights if the chosen engine needs them, then start the server.
# Extra arguments go to `python -m fastvc.server` (e.g. --port 9000 --engine synthetic).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
engine=$(.venv/bin/python - "$@" <<'PY'
import sys, tomllib
args = sys.argv[1:]
for i, arg in enumerate(args):
    if arg == "--engine" and i + 1 < len(args):
        print(args[i + 1]); break
    if arg.startswith("--engine="):
        print(arg.split("=", 1)[1]); break
else:
    with open("server.toml", "rb") as f:
        print(tomllib.load(f).get("engine", {}).get("name", "seedvc"))
PY
)
if [ "$engine" = seedvc ]; then
  # Idempotent: files already in the Hugging Face cache are not fetched again.
  if ! .venv/bin/fastvc download --config server.toml --no-verify; then
    echo "scripts/serve.sh: the Seed-VC weights could not be fetched (see above). Without network access," >&2
    echo "  try the same model with random weights: scripts/serve.sh --engine synthetic" >&2
    exit 1
  fi
fi
exec .venv/bin/python -m fastvc.server --config server.toml "$@"
