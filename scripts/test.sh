#!/usr/bin/env bash
# The whole test suite, as CI runs it: the Rust workspace (cargo nextest, or cargo test),
# then the Python client's tests (clients/python) in a venv against the berthd built here.
# Both always run; the exit status is non-zero if either failed.
#   scripts/test.sh
# Set REQUIRE_DOCKER=1 to make Docker-backed tests fail, not skip, without an engine.
# The venv lives in target/py-venv (BERTH_VENV to move it); pip fills it from PyPI.
# With BERTH_PODMAN=1 (as root, as CI sets), a representative part of the engine-backed
# suite then runs again against rootless Podman (scripts/test-podman.sh).
set -uo pipefail
cd "$(dirname "$0")/.."
status=0
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --no-fail-fast || status=1
else
  cargo test --no-fail-fast || status=1
fi
venv=${BERTH_VENV:-target/py-venv}
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv" || { echo "test.sh: cannot make a venv (apt-get install python3-venv)" >&2; exit 1; }
fi
"$venv/bin/pip" install -q pytest mcp ./clients/python || { echo "test.sh: pip install failed" >&2; exit 1; }
cargo build -q --bin berthd || exit 1
BERTHD_BIN="$PWD/target/debug/berthd" "$venv/bin/python" -m pytest -q clients/python/tests || status=1
if [ "${BERTH_PODMAN:-}" = 1 ]; then
  scripts/test-podman.sh || status=1
fi
exit $status
