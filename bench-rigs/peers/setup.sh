#!/usr/bin/env bash
# Creates the Python venv the peer ANN benchmarks run in (bench-rigs/.venv) and installs
# hnswlib, FAISS (CPU), USearch, numpy and matplotlib into it.
#
#   bench-rigs/peers/setup.sh            # create/complete the venv; no-op when complete
#   bench-rigs/peers/setup.sh --force    # recreate the venv from scratch
#
# Nothing is pinned: the report records each engine's version next to its figures.
# hnswlib ships only a source distribution, so pip compiles it with g++ on first install.
set -euo pipefail

force=0
case "${1:-}" in
  "") ;;
  --force) force=1 ;;
  *) echo "usage: $0 [--force]" >&2; exit 2 ;;
esac

# Resolve paths from this script's location so it works from any working directory.
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$(cd "$here/.." && pwd)/.venv"
py="$venv/bin/python"

packages=(numpy hnswlib faiss-cpu usearch matplotlib)
# The import name of each package above, in the same order.
modules=(numpy hnswlib faiss usearch matplotlib)

if [[ $force -eq 1 && -d $venv ]]; then
  echo "removing $venv"
  rm -rf "$venv"
fi

if [[ ! -x $py ]]; then
  echo "creating venv at $venv"
  python3 -m venv "$venv"
fi

# Idempotence: a venv where every module already imports is left untouched.
if "$py" -c "import $(IFS=,; echo "${modules[*]}")" 2>/dev/null; then
  echo "all packages already installed in $venv (use --force to reinstall)"
else
  "$py" -m pip install --upgrade pip
  "$py" -m pip install "${packages[@]}"
fi

"$py" - <<'EOF'
import sys
from importlib.metadata import version

print(f"python {sys.version.split()[0]}")
for dist in ("numpy", "hnswlib", "faiss-cpu", "usearch", "matplotlib"):
    print(f"{dist} {version(dist)}")
EOF
