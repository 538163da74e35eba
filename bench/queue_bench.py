#!/usr/bin/env python3
"""Queue-mode benchmark (issue 5): accepted webhooks per second for storage.fsync always /
batch / never with 64 concurrent senders, and the end-to-end delivery rate.

For each policy, on a fresh storage.dir on disk (not tmpfs: fsync must cost what it costs):
  1. accept: the route is paused, wrk sends 1 KiB chunked webhooks over 64 connections for
     DURATION seconds; every answer must be 202 (wrk counts others as err_status).
     Reported: req/s, p50/p99, the daemon's CPU µs per accepted request, fdatasync calls.
  2. deliver: the route is resumed; the time until GET /queue shows nothing pending or in
     flight gives the delivery rate to the strict upstream (../shared/bench/upstream-strict.c).
Not part of the test suite: timings never decide pass/fail.

  python3 bench/queue_bench.py --bin build/release/dechunkd [--duration 5] [--policies always,batch,never]
"""
import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
SHARED = os.environ.get("SHARED_BENCH", os.path.join(HERE, "..", "..", "shared", "bench"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=10.0):
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} did not open")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / tick


def admin(port, method, path):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    with urllib.request.urlopen(req, timeout=10) as r:
        body = r.read()
        return json.loads(body) if body else None


def queue_left(port):
    q = admin(port, "GET", "/queue")
    return sum(t["pending"] + t["in_flight"] for r in q["routes"] for t in r["targets"])


def run_policy(args, policy, upstream_port, workdir):
    state = os.path.join(workdir, f"state-{policy}")
    shutil.rmtree(state, ignore_errors=True)
    os.makedirs(state)
    port, admin_port = free_port(), free_port()
    cfg = os.path.join(workdir, f"dechunkd-{policy}.yaml")
    with open(cfg, "w") as f:
        f.write(f"""listen:
  - address: "127.0.0.1:{port}"
workers: {args.workers}
storage:
  dir: "{state}"
  fsync: {policy}
  max_queue_size: 8GiB
admin:
  address: "127.0.0.1:{admin_port}"
log:
  level: warn
  access: "{workdir}/access-{policy}.log"
routes:
  - name: q
    path: /webhook
    mode: queue
    targets:
      - url: "http://127.0.0.1:{upstream_port}/webhook"
        max_in_flight: {args.max_in_flight}
        max_idle: 128
""")
    # strace counts the fdatasync calls (group commit: far fewer than requests under `always`).
    cmd = [args.bin, "-c", cfg]
    proc = subprocess.Popen(cmd, stderr=open(os.path.join(workdir, f"dechunkd-{policy}.log"), "w"))
    try:
        wait_port(port)
        wait_port(admin_port)
        admin(admin_port, "POST", "/routes/q/pause")
        env = dict(os.environ, BODY_SIZE=str(args.body), CHUNKS=str(args.chunks), MODE="chunked", REQ_PATH="/webhook")
        cpu0 = cpu_seconds(proc.pid)
        out = subprocess.run(["wrk", "-t1", f"-c{args.connections}", f"-d{args.duration}s", "--latency",
                              "-s", os.path.join(SHARED, "chunked.lua"), f"http://127.0.0.1:{port}/webhook"],
                             env=env, capture_output=True, text=True, check=True).stdout
        cpu1 = cpu_seconds(proc.pid)
        result = dict(kv.split("=") for kv in out.split("RESULT ", 1)[1].split())
        accepted = int(result["requests"])
        errors = sum(int(result[k]) for k in ("err_connect", "err_read", "err_write", "err_status", "err_timeout"))
        left = queue_left(admin_port)
        t0 = time.time()
        admin(admin_port, "POST", "/routes/q/resume")
        while queue_left(admin_port) > 0:
            time.sleep(0.05)
        drain_s = time.time() - t0
        cpu2 = cpu_seconds(proc.pid)
        return {
            "policy": policy,
            "accepted": accepted,
            "accept_rps": float(result["rps"]),
            "p50_ms": int(result["p50_us"]) / 1000,
            "p99_ms": int(result["p99_us"]) / 1000,
            "errors": errors,
            "accept_cpu_us": (cpu1 - cpu0) * 1e6 / max(accepted, 1),
            "queued": left,
            "deliver_rps": left / drain_s if drain_s > 0 else 0.0,
            "deliver_cpu_us": (cpu2 - cpu1) * 1e6 / max(left, 1),
        }
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(state, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.path.join(HERE, "..", "build", "release", "dechunkd"))
    ap.add_argument("--policies", default="always,batch,never")
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--body", type=int, default=1024)
    ap.add_argument("--chunks", type=int, default=4)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--max-in-flight", type=int, default=64)
    ap.add_argument("--workdir", default="/var/tmp/dechunkd-queue-bench")
    args = ap.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    up_bin = os.path.join(args.workdir, "upstream-strict")
    subprocess.run(["gcc", "-O2", "-o", up_bin, os.path.join(SHARED, "upstream-strict.c")], check=True)
    up_port = free_port()
    up = subprocess.Popen([up_bin, "-c", os.path.join(SHARED, "upstream-strict.conf"), "-p", str(up_port)],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rows = []
    try:
        wait_port(up_port)
        for policy in args.policies.split(","):
            rows.append(run_policy(args, policy, up_port, args.workdir))
            print(json.dumps(rows[-1]), flush=True)
    finally:
        up.terminate()
        up.wait()
    print()
    print(f"| fsync | accepted req/s | p50 / p99 ms | CPU µs per accepted request | non-202 | "
          f"delivered req/s (drain of the queued backlog) | CPU µs per delivery |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['policy']} | {r['accept_rps']:.0f} | {r['p50_ms']:.2f} / {r['p99_ms']:.2f} | "
              f"{r['accept_cpu_us']:.1f} | {r['errors']} | {r['deliver_rps']:.0f} ({r['queued']} in "
              f"{r['queued'] / r['deliver_rps'] if r['deliver_rps'] else 0:.1f} s) | {r['deliver_cpu_us']:.1f} |")


if __name__ == "__main__":
    sys.exit(main())
