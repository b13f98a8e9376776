#!/usr/bin/env bash
# Builds the test image without a registry: a rootfs holding Debian's static busybox,
# imported with `docker import`. Idempotent: does nothing if the image exists.
#   tests/image/build.sh [TAG]     (default berth-test/busybox:latest)
set -euo pipefail
tag=${1:-berth-test/busybox:latest}
if docker image inspect "$tag" >/dev/null 2>&1; then
  exit 0
fi
bb=/bin/busybox
if ! file_out=$(LC_ALL=C file -L "$bb" 2>/dev/null) || ! grep -q "statically linked" <<<"$file_out"; then
  # `file` may be missing: fall back to ldd, which fails on static binaries.
  if [ ! -x "$bb" ] || ldd "$bb" >/dev/null 2>&1; then
    echo "need a static $bb: apt-get install busybox-static" >&2
    exit 1
  fi
fi
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{bin,etc,tmp,root,workspace}
chmod 1777 "$root/tmp"
cp "$bb" "$root/bin/busybox"
for applet in $("$bb" --list); do
  [ "$applet" = busybox ] || ln -sf busybox "$root/bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$root/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
tar -C "$root" -c . | docker import --change 'ENV PATH=/bin' --change 'CMD ["/bin/sh"]' - "$tag" >/dev/null
echo "built $tag"
