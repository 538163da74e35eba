"""Process life cycle (SPEC 2, 8, 11): graceful drain on SIGTERM, drain timeout, second SIGTERM,
SIGHUP reload, access log lines, several workers and listeners."""
import re
import signal
import socket
import threading
import time
import unittest

from harness import (WAIT, Client, Daemon, PeerClosed, Reply, StrictReceiver, build_request, scaled,
                     send_request, wait_until)

ACCESS_FIELDS = {"time", "request_id", "remote", "route", "method", "path", "status", "bytes_in",
                 "chunked", "target_status", "target_ms", "duration_ms"}
RFC3339_MS = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}(Z|[+-]\d\d:\d\d)$"


def wait_served(d: Daemon, path: str, what: str):
    """Polls until a POST to path is answered 200 (e.g. after a reload)."""
    wait_until(lambda: send_request(d.port, build_request("POST", path, body=b"x")).status == 200,
               WAIT, what, step=0.1)


def refuses_connections(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except (ConnectionRefusedError, ConnectionResetError):
        # A SYN that races with the listener's close is answered with a reset: refused as well.
        return True
    return False


class LifecycleTests(unittest.TestCase):
    def setUp(self):
        self.rcv = StrictReceiver()
        self.addCleanup(self.rcv.close)

    def start(self, routes=None, **sections) -> Daemon:
        routes = routes or [{"name": "p", "path_prefix": "/p", "target": self.rcv.url("/p")}]
        d = Daemon(routes, **sections)
        self.addCleanup(d.close)
        d.start(listeners=len(sections.get("listen", [None])))
        return d

    def in_flight(self, d: Daemon, delay: float) -> Client:
        """A request that the receiver holds for `delay` seconds, already forwarded."""
        self.rcv.reply_with(Reply(body=b"slow", delay=delay))
        c = Client(d.port)
        self.addCleanup(c.close)
        c.send(build_request("POST", "/p", body=b"x"))
        self.rcv.wait_requests(1)
        return c

    def test_sigterm_drains_in_flight_request(self):
        d = self.start()
        c = self.in_flight(d, 1.5)
        d.send_signal(signal.SIGTERM)
        wait_until(lambda: refuses_connections(d.port), scaled(1), "the listener to close")
        resp = c.final_response(timeout=WAIT)
        self.assertEqual((resp.status, resp.body), (200, b"slow"))
        self.assertEqual((resp.header("Connection") or "").lower(), "close")
        self.assertTrue(c.is_closed())
        self.assertEqual(d.wait_exit(WAIT), 0)
        self.assert_stopped_line(d, cut=0)

    def test_idle_keep_alive_connection_does_not_hold_the_drain(self):
        d = self.start()
        c = Client(d.port)
        self.addCleanup(c.close)
        c.send(build_request("POST", "/p", body=b"x"))
        self.assertEqual(c.final_response().status, 200)
        started = time.monotonic()
        d.send_signal(signal.SIGTERM)
        self.assertEqual(d.wait_exit(WAIT), 0)
        self.assertLess(time.monotonic() - started, scaled(3))
        self.assertTrue(c.is_closed())

    def test_drain_timeout_cuts_and_exits_0(self):
        d = self.start(timeouts={"drain": "1s"})
        c = self.in_flight(d, 8)
        started = time.monotonic()
        d.send_signal(signal.SIGTERM)
        self.assertEqual(d.wait_exit(WAIT), 0)
        self.assertLess(time.monotonic() - started, scaled(3), "drain timeout not applied")
        self.assertNotEqual(c.state_after(1.0), "open", "the cut connection was left open")
        self.assert_stopped_line(d, cut=1)

    def test_answers_cut_before_the_stop_are_not_counted_as_cut_by_it(self):
        # A target that breaks off mid-response cuts that answer (the client sees the close), but
        # long before the stop: the "stopped" line counts only what the stop itself cut.
        d = self.start()
        body = b"y" * 5000
        head_len = len(Reply(body=body).encode()) - len(body)
        for _ in range(3):
            self.rcv.reply_with(Reply(body=body, action="cut", cut_at=head_len + 1000))
            c = Client(d.port)
            self.addCleanup(c.close)
            c.send(build_request("POST", "/p", body=b"x"))
            with self.assertRaises(PeerClosed):  # the client sees the cut
                c.final_response(timeout=WAIT)
        d.send_signal(signal.SIGTERM)
        self.assertEqual(d.wait_exit(WAIT), 0)
        self.assert_stopped_line(d, cut=0)

    def assert_stopped_line(self, d: Daemon, cut: int):
        lines = [l for l in d.stderr_text().splitlines() if re.search(r" (info|warn) stopped", l)]
        self.assertEqual(len(lines), 1, d.stderr_text()[-2000:])
        if cut == 0:
            self.assertRegex(lines[0], r" info stopped$")
        else:
            self.assertRegex(lines[0], rf" warn stopped; {cut} in-flight request\(s\) were cut$")

    def test_second_sigterm_stops_at_once(self):
        d = self.start()
        self.in_flight(d, 8)
        d.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        started = time.monotonic()
        d.send_signal(signal.SIGTERM)
        self.assertEqual(d.wait_exit(WAIT), 0)
        self.assertLess(time.monotonic() - started, scaled(1.5))
        self.assert_stopped_line(d, cut=1)

    def test_access_log_lines(self):
        d = self.start(routes=[{"name": "p", "path_prefix": "/p", "target": self.rcv.url("/p")},
                               {"name": "e", "path": "/e", "mode": "echo"}])
        self.rcv.reply_with(Reply(202, "Accepted", body=b"ok"))
        requests = [  # raw, method; expected route, path, status, bytes_in, chunked, target
            (build_request("POST", "/p/x?secret=1", chunks=[b"hello", b" world"]), "POST",
             ("p", "/p/x", 202, 11, True, 202)),
            (build_request("POST", "/nope?q=1", body=b"hello"), "POST",
             ("_unmatched", "/nope", 404, None, False, None)),
            (build_request("PUT", "/e", body=b"abc"), "PUT", ("e", "/e", 200, 3, False, None)),
        ]
        sent = []
        for raw, method, _ in requests:
            c = Client(d.port)
            self.addCleanup(c.close)
            c.send(raw)
            resp = c.final_response()
            sent.append((c.local_port, resp.header("X-Request-Id"), method))
        entries = d.access_log_entries(len(requests))
        self.assertEqual(len(entries), len(requests), entries)
        for entry, (local_port, rid, method), (_, _, expected) in zip(entries, sent, requests):
            route, path, status, bytes_in, chunked, target_status = expected
            with self.subTest(path):
                self.assertLessEqual(ACCESS_FIELDS, set(entry), entry)
                self.assertRegex(entry["time"], RFC3339_MS)
                self.assertEqual(entry["request_id"], rid)
                self.assertEqual(entry["remote"], f"127.0.0.1:{local_port}")
                self.assertEqual((entry["route"], entry["method"], entry["path"], entry["status"],
                                  entry["chunked"], entry["target_status"]),
                                 (route, method, path, status, chunked, target_status))
                if bytes_in is not None:
                    self.assertEqual(entry["bytes_in"], bytes_in)
                self.assertIsInstance(entry["duration_ms"], (int, float))
                if target_status is None:
                    self.assertIsNone(entry["target_ms"])
                else:
                    self.assertIsInstance(entry["target_ms"], (int, float))
                self.assertNotIn("secret", str(entry))

    def test_two_workers_serve_concurrent_requests(self):
        d = self.start(workers=2)
        self.assertEqual(sum("listening on" in l for l in d.stderr_lines), 1,
                         "one 'listening on' line per bound address")
        self.rcv.reply_with(Reply(body=b"done", delay=0.3))
        results = []

        def one(i):
            results.append(send_request(d.port, build_request("POST", f"/p/{i}", body=b"x")))
        threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(WAIT)
        self.assertEqual([r.status for r in results], [200] * 8)
        d.stop()

    def test_every_listener_logged_and_served(self):
        d = self.start(listen=[{"address": "127.0.0.1:0"}, {"address": "127.0.0.1:0"}])
        self.assertEqual(len(set(d.ports)), 2, d.stderr_text())
        for port in d.ports:
            self.assertEqual(send_request(port, build_request("POST", "/p", body=b"x")).status,
                             200)
        d.stop()

    def test_ipv6_listener(self):
        try:
            socket.socket(socket.AF_INET6).bind(("::1", 0))
        except OSError:
            self.skipTest("no IPv6 loopback here")
        d = self.start(listen=[{"address": "[::1]:0"}])
        self.assertIn(f"listening on [::1]:{d.port}", d.stderr_text())
        c = Client(d.port, host="::1")
        self.addCleanup(c.close)
        c.send(build_request("POST", "/p", host=f"[::1]:{d.port}", body=b"x"))
        self.assertEqual(c.final_response().status, 200)
        seen = self.rcv.wait_requests(1)[0]
        self.assertEqual(seen.header("X-Forwarded-For"), "::1")
        self.assertEqual(seen.header("X-Forwarded-Host"), f"[::1]:{d.port}")
        d.stop()

    def test_sighup_reload_applies_valid_and_rejects_invalid_config(self):
        d = self.start()
        routes = [{"name": "p", "path_prefix": "/p", "target": self.rcv.url("/p")},
                  {"name": "added", "path": "/added", "mode": "echo"}]
        d.rewrite_config(d.config_with(routes=routes))
        d.send_signal(signal.SIGHUP)
        wait_served(d, "/added", "the reloaded route")

        mark = d.log_mark()
        d.rewrite_config(d.config_text + "bogus_key: 1\n")
        d.send_signal(signal.SIGHUP)
        d.wait_log(re.escape(d.config_path), start=mark)
        self.assertIsNone(d.proc.poll(), "a bad reload stopped the daemon")
        self.assertEqual(send_request(d.port, build_request("POST", "/added", body=b"x")).status,
                         200)
        d.stop()

    def test_sighup_in_flight_request_keeps_its_config(self):
        d = self.start()
        c = self.in_flight(d, 1.0)
        d.rewrite_config(d.config_with(routes=[{"name": "other", "path": "/o", "mode": "echo"}]))
        mark = d.log_mark()
        d.send_signal(signal.SIGHUP)
        wait_served(d, "/o", "the reloaded route")
        resp = c.final_response()
        self.assertEqual((resp.status, resp.body), (200, b"slow"))
        self.assertEqual(send_request(d.port, build_request("POST", "/p", body=b"x")).status, 404)
        self.assertNotRegex(d.stderr_text(mark), r"(?i)restart")
        d.stop()

    def test_sighup_cannot_change_workers(self):
        d = self.start()
        mark = d.log_mark()
        d.rewrite_config(d.config_with(workers=2, routes=[
            {"name": "p", "path_prefix": "/p", "target": self.rcv.url("/p")},
            {"name": "added", "path": "/added", "mode": "echo"}]))
        d.send_signal(signal.SIGHUP)
        d.wait_log(r"(?i)workers.*restart|restart.*workers", start=mark)
        wait_served(d, "/added", "the rest of the new config applied")
        d.stop()


if __name__ == "__main__":
    unittest.main()
