#!/usr/bin/env python3
"""Memory case of issue 6: N concurrent chunked uploads of S MiB each through dechunkd to a
receiver that reads and discards; reports dechunkd's peak RSS (VmHWM) against the bound
memory_buffer x N (not body size x N). Loopback only, bounded in time."""
import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time


def receiver(sock: socket.socket):
    def serve(c: socket.socket):
        with c:
            buf = b""
            while True:
                while b"\r\n\r\n" not in buf:
                    d = c.recv(65536)
                    if not d:
                        return
                    buf += d
                head, _, rest = buf.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    k, _, v = line.partition(b":")
                    if k.strip().lower() == b"content-length":
                        length = int(v)
                got = len(rest)
                while got < length:
                    d = c.recv(1 << 20)
                    if not d:
                        return
                    got += len(d)
                buf = rest[length:] if len(rest) > length else b""
                c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    while True:
        try:
            c, _ = sock.accept()
        except OSError:
            return
        threading.Thread(target=serve, args=(c,), daemon=True).start()


def upload(port: int, size: int, results: list):
    chunk = b"x" * (64 * 1024)
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=120)
        s.sendall(b"POST /m HTTP/1.1\r\nHost: m\r\nTransfer-Encoding: chunked\r\n\r\n")
        sent = 0
        while sent < size:
            n = min(len(chunk), size - sent)
            s.sendall(b"%x\r\n" % n + chunk[:n] + b"\r\n")
            sent += n
        s.sendall(b"0\r\n\r\n")
        resp = s.recv(4096)
        results.append(resp.startswith(b"HTTP/1.1 200"))
        s.close()
    except OSError:
        results.append(False)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--clients", type=int, default=500)
    ap.add_argument("--size-mib", type=int, default=10)
    ap.add_argument("--memory-buffer-kib", type=int, default=1024)
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="dechunkd-mem-")
    rsock = socket.socket()
    rsock.bind(("127.0.0.1", 0))
    rsock.listen(1024)
    threading.Thread(target=receiver, args=(rsock,), daemon=True).start()
    cfg = os.path.join(tmp, "c.yaml")
    with open(cfg, "w") as f:
        f.write(f'listen: [{{address: "127.0.0.1:0"}}]\nworkers: 1\n'
                f'limits: {{memory_buffer: {a.memory_buffer_kib}KiB, max_body_size: 1GiB}}\n'
                f'storage: {{dir: "{tmp}/s"}}\nlog: {{access: "off", level: info}}\n'
                f'routes: [{{name: m, path: /m, target: "http://127.0.0.1:{rsock.getsockname()[1]}/"}}]\n')
    proc = subprocess.Popen([a.bin, "-c", cfg], stderr=subprocess.PIPE, text=True)
    port = None
    deadline = time.time() + 10
    while port is None and time.time() < deadline:  # the "listening on" line (level info)
        line = proc.stderr.readline()
        if "listening on" in line:
            port = int(line.rsplit(":", 1)[1])
    results: list = []
    started = time.time()
    threads = [threading.Thread(target=upload, args=(port, a.size_mib << 20, results)) for _ in range(a.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    with open(f"/proc/{proc.pid}/status") as f:
        hwm = next(int(l.split()[1]) for l in f if l.startswith("VmHWM:"))
    proc.terminate()
    proc.wait(timeout=30)
    ok = sum(1 for r in results if r)
    bound = a.clients * a.memory_buffer_kib / 1024
    print(f"{a.clients} concurrent {a.size_mib} MiB chunked uploads: {ok} answered 200 in "
          f"{time.time() - started:.1f} s; dechunkd peak RSS {hwm / 1024:.1f} MiB "
          f"(memory_buffer x clients = {bound:.0f} MiB; body size x clients = {a.clients * a.size_mib} MiB)")
    return 0 if ok == a.clients else 1


if __name__ == "__main__":
    sys.exit(main())
