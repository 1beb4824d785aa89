#!/usr/bin/env bash
# Static checks of the whole tree; exits non-zero on any finding:
#   ruff (lint rules and formatting) on every Python file, clang-format on csrc/, mypy (lenient) on python/npuq.
# The tools' versions are pinned in pyproject.toml's "lint" extra (formatters must not drift between machines);
# `scripts/lint.sh --install` installs exactly those first. Settings: [tool.ruff], [tool.mypy] (pyproject.toml)
# and .clang-format.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--install" ]; then
  mapfile -t tools < <(python3 -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["lint"], sep="\n")')
  python3 -m pip install --quiet "${tools[@]}"
fi
status=0
step() {  # step NAME COMMAND...: runs one check, remembers a failure, goes on with the next
  local name="$1"; shift
  if "$@"; then echo "lint: $name ok"; else echo "lint: $name FAILED" >&2; status=1; fi
}
step "ruff check" python3 -m ruff check --quiet .
step "ruff format" python3 -m ruff format --check --quiet .
mapfile -t native < <(find csrc -type f \( -name '*.h' -o -name '*.cc' -o -name '*.cu' -o -name '*.cuh' -o -name '*.inc' \) | sort)
step "clang-format" clang-format --dry-run --Werror "${native[@]}"
step "mypy" python3 -m mypy python/npuq
exit "$status"
