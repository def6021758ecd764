#!/usr/bin/env bash
# Regenerate requirements/constraints.txt (the lock) from the current .venv.
# Run after adding a dependency to a package's pyproject.toml and installing it.
set -euo pipefail
cd "$(dirname "$0")/.."
{
  echo "# Lock file: exact versions for every dependency (pip -c). Regenerate: scripts/lock.sh"
  echo "# Package metadata keeps honest lower bounds (torch>=2.4); this pins the tested set."
  .venv/bin/python -m pip freeze --exclude-editable 2>/dev/null | grep -v -E '^(polydiff|-e )' | sort -f
} > requirements/constraints.txt.tmp
mv requirements/constraints.txt.tmp requirements/constraints.txt
echo "locked $(grep -c '==' requirements/constraints.txt) packages"
