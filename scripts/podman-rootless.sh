#!/usr/bin/env bash
# Rootless Podman for an unprivileged user, for the tests: makes the user if missing
# (with subordinate ids), starts that user's Podman API service on
# $XDG_RUNTIME_DIR/podman/podman.sock, and prints the DOCKER_HOST to use. Needs root;
# installs Debian's podman, catatonit, uidmap, slirp4netns and fuse-overlayfs if missing.
#   scripts/podman-rootless.sh [USER]      (default berthci)
# Idempotent: a service already answering is left as it is.
set -euo pipefail
user=${1:-berthci}
if ! command -v podman >/dev/null || ! command -v catatonit >/dev/null || ! command -v newuidmap >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q podman catatonit uidmap slirp4netns fuse-overlayfs >&2
fi
id -u "$user" >/dev/null 2>&1 || useradd -m -s /bin/bash "$user"
uid=$(id -u "$user")
grep -q "^$user:" /etc/subuid || usermod --add-subuids 300000-365535 "$user"
grep -q "^$user:" /etc/subgid || usermod --add-subgids 300000-365535 "$user"
run=/run/user/$uid
install -d -m 0700 -o "$user" -g "$user" "$run"
# slirp4netns (the rootless network) opens /dev/net/tun.
[ -e /dev/net/tun ] && chmod 0666 /dev/net/tun
# Podman's default ulimits (nofile 1048576) exceed what an unprivileged user may set on
# some hosts ("error setting rlimit type 7"): use the user's own hard limits.
nofile=$(runuser -u "$user" -- bash -c 'ulimit -Hn')
nproc=$(runuser -u "$user" -- bash -c 'ulimit -Su')
conf=/etc/containers/containers.conf
if ! grep -q "nofile=$nofile:$nofile" "$conf" 2>/dev/null; then
  mkdir -p /etc/containers
  [ -f "$conf" ] && sed -i '/^default_ulimits/d;/^\[containers\]$/d' "$conf"
  printf '[containers]\ndefault_ulimits = ["nofile=%s:%s", "nproc=%s:%s"]\n' "$nofile" "$nofile" "$nproc" "$nproc" >>"$conf"
fi
sock=$run/podman/podman.sock
as_user() { runuser -u "$user" -- env HOME="$(getent passwd "$user" | cut -d: -f6)" XDG_RUNTIME_DIR="$run" "$@"; }
if ! as_user curl -sf --unix-socket "$sock" http://d/_ping >/dev/null 2>&1; then
  as_user podman system migrate >/dev/null 2>&1 || true
  install -d -m 0700 -o "$user" -g "$user" "$run/podman"
  as_user nohup podman system service --time=0 "unix://$sock" >"/tmp/podman-service.$user.log" 2>&1 &
  for _ in $(seq 1 100); do
    as_user curl -sf --unix-socket "$sock" http://d/_ping >/dev/null 2>&1 && break
    sleep 0.1
  done
  as_user curl -sf --unix-socket "$sock" http://d/_ping >/dev/null || {
    echo "podman-rootless.sh: the Podman service of $user did not answer; see /tmp/podman-service.$user.log" >&2
    exit 1
  }
fi
echo "unix://$sock"
