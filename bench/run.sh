#!/usr/bin/env bash
# Builds a release dechunkd and runs the shared peer benchmark (../shared/bench/run-peers.sh)
# for nginx and dechunkd in one run: 1 KiB in 4 chunks, 64 KiB in 16, 1 MiB in 64, 64
# connections; req/s, p50, p99, peak RSS, CPU µs per request, and a check that the upstream saw
# zero 411s. Then the memory case (bench/memory.py). Results go to $OUT_DIR (default
# /tmp/dechunkd-bench). Not part of the test suite: timings never decide pass/fail.
#   PROXIES="direct nginx" (default "nginx"), SIZES, DURATION, WORKERS=2 (unpinned: PIN=0)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
shared=${SHARED_BENCH:-$root/../shared/bench}
out=${OUT_DIR:-/tmp/dechunkd-bench}
mkdir -p "$out"

cmake --preset release >/dev/null
cmake --build --preset release -j"$(nproc)" --target dechunkd

export DECHUNKD_BENCH_BIN=$root/build/release/dechunkd
export DECHUNKD_BENCH_WORKERS=${WORKERS:-1}
( cd "$shared" && PROXIES=${PROXIES:-nginx} EXTRA_NAME=dechunkd EXTRA_PORT=18090 \
    EXTRA_START="$here/dechunkd-start.sh" OUT_DIR="$out" ./run-peers.sh )

if [ "${MEMORY:-1}" = 1 ]; then
  python3 "$here/memory.py" --bin "$DECHUNKD_BENCH_BIN" --clients "${MEMORY_CLIENTS:-500}" \
    --size-mib "${MEMORY_SIZE_MIB:-10}" | tee "$out/memory.txt"
fi
