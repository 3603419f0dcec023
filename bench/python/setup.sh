#!/usr/bin/env bash
# Installs what the Python benchmarks need, idempotently:
#   - redis-server from apt (skipped when one is on PATH); bench.py starts its
#     own instance on a free port, the system service is neither used nor needed;
#   - Celery, its Redis transport and matplotlib, pinned in bench/requirements.txt;
#   - the Baton SDK from ./worker-sdk/python, reinstalled every time so the
#     benchmark always measures the SDK of this checkout.
# PYTHON picks the interpreter (default: python3); bench.py must run with the same one.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
python="${PYTHON:-python3}"

if ! command -v redis-server >/dev/null 2>&1; then
    sudo_cmd=()
    if [ "$(id -u)" -ne 0 ]; then sudo_cmd=(sudo); fi
    "${sudo_cmd[@]}" apt-get update -qq
    "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
    # Debian starts the packaged service where systemd runs; the benchmark never talks to it.
fi

"$python" -m pip install --quiet --disable-pip-version-check --root-user-action=ignore -r "$root/bench/requirements.txt"
# pip rebuilds and reinstalls a local directory on every run.
"$python" -m pip install --quiet --disable-pip-version-check --root-user-action=ignore "$root/worker-sdk/python"

echo "redis-server: $(redis-server --version | sed -n 's/.* v=\([^ ]*\).*/\1/p')"
"$python" - <<'PY'
from importlib.metadata import version
print("python packages:", ", ".join(f"{p} {version(p)}" for p in ("celery", "kombu", "redis", "baton-sdk", "grpcio")))
PY
