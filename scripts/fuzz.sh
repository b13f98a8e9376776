#!/usr/bin/env bash
# Runs the fuzzers for a bounded time each (default 60 s): `decode` (socket requests) and
# `wire` (the agent protocol's frames).
#   scripts/fuzz.sh [SECONDS] [TARGET...]
# Needs cargo-fuzz (`cargo install cargo-fuzz`). cargo-fuzz wants a nightly compiler;
# with only a stable toolchain, RUSTC_BOOTSTRAP=1 lets stable accept the flags it passes.
# Findings land in fuzz/artifacts/decode/; the corpus grows in fuzz/corpus/decode/.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(decode wire)
command -v cargo-fuzz >/dev/null 2>&1 || { echo "install cargo-fuzz first: cargo install cargo-fuzz" >&2; exit 1; }
mkdir -p fuzz/corpus/decode
# Seed the corpus with real requests.
i=0
for line in \
  '{"jsonrpc":"2.0","id":1,"method":"daemon.info"}' \
  '{"jsonrpc":"2.0","id":"a","method":"project.create","params":{"name":"web","image":"node:20-slim","env":{"A":"1"},"ports":{"80":"8080"}}}' \
  '{"jsonrpc":"2.0","id":2,"method":"project.exec","params":{"name":"web","command":["sh","-c","ls"],"timeout":"30s","workdir":"/workspace","stream":true,"stdin":"x"}}' \
  '{"jsonrpc":"2.0","id":3,"method":"project.logs","params":{"name":"web","tail":10}}' \
  '{"jsonrpc":"2.0","id":4,"method":"project.delete","params":{"name":"web","purge":true}}' \
  '{"jsonrpc":"2.0","id":5,"method":"fs.write","params":{"name":"web","path":"a/b","data":"AAE=","encoding":"base64","offset":3,"mode":"0600","mkdirs":true}}' \
  '{"jsonrpc":"2.0","id":6,"method":"fs.read","params":{"name":"web","path":"/etc/hosts","offset":1,"limit":10}}' \
  '{"jsonrpc":"2.0","id":7,"method":"process.kill","params":{"name":"web","id":3,"signal":"SIGINT","grace":"1s"}}' \
  '{"jsonrpc":"2.0","id":8,"method":"process.output","params":{"name":"web","id":3,"stdout_offset":5,"follow":true,"limit":100}}'; do
  printf '%s' "$line" >"fuzz/corpus/decode/seed-$i"
  i=$((i + 1))
done
mkdir -p fuzz/corpus/wire
for t in "${targets[@]}"; do
  RUSTC_BOOTSTRAP=1 cargo fuzz run "$t" "fuzz/corpus/$t" -- -max_total_time="$secs" -max_len=4096
done
