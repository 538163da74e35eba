#!/usr/bin/env bash
# Installs everything dechunkd needs to build and test, from Debian 12 packages.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
if [ "$(id -u)" -ne 0 ]; then
  echo "tests/deps.sh: run as root (it calls apt-get)" >&2
  exit 1
fi
apt-get update
apt-get install -y --no-install-recommends \
  build-essential cmake pkg-config ca-certificates \
  libevent-dev node-llhttp libyaml-cpp-dev libssl-dev doctest-dev \
  clang libclang-rt-14-dev libfuzzer-14-dev \
  curl python3 procps \
  lintian rpm rpmlint file dpkg-dev systemd prometheus \
  man-db cpio adduser logrotate shellcheck
