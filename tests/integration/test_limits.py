"""Size limits, timers and the connection limit (SPEC 3, 4 and 11)."""
import os
import resource
import threading
import time
import unittest

from harness import (PeerClosed, SANITIZED, WAIT, Client, Daemon, GatewayCase, StrictReceiver,
                     build_request, scaled, send_request, wait_until)

LIMITS = {"max_body_size": 1000, "max_header_size": 1024, "max_headers": 10,
          "max_uri_size": 256}
T = 2.0 if SANITIZED else 1.0  # the daemon's header, body and idle timers, in seconds
TIMERS = {name: f"{int(T * 1000)}ms" for name in ("header", "body", "idle")}
HEAD = b"POST /l HTTP/1.1\r\nHost: gw\r\n"


def counted(head: bytes) -> int:
    """What max_header_size counts: the request line and every field line with their CRLFs
    (everything before the final empty line)."""
    return len(head) - 2


def get_with_size(size: int, target: str = "/l", fields=()) -> bytes:
    """A complete GET head whose counted size is exactly `size` (padded with X-Pad)."""
    base = build_request("GET", target, [*fields, ("X-Pad", "a")])
    return build_request("GET", target, [*fields, ("X-Pad", "a" * (size - counted(base) + 1))])


def with_fields(count: int) -> bytes:
    """A GET with exactly `count` header fields, Host included."""
    return build_request("GET", "/l", [(f"X-{i}", "v") for i in range(count - 1)])


class LimitTests(GatewayCase):
    @classmethod
    def gateway(cls):
        return Daemon([
            {"name": "l", "path_prefix": "/l", "target": cls.rcv.url("/l")},
            {"name": "big", "path": "/big", "target": cls.rcv.url("/big"),
             "max_body_size": 5000},
            {"name": "get-only", "path": "/g", "methods": ["GET"], "target": cls.rcv.url("/g")},
            {"name": "kb", "path": "/kb", "target": cls.rcv.url("/kb"), "max_body_size": "1KB"},
            {"name": "kib", "path": "/kib", "target": cls.rcv.url("/kib"),
             "max_body_size": "1KiB"},
        ], limits=LIMITS, timeouts=TIMERS)

    def accepted(self, raw: bytes, method: str = "POST"):
        self.rcv.reset()
        seen, _ = self.forward(raw, method=method)
        return seen

    # -- body size --------------------------------------------------------------------------
    def test_content_length_over_limit_is_413_before_the_body(self):
        c = self.connect()
        c.send(HEAD + b"Content-Length: 1001\r\n\r\n")  # the body is never sent
        self.assert_error(c.final_response(), 413, "body_too_large")
        self.assertTrue(c.is_closed())
        self.rcv.assert_nothing()

    def test_body_limit_boundaries(self):
        cases = [("/l", 1000, True), ("/l", 1001, False), ("/big", 1001, True),
                 ("/big", 5000, True), ("/big", 5001, False), ("/kb", 1000, True),
                 ("/kb", 1001, False), ("/kib", 1024, True), ("/kib", 1025, False)]
        for path, size, ok in cases:
            for framing in ("length", "chunked"):
                with self.subTest(path=path, size=size, framing=framing):
                    body = b"b" * size
                    raw = (build_request("POST", path, body=body) if framing == "length" else
                           build_request("POST", path, chunks=[body[:size // 3], body[size // 3:]]))
                    if ok:
                        self.assert_forwarded(self.accepted(raw), path, body)
                    else:
                        self.assert_rejected(raw, 413)

    def test_413_readable_while_the_client_keeps_sending(self):
        c = self.connect()
        c.send(HEAD + b"Content-Length: 4000000\r\n\r\n")

        def pump():
            try:
                c.send(b"x" * 4_000_000)
            except OSError:
                pass  # the gateway stops reading after its answer
        sender = threading.Thread(target=pump, daemon=True)
        sender.start()
        self.assert_error(c.final_response(), 413, "body_too_large")
        self.assertTrue(c.is_closed())
        sender.join(WAIT)

    def test_chunked_413_as_soon_as_the_limit_is_crossed(self):
        cases = {"many small chunks": b"".join(b"64\r\n" + b"c" * 100 + b"\r\n" for _ in range(10))
                 + b"1\r\nc",
                 "one chunk": b"3E9\r\n" + b"c" * 1001,
                 "uneven chunks": b"258\r\n" + b"c" * 600 + b"\r\n191\r\n" + b"c" * 401}
        for name, partial in cases.items():
            with self.subTest(name):
                c = self.connect()
                # No last chunk: the answer must come as the limit is crossed.
                c.send(HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + partial)
                self.assert_error(c.final_response(), 413, "body_too_large")
                self.assertTrue(c.is_closed())
        self.rcv.assert_nothing()

    # -- request-target and head size -------------------------------------------------------
    def test_uri_limit_boundary(self):
        self.assertEqual(self.accepted(build_request("GET", "/l/" + "a" * 253), "GET").target,
                         "/l/" + "a" * 253)
        self.assert_rejected(build_request("POST", "/l/" + "a" * 254, body=b"x"), 414)

    def test_uri_limit_before_header_limits(self):
        fields = [(f"X-{i}", "v" * 100) for i in range(20)]
        self.assert_rejected(build_request("POST", "/l/" + "a" * 300, fields, body=b"x"), 414)

    def test_uri_limit_answered_before_the_head_is_complete(self):
        c = self.connect()
        c.send(b"GET /l/" + b"a" * 400)
        self.assert_error(c.final_response(), 414, "uri_too_long")
        self.assertTrue(c.is_closed())

    def test_header_size_boundary(self):
        self.assertEqual(counted(get_with_size(1024)), 1024)
        self.accepted(get_with_size(1024), "GET")
        self.assert_rejected(get_with_size(1025), 431, method="GET")

    def test_header_size_answered_before_the_head_is_complete(self):
        c = self.connect()
        c.send(HEAD + b"X-Pad: " + b"a" * 2000)
        self.assert_error(c.final_response(), 431, "headers_too_large")
        self.assertTrue(c.is_closed())

    def test_header_count_boundary(self):
        self.accepted(with_fields(10), "GET")
        self.assert_rejected(with_fields(11), 431, method="GET")

    def test_header_count_answered_before_the_head_is_complete(self):
        c = self.connect()
        c.send(HEAD + b"".join(b"X-%d: v\r\n" % i for i in range(30)))
        self.assert_error(c.final_response(), 431, "headers_too_large")
        self.assertTrue(c.is_closed())

    def test_trailers_count_toward_header_limits(self):
        fields = [("X-1", "v"), ("X-2", "v"), ("X-3", "v")]  # + Host + Transfer-Encoding = 5
        cases = [
            ("5 fields + 5 trailers", fields, [(f"T-{i}", "v") for i in range(5)], True),
            ("5 fields + 6 trailers", fields, [(f"T-{i}", "v") for i in range(6)], False),
            ("400 + 400 bytes", [("X-Pad", "a" * 400)], [("T-Pad", "a" * 400)], True),
            ("600 + 600 bytes", [("X-Pad", "a" * 600)], [("T-Pad", "a" * 600)], False),
            ("one trailer over the size", [], [("T-Pad", "a" * 1100)], False),
        ]
        for name, head_fields, trailers, ok in cases:
            with self.subTest(name):
                raw = build_request("POST", "/l", head_fields, chunks=[b"abc"], trailers=trailers)
                if ok:
                    self.assert_forwarded(self.accepted(raw), "/l", b"abc")
                else:
                    self.assert_rejected(raw, 431, closed=None)

    def test_order_of_checks(self):
        """505, framing 400/501, 414, 431, 404, 405, 417, 413 (SPEC 11), complete heads."""
        long = "/l/" + "a" * 300
        cl_te = [("Content-Length", "5"), ("Transfer-Encoding", "chunked")]
        cases = [
            ("505 before 414", build_request("POST", long, version="HTTP/2.0", body=b"x"), 505),
            ("400 before 414", build_request("POST", long, cl_te) + b"0\r\n\r\n", 400),
            ("501 before 414", build_request("POST", long, [("Transfer-Encoding", "gzip")]), 501),
            ("414 before 431", build_request("POST", long, [("X-Pad", "a" * 1100)], body=b"x"),
             414),
            ("414 before 404", build_request("POST", "/nope/" + "a" * 300, body=b"x"), 414),
            ("431 size before 404", build_request("POST", "/nope", [("X-Pad", "a" * 1100)],
                                                  body=b"x"), 431),
            ("431 count before 404", build_request("POST", "/nope", [(f"X-{i}", "v")
                                                                     for i in range(12)]), 431),
            ("404 before 413", build_request("POST", "/nope", body=b"x" * 2000), 404),
            ("405 before 417", build_request("POST", "/g", [("Expect", "foo")], body=b"x"), 405),
            ("405 before 413", build_request("POST", "/g", body=b"x" * 2000), 405),
            ("417 before 413", build_request("POST", "/l", [("Expect", "foo")], body=b"x" * 2000),
             417),
        ]
        for name, raw, status in cases:
            with self.subTest(name):
                self.assert_rejected(raw, status)

    # -- timers -----------------------------------------------------------------------------
    def assert_timeout_408(self, c: Client, started: float):
        resp = c.final_response(timeout=WAIT)
        elapsed = time.monotonic() - started
        self.assert_error(resp, 408, "request_timeout")
        self.assertGreater(elapsed, 0.8 * T, "408 before the timer ran out")
        self.assertLess(elapsed, T + scaled(2), "408 long after the timer")
        self.assertTrue(c.is_closed())
        self.rcv.assert_nothing()

    def test_header_timeout_on_partial_head(self):
        c = self.connect()
        started = time.monotonic()
        c.send(HEAD)
        self.assert_timeout_408(c, started)

    def test_header_timeout_is_total_not_per_byte(self):
        c = self.connect()
        started = time.monotonic()
        trickle = iter(HEAD + b"X-Slow: " + b"s" * 100)
        while c.state_after(0.1) == "open":
            c.send(bytes([next(trickle)]))
            self.assertLess(time.monotonic() - started, T + scaled(3), "trickled head: no 408")
        self.assert_timeout_408(c, started)

    def test_header_timer_stops_when_the_head_is_complete(self):
        c = self.connect()
        c.send(HEAD[:5])
        time.sleep(0.6 * T)
        c.send(HEAD[5:] + b"Content-Length: 5\r\n\r\n")  # head complete at 0.6 T
        time.sleep(0.7 * T)  # past the header timer, within the body timer
        c.send(b"hello")
        resp = c.final_response()
        self.assertEqual(resp.status, 200, f"response: {resp}")

    def test_silent_close_when_no_byte_was_sent(self):
        c = self.connect()
        started = time.monotonic()
        self.assertTrue(c.is_closed(WAIT), "an idle new connection must be closed")
        self.assertEqual(c.stream.buf, b"", "nothing may be answered")
        self.assertGreater(time.monotonic() - started, 0.8 * T)

    def test_body_timeout(self):
        cases = {"length": HEAD + b"Content-Length: 10\r\n\r\nhello",
                 "chunked": HEAD + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"}
        for name, raw in cases.items():
            with self.subTest(name):
                c = self.connect()
                started = time.monotonic()
                c.send(raw)
                self.assert_timeout_408(c, started)

    def test_body_timeout_is_total_not_per_byte(self):
        c = self.connect()
        started = time.monotonic()
        c.send(HEAD + b"Content-Length: 30\r\n\r\n")
        while c.state_after(0.2) == "open":
            c.send(b"x")
            self.assertLess(time.monotonic() - started, T + scaled(4), "trickled body: no 408")
        self.assert_timeout_408(c, started)

    def test_idle_keep_alive_closed_silently(self):
        resp, c = self.exchange(build_request("POST", "/l", body=b"x"))
        self.assertEqual(resp.status, 200)
        started = time.monotonic()
        self.assertFalse(c.is_closed(0.5 * T), "closed before the idle timer")
        self.assertTrue(c.is_closed(WAIT), "idle keep-alive connection not closed")
        self.assertLess(time.monotonic() - started, T + scaled(2))

    def test_header_timer_starts_at_first_byte_of_next_request(self):
        resp, c = self.exchange(build_request("POST", "/l", body=b"x"))
        self.assertEqual(resp.status, 200)
        time.sleep(0.6 * T)  # idle, below timeouts.idle
        started = time.monotonic()
        c.send(HEAD)     # a partial head: now the header timer runs
        self.rcv.reset()
        self.assert_timeout_408(c, started)


class ConnectionLimitTests(GatewayCase):
    """max_connections counts the whole process (two workers here)."""

    @classmethod
    def gateway(cls):
        return Daemon([{"name": "l", "path_prefix": "/l", "target": cls.rcv.url("/l")}],
                      workers=2, limits={"max_connections": 2},
                      timeouts={"header": "10s", "idle": "10s"})

    def open_served(self) -> Client:
        c = self.connect()
        resp, _ = self.exchange(build_request("POST", "/l", body=b"x"), client=c)
        self.assertEqual(resp.status, 200)
        return c

    def test_over_limit_gets_503_and_close(self):
        first = self.open_served()
        self.open_served()
        extra = self.connect()
        resp = extra.final_response()  # answered without sending a request
        self.assert_error(resp, 503, "overloaded")
        self.assertEqual(resp.header("Retry-After"), "1")
        self.assertTrue(extra.is_closed())
        first.close()

        def served_again():
            c = Client(self.gw.port)
            try:
                c.send(build_request("POST", "/l", body=b"y"))
                return c.final_response().status == 200
            finally:
                c.close()
        wait_until(served_again, WAIT, "a free connection slot after a close", step=0.1)


class IdleFloodTests(GatewayCase):
    """A flood of idle connections (slowloris without a byte) cannot hold the gateway: beyond
    max_connections they get 503 at once, the held ones are closed by the header timer, and
    well-behaved clients are served meanwhile or right after (issue 4)."""
    receiver_names = ("main",)

    @classmethod
    def gateway(cls):
        return Daemon([{"name": "l", "path_prefix": "/l", "target": cls.rcv.url("/l")}],
                      workers=2, limits={"max_connections": 40}, timeouts={"header": "1s"})

    def served(self) -> bool:
        c = Client(self.gw.port)
        try:
            c.send(build_request("POST", "/l", body=b"ok"))
            return c.final_response().status == 200
        finally:
            c.close()

    def test_idle_flood_below_the_limit_does_not_slow_others(self):
        idle = [self.connect() for _ in range(30)]
        for _ in range(5):
            self.assertTrue(self.served())
        self.assertTrue(all(c.is_closed(timeout=WAIT) for c in idle), "idle connections outlived the header timer")

    def test_idle_flood_over_the_limit_is_refused_then_drained(self):
        flood = [Client(self.gw.port) for _ in range(60)]
        for c in flood:
            self.addCleanup(c.close)
        # Which 40 are held depends on how the kernel spreads them over the workers: each one
        # gets either an immediate 503, or is closed silently when its header timer runs out.
        refused = silent = 0
        for c in flood:
            try:
                resp = c.final_response()
            except PeerClosed:
                silent += 1
                continue
            self.assert_error(resp, 503, "overloaded")
            self.assertTrue(c.is_closed())
            refused += 1
        self.assertEqual((refused, silent), (20, 40))
        # The operator hears of it (once a second at most), not only the metrics.
        self.gw.wait_log(r"warn limits\.max_connections \(40\) reached: \d+ connection\(s\) answered 503 "
                         r"since the last such line")
        wait_until(self.served, WAIT, "a well-behaved client served after the flood", step=0.1)


if __name__ == "__main__":
    unittest.main()


class DescriptorExhaustionTests(unittest.TestCase):
    """Out of file descriptors (EMFILE): the gateway says so once in a while and waits for
    descriptors to come back instead of spinning on the listener; it serves again after."""

    def test_running_out_of_descriptors_neither_spins_nor_floods_the_log(self):
        if "UBSAN_OPTIONS" in os.environ:
            # UBSan's vptr check tests memory readability through a pipe: with no descriptor
            # left it reports an "invalid vptr" for a valid object, and no suppression applies.
            # The release and TSan runs cover this test.
            self.skipTest("UBSan cannot run its vptr check without a free descriptor")
        rcv = StrictReceiver()
        self.addCleanup(rcv.close)
        d = Daemon([{"name": "l", "path_prefix": "/l", "target": rcv.url("/l")}],
                   rlimits={resource.RLIMIT_NOFILE: (64, 64)})
        self.addCleanup(d.close)
        d.start()
        d.wait_log(r"warn RLIMIT_NOFILE is 64 descriptors, below limits\.max_connections 10000")
        held = []
        for _ in range(80):  # more than the daemon has descriptors left
            c = Client(d.port)
            held.append(c)
            self.addCleanup(c.close)
        d.wait_log(r"accept on 127\.0\.0\.1:\d+ failed: Too many open files \(\d+ time\(s\) since the "
                   r"last such line\); not accepting for 100 ms; \d+ connection\(s\) open, RLIMIT_NOFILE 64: "
                   r"raise LimitNOFILE= \(systemd\) or lower limits\.max_connections")
        cpu0, t0 = process_cpu_seconds(d.pid), time.monotonic()
        time.sleep(1.5)
        cpu, wall = process_cpu_seconds(d.pid) - cpu0, time.monotonic() - t0
        self.assertLess(cpu, 0.5 * wall, f"the daemon spun: {cpu:.2f} s of CPU in {wall:.2f} s")
        lines = [l for l in d.stderr_text().splitlines() if "Too many open files" in l]
        self.assertLessEqual(len(lines), 6, "the failure is logged at most about once a second")
        for c in held:
            c.close()

        def served() -> bool:
            try:
                return send_request(d.port, build_request("POST", "/l", body=b"ok")).status == 200
            except (PeerClosed, OSError):
                return False  # still working through the closed connections in the backlog
        wait_until(served, WAIT, "served again once descriptors are free", step=0.2)


def process_cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
