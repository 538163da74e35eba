#!/usr/bin/env bash
# The README's test command: installs the dependencies, builds, and runs every test three times
# (release build with the package tests, AddressSanitizer + UBSan, ThreadSanitizer), then builds
# the libFuzzer targets with clang and fuzzes each for DECHUNKD_FUZZ_SECONDS (default 30) with a
# fixed seed, after replaying the committed corpora.
# DECHUNKD_SKIP_DEPS=1 skips apt-get; DECHUNKD_PRESETS="release" narrows the builds.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${DECHUNKD_SKIP_DEPS:-0}" != 1 ]; then
  bash tests/deps.sh
fi
jobs=$(nproc)
status=0
for preset in ${DECHUNKD_PRESETS:-release asan tsan fuzz}; do
  echo "=== preset $preset: configure and build"
  cmake --preset "$preset" >/dev/null
  cmake --build --preset "$preset" -j "$jobs"
  echo "=== preset $preset: tests"
  if ! ctest --preset "$preset" -j "$jobs"; then
    status=1
  fi
done
exit $status
