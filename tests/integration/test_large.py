"""Large bodies and concurrency (SPEC 3 memory_buffer, 4): bodies over memory_buffer spill to a
temp file in storage.dir and arrive byte-identical; many connections at once; bounded memory."""
import hashlib
import os
import resource
import threading
import time
import unittest

from harness import (SANITIZED, SCALE, Client, Daemon, GatewayCase, Reply, build_request,
                     pseudo_random, wait_until)

MIB = 1 << 20
CHUNKED_HEAD = b"POST /up HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n"


def storage_fds(pid: int, storage_dir: str) -> set:
    """The daemon's open file descriptors that point into storage.dir (named or deleted)."""
    out = set()
    root = os.path.realpath(storage_dir)
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith(root + "/"):
            out.add((fd, target))
    return out


def upload_chunked(port: int, path: str, blocks, timeout: float) -> tuple:
    """Streams a chunked POST of `blocks`; returns (status, response body, request id)."""
    c = Client(port, timeout=timeout)
    try:
        c.send(CHUNKED_HEAD.replace(b"/up", path.encode(), 1))
        for block in blocks:
            c.send(b"%x\r\n" % len(block))
            c.send(block)
            c.send(b"\r\n")
        c.send(b"0\r\n\r\n")
        resp = c.final_response(timeout=timeout)
        return resp.status, resp.body, resp.header("X-Request-Id")
    finally:
        c.close()


def run_parallel(count: int, work, timeout: float) -> list:
    """Runs work(i) in `count` threads; returns the results; any exception fails."""
    results, errors = [None] * count, []

    def run(i):
        try:
            results[i] = work(i)
        except BaseException as e:  # reported below, with the index
            errors.append((i, e))
    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(count)]
    for t in threads:
        t.start()
    end = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, end - time.monotonic()))
    if any(t.is_alive() for t in threads):
        raise AssertionError(f"{sum(t.is_alive() for t in threads)} of {count} transfers "
                             f"still running after {timeout:.0f}s")
    if errors:
        raise AssertionError(f"{len(errors)} of {count} transfers failed, first: {errors[0]!r}")
    return results


class LargeBodyTests(GatewayCase):
    keep_bodies = False  # the receiver hashes bodies instead of keeping them

    @classmethod
    def gateway(cls):
        return Daemon([{"name": "up", "path": "/up", "target": cls.rcv.url("/up")}],
                      workers=2, limits={"memory_buffer": "1MiB", "max_body_size": "200MiB"})

    def test_chunked_upload_spills_and_arrives_identical(self):
        body = pseudo_random(24 * MIB)
        sizes = [1, 65537, 1000003, 4096, 3 * MIB + 5]
        blocks, pos, i = [], 0, 0
        while pos < len(body):
            blocks.append(body[pos: pos + sizes[i % len(sizes)]])
            pos += len(blocks[-1])
            i += 1
        baseline_fds = storage_fds(self.gw.pid, self.gw.storage_dir)
        baseline_files = sorted(os.listdir(self.gw.storage_dir))
        c = self.connect()
        c.send(CHUNKED_HEAD)
        for block in blocks[:6]:  # a little over 2 MiB: past memory_buffer
            c.send(b"%x\r\n%s\r\n" % (len(block), block))
        spilled = wait_until(lambda: storage_fds(self.gw.pid, self.gw.storage_dir)
                                - baseline_fds, 10 * SCALE, "a spill file open in storage.dir")
        for block in blocks[6:]:
            c.send(b"%x\r\n%s\r\n" % (len(block), block))
        c.send(b"0\r\n\r\n")
        resp = c.final_response(timeout=30 * SCALE)
        self.assertEqual(resp.status, 200, f"response: {resp}")
        seen = self.rcv.wait_requests(1)[0]
        self.assertEqual(seen.header("Content-Length"), str(len(body)))
        self.assertEqual(seen.body_sha256, hashlib.sha256(body).hexdigest())
        wait_until(lambda: storage_fds(self.gw.pid, self.gw.storage_dir) == baseline_fds,
                   10 * SCALE, f"the spill file {spilled} closed")
        self.assertEqual(sorted(os.listdir(self.gw.storage_dir)), baseline_files,
                         "spill files left in storage.dir")

    def test_content_length_upload_spills_and_arrives_identical(self):
        body = pseudo_random(21 * MIB + 7, b"cl")
        c = self.connect()
        c.send(build_request("POST", "/up", body=body))
        resp = c.final_response(timeout=30 * SCALE)
        self.assertEqual(resp.status, 200, f"response: {resp}")
        seen = self.rcv.wait_requests(1)[0]
        self.assertEqual((seen.body_len, seen.body_sha256),
                         (len(body), hashlib.sha256(body).hexdigest()))

    def test_50_concurrent_connections(self):
        bodies = [pseudo_random(200_000 + i, b"c%d" % i) for i in range(50)]

        def work(i):
            blocks = [bodies[i][j: j + 30_000] for j in range(0, len(bodies[i]), 30_000)]
            return upload_chunked(self.gw.port, f"/up?i={i}", blocks, 30 * SCALE)
        results = run_parallel(50, work, 60 * SCALE)
        self.assertEqual([r[0] for r in results], [200] * 50)
        self.assertEqual([r[1] for r in results], [f"POST /up?i={i}".encode() for i in range(50)])
        self.assertEqual(len({r[2] for r in results}), 50, "request ids repeat across workers")
        by_target = {s.target: s for s in self.rcv.wait_requests(50)}
        for i, body in enumerate(bodies):
            self.assertEqual(by_target[f"/up?i={i}"].body_sha256, hashlib.sha256(body).hexdigest())

    def test_large_response_to_a_slow_reader_is_not_buffered(self):
        body = pseudo_random(64 * MIB, b"resp")
        self.rcv.reply_with(Reply(body=body))
        before = self.gw.memory_kib("VmRSS")
        c = self.connect()
        c.send(build_request("GET", "/up"))
        time.sleep(1.5)  # not reading: the gateway must stop reading from the target
        grown_mib = (self.gw.memory_kib("VmRSS") - before) / 1024
        resp = c.final_response("GET", timeout=30 * SCALE)
        self.assertEqual(hashlib.sha256(resp.body).digest(), hashlib.sha256(body).digest())
        if not SANITIZED:  # sanitizer shadow memory makes RSS meaningless
            self.assertLess(grown_mib, 24, f"RSS grew {grown_mib:.0f} MiB while the client stalled")

    @unittest.skipIf(SANITIZED, "memory bound is meaningless under sanitizers")
    def test_memory_bound_with_50_concurrent_50mib_uploads(self):
        block = pseudo_random(MIB, b"mem")
        digest = hashlib.sha256(block * 50).hexdigest()
        started = time.monotonic()
        results = run_parallel(
            50, lambda i: upload_chunked(self.gw.port, "/up", [block] * 50, 120), 150)
        self.assertEqual([r[0] for r in results], [200] * 50)
        seen = self.rcv.wait_requests(50)
        self.assertEqual({(s.body_len, s.body_sha256) for s in seen}, {(50 * MIB, digest)})
        hwm_mib = self.gw.memory_kib() / 1024
        print(f"\n50 x 50 MiB in {time.monotonic() - started:.1f}s, VmHWM {hwm_mib:.0f} MiB")
        self.assertLess(hwm_mib, 150, f"daemon peak RSS {hwm_mib:.0f} MiB")



class SmallMemoryBufferTests(GatewayCase):
    """memory_buffer below the 128 KiB read block: the byte limit still decides when a body
    spills (a body may pin the one block its connection reads into)."""
    keep_bodies = False

    @classmethod
    def gateway(cls):
        return Daemon([{"name": "up", "path": "/up", "target": cls.rcv.url("/up")}],
                      limits={"memory_buffer": "64KiB"})

    def test_body_within_memory_buffer_stays_in_memory_and_past_it_spills(self):
        first = pseudo_random(20_000, b"small-a")
        second = pseudo_random(90_000, b"small-b")
        baseline = storage_fds(self.gw.pid, self.gw.storage_dir)
        c = self.connect()
        c.send(CHUNKED_HEAD + b"%x\r\n%s\r\n" % (len(first), first))
        time.sleep(0.5 * SCALE)  # the gateway has read the first chunk by now
        self.assertEqual(storage_fds(self.gw.pid, self.gw.storage_dir), baseline,
                         "20 KB of a body with memory_buffer 64KiB went to a spill file")
        c.send(b"%x\r\n%s\r\n" % (len(second), second))
        wait_until(lambda: storage_fds(self.gw.pid, self.gw.storage_dir) - baseline,
                   10 * SCALE, "a spill file once the body passed memory_buffer")
        c.send(b"0\r\n\r\n")
        resp = c.final_response(timeout=30 * SCALE)
        self.assertEqual(resp.status, 200, f"response: {resp}")
        seen = self.rcv.wait_requests(1)[0]
        self.assertEqual((seen.body_len, seen.body_sha256),
                         (len(first) + len(second), hashlib.sha256(first + second).hexdigest()))

    @unittest.skipIf(SANITIZED, "memory bound is meaningless under sanitizers")
    def test_bodies_in_one_byte_chunks_stay_within_the_memory_bound(self):
        # A Span per chunk and the read blocks the chunks pin count against memory_buffer, also
        # after the first spill: 1-byte chunks once pinned ~100x memory_buffer per connection.
        body = pseudo_random(200_000, b"tiny")
        wire = CHUNKED_HEAD + b"".join(b"1\r\n" + body[i:i + 1] + b"\r\n" for i in range(len(body))) + b"0\r\n\r\n"
        base_kib = self.gw.memory_kib()

        def upload(i):
            c = Client(self.gw.port, timeout=120)
            try:
                c.send(wire)
                return c.final_response(timeout=120).status
            finally:
                c.close()
        self.assertEqual(run_parallel(20, upload, 240), [200] * 20)
        seen = self.rcv.wait_requests(20)
        self.assertEqual({(s.body_len, s.body_sha256) for s in seen},
                         {(len(body), hashlib.sha256(body).hexdigest())})
        growth_mib = (self.gw.memory_kib() - base_kib) / 1024
        # memory_buffer (64 KiB) plus two read blocks per connection is about 0.3 MiB: 20
        # connections stay far below 30 MiB (before: about 6 MiB per connection).
        self.assertLess(growth_mib, 30, f"peak RSS grew by {growth_mib:.0f} MiB for 20 connections")


class FileSizeLimitTests(GatewayCase):
    """A file size limit (ulimit -f, LimitFSIZE=) fails the spill write of one request: that
    request gets a 500, nothing reaches the target, and the daemon (not killed by SIGXFSZ) goes on."""
    keep_bodies = False

    @classmethod
    def gateway(cls):
        return Daemon([{"name": "up", "path": "/up", "target": cls.rcv.url("/up")}],
                      limits={"memory_buffer": "64KiB"},
                      rlimits={resource.RLIMIT_FSIZE: (1 * MIB, 1 * MIB)})

    def test_a_spill_past_the_file_size_limit_is_a_500_and_the_daemon_goes_on(self):
        big = pseudo_random(3 * MIB, b"fsize")
        c = self.connect()
        c.send(build_request("POST", "/up", chunks=[big[i:i + 64 * 1024] for i in range(0, len(big), 64 * 1024)]))
        resp = c.final_response(timeout=30 * SCALE)
        self.assert_error(resp, 500, "internal_error")
        self.assertIsNone(self.gw.proc.poll(), "the daemon died")
        self.rcv.assert_nothing()
        self.gw.wait_log(r"error route=up request_id=\w+: writing the request body to storage\.dir \S+ failed: "
                         r"File too large \(a file size limit: LimitFSIZE= / ulimit -f\)")
        resp = self.exchange(build_request("POST", "/up", body=b"after"))[0]
        self.assertEqual(resp.status, 200)
        self.assertEqual(self.rcv.wait_requests(1)[0].body_len, 5)


class SlowClientTests(GatewayCase):
    """A client that reads the response slowly pauses the gateway's reading from the target
    (backpressure). That pause is the client's, not the target's: upstream_idle must not end the
    response while it lasts (timeouts.send guards the client)."""
    keep_bodies = False

    @classmethod
    def gateway(cls):
        return Daemon([{"name": "up", "path": "/up", "target": cls.rcv.url("/up")}],
                      timeouts={"upstream_idle": "1s", "send": "30s"})

    def test_client_stalling_past_upstream_idle_still_gets_the_whole_response(self):
        body = pseudo_random(16 * MIB, b"stall")
        self.rcv.reply_with(Reply(body=body))
        c = self.connect()
        c.send(build_request("GET", "/up"))
        time.sleep(2.5 * SCALE)  # reading nothing, well past upstream_idle (1 s)
        resp = c.final_response("GET", timeout=30 * SCALE)
        self.assertEqual(resp.status, 200)
        self.assertEqual(len(resp.body), len(body), "the response was cut short")
        self.assertEqual(hashlib.sha256(resp.body).digest(), hashlib.sha256(body).digest())


if __name__ == "__main__":
    unittest.main()
