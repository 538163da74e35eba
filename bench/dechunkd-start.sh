#!/usr/bin/env bash
# EXTRA_START for ../shared/bench/run-peers.sh: writes a dechunkd config into $RUN_DIR and runs
# the daemon in the foreground. The harness exports PROXY_PORT, UPSTREAM_ADDR and RUN_DIR.
# Features stay on as in production: access log to a file, admin endpoint with metrics.
set -euo pipefail
bin=${DECHUNKD_BENCH_BIN:-$(cd "$(dirname "$0")/.." && pwd)/build/release/dechunkd}
workers=${DECHUNKD_BENCH_WORKERS:-1}
mkdir -p "$RUN_DIR/state"
cat > "$RUN_DIR/dechunkd.yaml" <<YAML
listen:
  - address: "127.0.0.1:${PROXY_PORT}"
workers: ${workers}
limits:
  max_body_size: 32MiB
  memory_buffer: 2MiB        # like the nginx peer's client_body_buffer_size 2m
storage:
  dir: "${RUN_DIR}/state"
admin:
  address: "127.0.0.1:0"
log:
  level: warn
  access: "${RUN_DIR}/access.log"
routes:
  - name: bench
    path: /webhook
    targets:
      - url: "http://${UPSTREAM_ADDR}/webhook"
        max_idle: 128        # like the nginx peer's upstream keepalive 128 (64 client connections)
YAML
exec "$bin" -c "$RUN_DIR/dechunkd.yaml"
