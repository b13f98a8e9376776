#!/usr/bin/env bash
# Builds the test image without a registry: a rootfs holding Debian's static busybox,
# imported with `docker import`. Idempotent: does nothing if the image exists. Safe to
# run from many processes at once (nextest runs each test as its own process, and the
# test harness calls this script): one builds while the others wait on a lock.
#   tests/image/build.sh [TAG]             (default berth-test/busybox:latest)
#   tests/image/build.sh --no-shell TAG    an image with nothing but /busybox: no /bin/sh
set -euo pipefail
shell=yes
if [ "${1:-}" = --no-shell ]; then
  shell=no
  shift
fi
tag=${1:-berth-test/busybox:latest}
have_image() { docker image inspect "$tag" >/dev/null 2>&1; }
have_image && exit 0

if command -v flock >/dev/null 2>&1; then
  # One lock per user: a lock file left by another user could not be opened.
  exec 9>"${TMPDIR:-/tmp}/berth-test-image.$(id -u).$shell.lock"
  flock 9
  have_image && exit 0 # built while we waited
fi

bb=/bin/busybox
if [ ! -x "$bb" ]; then
  echo "tests/image/build.sh: no $bb; the test image needs a static busybox: apt-get install busybox-static" >&2
  exit 1
fi
if ! file_out=$(LC_ALL=C file -L "$bb" 2>/dev/null) || ! grep -q "statically linked" <<<"$file_out"; then
  # `file` may be missing: fall back to ldd, which fails on static binaries.
  if ldd "$bb" >/dev/null 2>&1; then
    echo "tests/image/build.sh: $bb is dynamically linked; the test image needs a static one: apt-get install busybox-static" >&2
    exit 1
  fi
fi
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
if [ "$shell" = no ]; then
  mkdir -p "$root"/{tmp,workspace}
  chmod 1777 "$root/tmp"
  cp "$bb" "$root/busybox"
  tar -C "$root" -c . | docker import - "$tag" >/dev/null
  echo "built $tag" >&2
  exit 0
fi
mkdir -p "$root"/{bin,etc,tmp,root,workspace}
chmod 1777 "$root/tmp"
cp "$bb" "$root/bin/busybox"
for applet in $("$bb" --list); do
  [ "$applet" = busybox ] || ln -sf busybox "$root/bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$root/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
tar -C "$root" -c . | docker import --change 'ENV PATH=/bin' --change 'CMD ["/bin/sh"]' - "$tag" >/dev/null
echo "built $tag" >&2
