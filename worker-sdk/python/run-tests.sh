#!/usr/bin/env bash
# Installs the Python SDK into a virtualenv, the way a user does
# (`pip install ./worker-sdk/python`, which generates the gRPC stubs from
# proto/), and runs its tests against the installed package.
#
#   worker-sdk/python/run-tests.sh                 # unit + integration tests
#   worker-sdk/python/run-tests.sh tests/unit -q   # arguments go to pytest
#   worker-sdk/python/run-tests.sh --mypy          # the type check instead (mypy
#                                                  # --strict, see pyproject.toml);
#                                                  # further arguments go to mypy
#
# Environment:
#   PYTHON       interpreter for the venv (default python3; 3.9+)
#   BATON_VENV   venv directory (default worker-sdk/python/.venv, reused)
#   BATON_BIN    broker binary for integration tests (default target/debug/baton)
#   CI           when set, a missing broker binary fails the integration tests
#                instead of skipping them (BATON_REQUIRE_BROKER does the same)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"
python="${PYTHON:-python3}"
venv="${BATON_VENV:-$here/.venv}"

if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
# Not editable: the tests import the installed package, as users will.
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --force-reinstall --no-deps .
if [ "${1:-}" = "--mypy" ]; then
    shift
    # The install above generated baton/_pb (stubs and .pyi) beside the sources mypy reads.
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check ".[typecheck]"
    exec "$venv/bin/mypy" "$@"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check ".[test]"

if [ -n "${CI:-}" ]; then
    export BATON_REQUIRE_BROKER=1
fi
# The `pytest` script, not `python -m pytest`: the latter would put this
# directory on sys.path and import the source tree instead of the install.
exec "$venv/bin/pytest" -p no:cacheprovider "$@"
