#!/usr/bin/env bash
# The engine-backed suite's representative part a second time, against rootless Podman:
# the same test binaries, run as an unprivileged user (default berthci, made if missing)
# with that user's own `podman system service`. Needs root (it makes the user and starts
# the service through scripts/podman-rootless.sh). Called by scripts/test.sh when
# BERTH_PODMAN=1; runnable alone after a `cargo build --tests`.
set -euo pipefail
cd "$(dirname "$0")/.."
user=${BERTH_PODMAN_USER:-berthci}
host=$(scripts/podman-rootless.sh "$user")
uid=$(id -u "$user")
home=$(getent passwd "$user" | cut -d: -f6)

# The test binaries, as cargo built them (root builds; the user only runs them).
mapfile -t bins < <(cargo test --no-run --message-format=json --tests -p berth 2>/dev/null | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        print(m["target"]["name"], m["executable"])')

# Which files run, and the tests that cannot run as a plain user or differ by design:
#  - agent: running berthd as another user needs root;
#  - snapshots: a tmpfs state dir needs root (mount);
#  - exec through the engine's exec API: Podman streams a start failure's reason as the
#    command's stderr instead of failing the exec (README, Rootless Podman).
files=(rpc exec crash agent files processes snapshots engine)
skips=(
  --skip a_non_root_berthd_in_the_engines_group_uses_the_agent_too
  --skip a_snapshot_that_does_not_fit_is_refused_before_anything_is_copied
  --skip commands_that_cannot_start_exit_127_or_126_with_the_reason_on_stderr::exec
)
# Everything the user runs must be readable by it.
chmod o+rx target target/debug target/debug/deps 2>/dev/null || true

status=0
for f in "${files[@]}"; do
  bin=$(printf '%s\n' "${bins[@]}" | awk -v f="$f" '$1 == f { print $2 }' | head -1)
  if [ -z "$bin" ]; then
    echo "test-podman.sh: no test binary for $f (build with cargo build --tests)" >&2
    exit 1
  fi
  echo "== rootless Podman ($user): tests/$f.rs"
  # From a directory the user may enter; the binaries find their files by absolute path.
  if ! (cd /tmp && runuser -u "$user" -- env -i PATH="$PATH" HOME="$home" XDG_RUNTIME_DIR="/run/user/$uid" \
    DOCKER_HOST="$host" REQUIRE_DOCKER=1 BERTH_TEST_ENGINE=podman BERTH_TEST_ROOTLESS=1 \
    "$bin" --test-threads=2 "${skips[@]}"); then
    status=1
  fi
done
exit $status
