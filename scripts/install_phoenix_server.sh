#!/usr/bin/env bash
# Build .venv-phoenix at the repository root: the Arize Phoenix server the tests start.
# arize-phoenix pins SQLAlchemy >= 2.1, which the app's packages (llama-index-vector-stores-postgres)
# refuse, so the server gets a virtual environment of its own; the app side needs only
# arize-phoenix-client and arize-phoenix-otel (the project's test extra).
# Usage: scripts/install_phoenix_server.sh [python]   (default: python3; PHOENIX_VERSION overrides)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${1:-python3}"
version="${PHOENIX_VERSION:-20.26.1}"
venv="$root/.venv-phoenix"
if [ -x "$venv/bin/phoenix" ] && "$venv/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('arize-phoenix') != '$version')"; then
  echo "arize-phoenix $version already in $venv"
  exit 0
fi
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet "arize-phoenix==$version"
"$venv/bin/phoenix" --help >/dev/null
echo "arize-phoenix $version installed in $venv (start: $venv/bin/phoenix serve)"
