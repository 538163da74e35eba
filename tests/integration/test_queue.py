#!/usr/bin/env python3
"""Queue mode end to end (SPEC 6, 8, 11; /tmp/queue-contract.md): the 202 acknowledgement and
its id, delivery headers, fan-out, retries (statuses, Retry-After, connection errors, timeouts),
max_attempts / max_age dead letters, the dead-letter admin API (list, show, replay, delete,
paging), dedupe (also across a restart and a SIGKILL), pause / resume (also across a reload and
a restart), a full queue, FIFO with max_in_flight: 1, resuming after a restart, GET /queue, the
queue metrics and the per-attempt log line.

Every test starts its own daemon (with an admin listener) and its own receivers.
"""
import base64
import calendar
import email.utils
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import unittest

from harness import (parse_metrics, WAIT, Client, Daemon, Reply, StrictReceiver, build_request,
                     free_port, pseudo_random, scaled, send_request, wait_until)

TOKEN = "queue-admin-token"
AUTH = [("Authorization", "Bearer " + TOKEN)]
# ULID-like: 26 characters of Crockford base32 (upper case, no I L O U).
MESSAGE_ID = re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}$")
RFC3339_MS = re.compile(r"^(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)\.(\d{3})(Z|[+-]\d\d:\d\d)$")
DEAD_LETTER_KEYS = {"id", "message_id", "route", "target", "attempts", "last_status",
                    "last_error", "first_attempt", "last_attempt"}
FAST = {"initial_backoff": "50ms", "max_backoff": "200ms"}
CURL = shutil.which("curl")


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------

def metric(name: str, **labels) -> str:
    """The sample key as the gateway writes it: labels in the SPEC's order."""
    if not labels:
        return "dechunkd_" + name
    return "dechunkd_%s{%s}" % (name, ",".join(f'{k}="{v}"' for k, v in labels.items()))


def rfc3339_epoch(text: str) -> float:
    m = RFC3339_MS.match(text)
    assert m, f"not an RFC 3339 time with milliseconds: {text!r}"
    y, mo, d, h, mi, s, ms, zone = m.groups()
    t = calendar.timegm((int(y), int(mo), int(d), int(h), int(mi), int(s))) + int(ms) / 1000
    if zone != "Z":
        sign = 1 if zone[0] == "+" else -1
        t -= sign * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60)
    return t


def receiver_on(port: int) -> StrictReceiver:
    """A StrictReceiver listening on a given port (for targets that are down first)."""
    r = StrictReceiver()
    old = r.listener
    new = socket.socket()
    new.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    new.bind(("127.0.0.1", port))
    new.listen(256)
    r.listener, r.port = new, port
    try:
        old.shutdown(socket.SHUT_RDWR)  # ends the accept loop on the ephemeral port
    except OSError:
        pass
    old.close()
    r._threads[0].join(timeout=2)
    t = threading.Thread(target=r._accept_loop, daemon=True)
    r._threads.append(t)
    t.start()
    return r


class Timed:
    """A receiver handler that notes when each request arrived and answers via `reply(seen)`."""

    def __init__(self, rcv: StrictReceiver, reply):
        self.times: list = []
        self.reply = reply
        rcv.handler = self

    def __call__(self, seen):
        self.times.append(time.monotonic())
        return self.reply(seen)


def replies(*seq: Reply):
    """A reply function answering with seq in order, then repeating the last one."""
    queue = list(seq)
    lock = threading.Lock()

    def reply(_seen):
        with lock:
            return queue.pop(0) if len(queue) > 1 else queue[0]
    return reply


class QueueCase(unittest.TestCase):
    # -- set-up -----------------------------------------------------------------------------
    def receiver(self) -> StrictReceiver:
        r = StrictReceiver()
        self.addCleanup(r.close)
        self.addCleanup(r.assert_clean)  # cleanups run last-in first-out: this runs first
        return r

    def port_receiver(self, port: int) -> StrictReceiver:
        r = receiver_on(port)
        self.addCleanup(r.close)
        self.addCleanup(r.assert_clean)
        return r

    def start(self, routes, token: bool = True, tmpdir=None, **sections) -> Daemon:
        """A daemon with an admin listener (with a token file unless token=False)."""
        admin_port = free_port()
        d = Daemon(routes, tmpdir=tmpdir, **sections)
        admin = {"address": f"127.0.0.1:{admin_port}"}
        if token:
            path = os.path.join(d.tmp, "admin.token")
            with open(path, "w") as f:
                f.write(TOKEN + "\n")
            admin["token_file"] = path
        d.config["admin"] = admin
        d.config_text = d.config_with()
        self.addCleanup(d.close)
        d.start()
        d.wait_log(r"admin endpoint listening on 127\.0\.0\.1:%d" % admin_port)
        d.admin_port = admin_port
        d.routes = routes
        return d

    def restart(self, d: Daemon, routes=None, token: bool = True, **sections) -> Daemon:
        """Stops d gracefully (SIGTERM, exit 0) and starts a new daemon on the same storage."""
        d.stop()
        return self.start(routes if routes is not None else d.routes, token=token, tmpdir=d.tmp,
                          **sections)

    # -- talking to the gateway -------------------------------------------------------------
    def post(self, d: Daemon, path: str = "/q", body: bytes = b"hello", headers=(),
             chunked: bool = True):
        if chunked:
            half = len(body) // 2
            raw = build_request("POST", path, list(headers), chunks=[body[:half], body[half:]])
        else:
            raw = build_request("POST", path, list(headers), body=body)
        return send_request(d.port, raw)

    def assert_accepted(self, resp, status: int = 202) -> str:
        """The queue acknowledgement: status, JSON content type, body exactly {"id":"..."}."""
        self.assertEqual(resp.status, status, f"response: {resp}")
        self.assertEqual(resp.header("Content-Type"), "application/json", f"response: {resp}")
        self.assertTrue(resp.header("X-Request-Id"), f"no X-Request-Id: {resp}")
        m = re.fullmatch(rb'\{"id":"([^"]*)"\}', resp.body)
        self.assertTrue(m, f"202 body is not exactly {{\"id\":\"...\"}}: {resp.body!r}")
        msg_id = m.group(1).decode()
        self.assertRegex(msg_id, MESSAGE_ID)
        return msg_id

    def accept(self, d: Daemon, path: str = "/q", body: bytes = b"hello", headers=(),
               chunked: bool = True, status: int = 202) -> str:
        return self.assert_accepted(self.post(d, path, body, headers, chunked), status)

    def admin(self, d: Daemon, method: str, path: str, auth: bool = True, headers=()):
        hdrs = list(headers) + (AUTH if auth else [])
        return send_request(d.admin_port, build_request(method, path, hdrs), method=method)

    def admin_json(self, d: Daemon, method: str, path: str, status: int = 200, auth: bool = True):
        resp = self.admin(d, method, path, auth)
        self.assertEqual(resp.status, status, f"{method} {path}: {resp}")
        self.assertEqual((resp.header("Content-Type") or "").split(";")[0], "application/json",
                         f"{method} {path}: {resp}")
        return resp.json()

    def assert_admin_error(self, resp, status: int, word: str):
        self.assertEqual(resp.status, status, f"response: {resp}")
        self.assertEqual((resp.header("Content-Type") or "").split(";")[0], "application/json")
        body = resp.json()
        self.assertEqual(set(body), {"error", "message", "request_id"}, f"body: {body}")
        self.assertEqual(body["error"], word)
        self.assertTrue(body["message"].strip())
        self.assertIsInstance(body["request_id"], str)
        self.assertTrue(body["request_id"])
        if resp.header("X-Request-Id") is not None:  # SPEC 11 asks only for the body field here
            self.assertEqual(body["request_id"], resp.header("X-Request-Id"))

    def queue(self, d: Daemon) -> dict:
        return self.admin_json(d, "GET", "/queue")

    def dead_letters(self, d: Daemon, query: str = "") -> list:
        body = self.admin_json(d, "GET", "/dead-letters" + query)
        self.assertEqual(set(body), {"dead_letters"}, f"body: {body}")
        return body["dead_letters"]

    def wait_dead_letters(self, d: Daemon, n: int, timeout: float = WAIT, query: str = "") -> list:
        return wait_until(lambda: (lambda dl: dl if len(dl) >= n else None)(self.dead_letters(d, query)),
                          timeout, f"{n} dead letters")

    def pause(self, d: Daemon, route: str = "q"):
        resp = self.admin(d, "POST", f"/routes/{route}/pause")
        self.assertEqual((resp.status, resp.body), (204, b""), f"pause: {resp}")

    def resume(self, d: Daemon, route: str = "q"):
        resp = self.admin(d, "POST", f"/routes/{route}/resume")
        self.assertEqual((resp.status, resp.body), (204, b""), f"resume: {resp}")

    def metrics(self, d: Daemon) -> tuple:
        resp = self.admin(d, "GET", "/metrics", auth=False)
        self.assertEqual(resp.status, 200)
        text = resp.body.decode()
        return text, parse_metrics(text)

    def wait_metric(self, d: Daemon, key: str, value: float, timeout: float = WAIT):
        last = {}

        def check():
            last["m"] = self.metrics(d)[1]
            return last["m"].get(key) == value
        try:
            wait_until(check, timeout, f"{key} == {value}")
        except AssertionError as e:
            raise AssertionError(f"{e}; last value {last.get('m', {}).get(key)!r}") from None

    def wait_metric_at_least(self, d: Daemon, key: str, value: float, timeout: float = WAIT):
        wait_until(lambda: self.metrics(d)[1].get(key, -1) >= value, timeout, f"{key} >= {value}")

    def assert_dead_letter(self, dl: dict, msg_id: str, index: int, route: str, target: str,
                           attempts: int, last_status):
        self.assertEqual(set(dl), DEAD_LETTER_KEYS, f"dead letter: {dl}")
        self.assertEqual(dl["id"], f"{msg_id}.{index}")
        self.assertEqual(dl["message_id"], msg_id)
        self.assertEqual(dl["route"], route)
        self.assertEqual(dl["target"], target)
        self.assertEqual(dl["attempts"], attempts, f"dead letter: {dl}")
        self.assertEqual(dl["last_status"], last_status, f"dead letter: {dl}")
        self.assertIsInstance(dl["last_error"], str)
        if last_status is None:
            self.assertTrue(dl["last_error"].strip(), "no status: the error must say why")
        first, last = rfc3339_epoch(dl["first_attempt"]), rfc3339_epoch(dl["last_attempt"])
        self.assertLessEqual(first, last)
        self.assertLess(abs(time.time() - last), 120, f"times far from now: {dl}")

    def assert_delivered_never_retried(self, d: Daemon, target: str, delivered: int):
        """Route q's deliveries to target: `delivered` succeeded, and none was retried."""
        self.wait_metric(d, metric("deliveries_total", route="q", target=target,
                                   result="delivered"), delivered)
        self.settle()
        text, m = self.metrics(d)
        self.assertEqual(m.get(metric("deliveries_total", route="q", target=target,
                                      result="retried"), 0), 0, text)

    def settle(self, seconds: float = 0.5):
        """Gives a wrongly sent extra delivery the time to arrive before counting."""
        time.sleep(seconds)

    @staticmethod
    def deliveries(rcv: StrictReceiver) -> list:
        return [(s.header("X-Dechunkd-Delivery-Id"), s.header("X-Dechunkd-Attempt"))
                for s in rcv.requests]


def q_route(targets, name: str = "q", path: str = "/q", **extra) -> dict:
    route = {"name": name, "path": path, "mode": "queue",
             "targets": [t if isinstance(t, dict) else {"url": t} for t in targets]}
    if path is None:
        del route["path"]
    route.update(extra)
    return route


# --------------------------------------------------------------------------------------------
# accepting and delivering
# --------------------------------------------------------------------------------------------

class AcceptDeliverTests(QueueCase):
    def test_accept_and_deliver_chunked_body_with_content_length(self):
        rcv = self.receiver()
        d = self.start([q_route([rcv.url("/in?sig=abc")])])
        body = b'{"event":"order.created","n":1}\r\n0\r\n\r\n' + bytes(range(256))
        c = Client(d.port)
        self.addCleanup(c.close)
        c.send(build_request("POST", "/q?x=1", [("Content-Type", "application/json"),
                                                 ("X-Custom", "v")],
                             chunks=[body[:7], body[7:40], body[40:]]))
        resp = c.final_response()
        msg_id = self.assert_accepted(resp)
        rid = resp.header("X-Request-Id")
        self.assertIsNone(resp.header("Transfer-Encoding"))
        self.assertEqual(resp.header("Content-Length"), str(len(resp.body)))

        seen = rcv.wait_requests(1)[0]
        self.assertEqual((seen.method, seen.target, seen.version),
                         ("POST", "/in?sig=abc&x=1", "HTTP/1.1"))
        self.assertIsNone(seen.header("Transfer-Encoding"))
        self.assertEqual(seen.header("Content-Length"), str(len(body)))
        self.assertEqual(seen.body, body)
        self.assertEqual(seen.header("X-Dechunkd-Message-Id"), msg_id)
        self.assertEqual(seen.header("X-Dechunkd-Delivery-Id"), msg_id + ".0")
        self.assertEqual(seen.header("X-Dechunkd-Attempt"), "1")
        # Exactly what proxy mode would send, plus the X-Dechunkd-* fields.
        proxied = [f for f in seen.headers if not f[0].lower().startswith("x-dechunkd-")]
        self.assertEqual(proxied, [
            ("Host", rcv.authority), ("Content-Type", "application/json"), ("X-Custom", "v"),
            ("X-Forwarded-For", "127.0.0.1"), ("X-Forwarded-Proto", "http"),
            ("X-Forwarded-Host", "gw.example"), ("X-Request-Id", rid),
            ("Content-Length", str(len(body)))])
        self.assertEqual(len(seen.headers), len(proxied) + 3, f"headers: {seen.headers}")
        # The delivery fields come right before Content-Length, which stays last (SPEC 4).
        self.assertEqual([f[0] for f in seen.headers[-4:]],
                         ["X-Dechunkd-Message-Id", "X-Dechunkd-Delivery-Id", "X-Dechunkd-Attempt",
                          "Content-Length"])

        # The connection stays open for the next request; the next id is a different one.
        c.send(build_request("POST", "/q", body=b"second"))
        second = self.assert_accepted(c.final_response())
        self.assertNotEqual(second, msg_id)
        self.assertGreaterEqual(second[:10], msg_id[:10], "ids are time-ordered")
        seen2 = rcv.wait_requests(2)[1]
        self.assertEqual(seen2.body, b"second")
        self.assertEqual(seen2.header("X-Dechunkd-Delivery-Id"), second + ".0")
        self.settle()
        self.assertEqual(len(rcv.requests), 2, "each message is delivered once")

    def test_sender_request_id_is_kept(self):
        rcv = self.receiver()
        d = self.start([q_route([rcv.url("/in")])])
        resp = self.post(d, body=b"x", headers=[("X-Request-Id", "sender-rid-1")])
        self.assert_accepted(resp)
        self.assertEqual(resp.header("X-Request-Id"), "sender-rid-1")
        self.assertEqual(rcv.wait_requests(1)[0].header("X-Request-Id"), "sender-rid-1")

    def test_ids_are_distinct_and_time_ordered(self):
        rcv = self.receiver()
        d = self.start([q_route([rcv.url("/in")])])
        ids = [self.accept(d, body=b"m%d" % i) for i in range(8)]
        self.assertEqual(len(set(ids)), 8, f"ids repeat: {ids}")
        self.assertEqual(ids, sorted(ids), f"ids do not sort in acceptance order: {ids}")
        crockford = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
        for msg_id in ids:  # ULID: the first 10 characters are the milliseconds since 1970
            ms = 0
            for ch in msg_id[:10]:
                ms = ms * 32 + crockford.index(ch)
            self.assertLess(abs(ms / 1000 - time.time()), 60, f"id {msg_id} is not ULID-like")
        rcv.wait_requests(8)

    def test_content_length_and_empty_bodies(self):
        rcv = self.receiver()
        d = self.start([q_route([rcv.url("/in")])])
        big = pseudo_random(300_000)  # over nothing in particular, but several reads
        for body, chunked in ((b"plain", False), (b"", True), (b"", False), (big, True)):
            with self.subTest(size=len(body), chunked=chunked):
                rcv.reset()
                msg_id = self.accept(d, body=body, chunked=chunked)
                seen = rcv.wait_requests(1)[0]
                self.assertEqual(seen.header("Content-Length"), str(len(body)))
                self.assertEqual(seen.body, body)
                self.assertEqual(seen.header("X-Dechunkd-Message-Id"), msg_id)

    def test_accept_status_is_configurable(self):
        rcv = self.receiver()
        d = self.start([q_route([rcv.url("/in")], accept_status=200)])
        msg_id = self.accept(d, body=b"a", status=200)
        self.assertEqual(rcv.wait_requests(1)[0].header("X-Dechunkd-Message-Id"), msg_id)

    @unittest.skipUnless(CURL, "curl is not installed")
    def test_curl_chunked_upload(self):
        rcv = self.receiver()
        d = self.start([q_route([rcv.url("/in")])])
        data = pseudo_random(70_000, b"curl-q")
        r = subprocess.run([CURL, "-sS", "--http1.1", "--max-time", str(int(WAIT * 2)),
                            "-H", "Transfer-Encoding: chunked", "-H", "Content-Type: application/json",
                            "--data-binary", "@-", "-w", "\n%{http_code}",
                            f"http://127.0.0.1:{d.port}/q"],
                           input=data, capture_output=True, timeout=WAIT * 3)
        self.assertEqual(r.returncode, 0, r.stderr)
        body, _, code = r.stdout.rpartition(b"\n")
        self.assertEqual(code, b"202")
        m = re.fullmatch(rb'\{"id":"([0-9A-HJKMNP-TV-Z]{26})"\}', body)
        self.assertTrue(m, body)
        seen = rcv.wait_requests(1)[0]
        self.assertEqual(seen.body, data)
        self.assertEqual(seen.header("Content-Length"), str(len(data)))
        self.assertEqual(seen.header("X-Dechunkd-Message-Id"), m.group(1).decode())

    def test_refused_requests_are_not_queued_or_remembered(self):
        rcv = self.receiver()
        d = self.start([q_route([rcv.url("/in")], max_body_size=10,
                                auth={"type": "bearer", "token": "t0k"},
                                dedupe={"header": "webhook-id", "window": "1h"})])
        ok = [("Authorization", "Bearer t0k")]
        resp = self.post(d, body=b"x" * 11, headers=ok + [("webhook-id", "w")])
        self.assertEqual((resp.status, resp.json()["error"]), (413, "body_too_large"))
        resp = self.post(d, body=b"x", headers=[("webhook-id", "w")])
        self.assertEqual((resp.status, resp.json()["error"]), (401, "unauthorized"))
        resp = self.post(d, body=b"x", headers=[("Authorization", "Bearer bad"), ("webhook-id", "w")])
        self.assertEqual(resp.status, 401)
        self.settle()
        self.assertEqual(rcv.requests, [])
        self.assertEqual(self.queue(d)["routes"][0]["targets"][0]["pending"], 0)
        msg_id = self.accept(d, body=b"fits", headers=ok + [("webhook-id", "w")])
        seen = rcv.wait_requests(1)[0]
        self.assertEqual((seen.body, seen.header("X-Dechunkd-Message-Id")), (b"fits", msg_id))
        self.assertIsNone(seen.header("Authorization"), "the checked credential is removed")
        self.assertEqual(seen.header("webhook-id"), "w")
        _, m = self.metrics(d)
        self.assertEqual(m.get(metric("requests_total", route="q", mode="queue", status="202")), 1)
        self.assertEqual(m.get(metric("requests_total", route="q", mode="queue", status="413")), 1)
        self.assertEqual(m.get(metric("requests_total", route="q", mode="queue", status="401")), 2)

    def test_large_spilled_body(self):
        rcv = self.receiver()
        d = self.start([q_route([rcv.url("/in")])], limits={"memory_buffer": "64KiB"})
        body = pseudo_random(3 * 1024 * 1024 + 17, b"big")
        chunks = [body[i:i + 100_000] for i in range(0, len(body), 100_000)]
        resp = send_request(d.port, build_request("POST", "/q", chunks=chunks))
        msg_id = self.assert_accepted(resp)
        seen = rcv.wait_requests(1, timeout=scaled(10))[0]
        self.assertEqual(seen.header("Content-Length"), str(len(body)))
        self.assertEqual(seen.body, body)
        self.assertEqual(seen.header("X-Dechunkd-Message-Id"), msg_id)

    def test_every_fsync_policy_accepts_and_delivers(self):
        for policy in ("always", "batch", "never"):
            with self.subTest(fsync=policy):
                rcv = self.receiver()
                d = self.start([q_route([rcv.url("/in")])], storage={"fsync": policy})
                ids = [self.accept(d, body=b"%s-%d" % (policy.encode(), i)) for i in range(5)]
                rcv.wait_requests(5)
                self.assertEqual(sorted(s.header("X-Dechunkd-Message-Id") for s in rcv.requests),
                                 sorted(ids))
                d.stop()

    def test_concurrent_senders_with_two_workers(self):
        a, b = self.receiver(), self.receiver()
        d = self.start([q_route([a.url("/a"), b.url("/b")])], workers=2)
        ids, errors, lock = [], [], threading.Lock()

        def sender(n):
            try:
                c = Client(d.port)
                for i in range(25):
                    c.send(build_request("POST", "/q", chunks=[b"s%d-" % n, b"%d" % i]))
                    resp = c.final_response()
                    m = re.fullmatch(rb'\{"id":"([0-9A-HJKMNP-TV-Z]{26})"\}', resp.body)
                    if resp.status != 202 or not m:
                        errors.append(str(resp))
                        continue
                    with lock:
                        ids.append((m.group(1).decode(), b"s%d-%d" % (n, i)))
                c.close()
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(repr(e))
        threads = [threading.Thread(target=sender, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        self.assertEqual(errors, [])
        self.assertEqual(len({i for i, _ in ids}), 100, "ids repeat")
        for index, rcv in enumerate((a, b)):
            rcv.wait_requests(100, timeout=scaled(10))
        self.settle()
        for index, rcv in enumerate((a, b)):
            got = sorted((s.header("X-Dechunkd-Delivery-Id"), s.body) for s in rcv.requests)
            self.assertEqual(got, sorted((f"{i}.{index}", body) for i, body in ids))

    def test_sender_cannot_supply_the_delivery_headers(self):
        rcv = self.receiver()
        d = self.start([q_route([rcv.url("/in")])])
        msg_id = self.accept(d, headers=[("X-Dechunkd-Message-Id", "FAKE"),
                                         ("X-Dechunkd-Delivery-Id", "FAKE.0"),
                                         ("X-Dechunkd-Attempt", "99")])
        seen = rcv.wait_requests(1)[0]
        # single_header fails when a field is there twice: the receiver must see one value each.
        self.assertEqual(seen.header("X-Dechunkd-Message-Id"), msg_id)
        self.assertEqual(seen.header("X-Dechunkd-Delivery-Id"), msg_id + ".0")
        self.assertEqual(seen.header("X-Dechunkd-Attempt"), "1")

    def test_prefix_route_mapping_expect_and_access_log(self):
        rcv = self.receiver()
        d = self.start([q_route([rcv.url("/base/?sig=1")], name="qp", path=None,
                                path_prefix="/qp/", trailers="merge")])
        c = Client(d.port)
        self.addCleanup(c.close)
        c.send(build_request("POST", "/qp/a/b?x=2", [("Expect", "100-continue")],
                             chunks=[b"abc", b"def"], trailers=[("X-Sig", "t")]))
        resp = c.final_response()
        self.assertEqual([r.status for r in resp.interim], [100])
        msg_id = self.assert_accepted(resp)
        seen = rcv.wait_requests(1)[0]
        self.assertEqual(seen.target, "/base/a/b?sig=1&x=2")
        self.assertEqual(seen.body, b"abcdef")
        self.assertIsNone(seen.header("Expect"))
        self.assertEqual(seen.header("X-Sig"), "t")
        self.assertEqual(seen.header("X-Dechunkd-Message-Id"), msg_id)
        entry = d.access_log_entries(1)[0]
        self.assertEqual((entry["route"], entry["method"], entry["path"], entry["status"],
                          entry["bytes_in"], entry["chunked"]),
                         ("qp", "POST", "/qp/a/b", 202, 6, True))
        self.assertIsNone(entry["target_status"])
        self.assertIsNone(entry["target_ms"])
        self.assertEqual(entry["request_id"], resp.header("X-Request-Id"))

    def test_concurrent_requests_with_one_dedupe_value(self):
        rcv = self.receiver()
        d = self.start([q_route([rcv.url("/in")], dedupe={"header": "webhook-id", "window": "1h"})],
                       workers=2)
        clients = [Client(d.port) for _ in range(8)]
        for c in clients:
            self.addCleanup(c.close)
        raw = build_request("POST", "/q", [("webhook-id", "same")], body=b"racy")
        for c in clients:  # everything but the last byte first, then the last bytes together
            c.send(raw[:-1])
        for c in clients:
            c.send(raw[-1:])
        ids = [self.assert_accepted(c.final_response()) for c in clients]
        self.assertEqual(len(set(ids)), 1, f"one dedupe value, several ids: {ids}")
        rcv.wait_requests(1)
        self.settle()
        self.assertEqual(len(rcv.requests), 1)

    def test_pipelined_requests_are_answered_in_order(self):
        rcv = self.receiver()
        d = self.start([q_route([rcv.url("/in")])], storage={"fsync": "batch"})
        c = Client(d.port)
        self.addCleanup(c.close)
        c.send(b"".join(build_request("POST", "/q", [("X-N", str(i))], chunks=[b"p%d" % i])
                        for i in range(5)))
        ids = [self.assert_accepted(c.final_response()) for _ in range(5)]
        self.assertEqual(len(set(ids)), 5)
        rcv.wait_requests(5)
        by_id = {s.header("X-Dechunkd-Message-Id"): (s.header("X-N"), s.body) for s in rcv.requests}
        self.assertEqual(by_id, {ids[i]: (str(i), b"p%d" % i) for i in range(5)})

    def test_methods_without_a_body(self):
        rcv = self.receiver()
        d = self.start([q_route([rcv.url("/in")])])
        for method, length in (("GET", None), ("DELETE", None), ("PUT", "0")):
            with self.subTest(method=method):
                rcv.reset()
                resp = send_request(d.port, build_request(method, "/q?m=1"), method=method)
                msg_id = self.assert_accepted(resp)
                seen = rcv.wait_requests(1)[0]
                self.assertEqual((seen.method, seen.target, seen.body), (method, "/in?m=1", b""))
                self.assertEqual(seen.header("Content-Length"), length)
                self.assertEqual(seen.header("X-Dechunkd-Message-Id"), msg_id)
        resp = send_request(d.port, build_request("HEAD", "/q"), method="HEAD")
        self.assertEqual(resp.status, 202)
        self.assertEqual(resp.body, b"")

    def test_any_2xx_and_any_response_framing_is_success(self):
        rcv = self.receiver()
        d = self.start([q_route([rcv.url("/in")], retry=dict(FAST))])
        answers = [Reply(200, body=b"x" * 100_000, framing="chunked", chunk_size=4096),
                   Reply(204, "No Content", framing="none"),
                   Reply(201, "Created", body=b"made", framing="close"),
                   Reply(299, "Whatever", body=b"")]
        for reply in answers:
            with self.subTest(status=reply.status, framing=reply.framing):
                rcv.reset()
                rcv.reply_with(reply)
                msg_id = self.accept(d)
                rcv.wait_requests(1)
                self.wait_metric(d, metric("deliveries_total", route="q", target=rcv.url("/in"),
                                           result="delivered"), answers.index(reply) + 1)
                self.settle(0.3)
                self.assertEqual(self.deliveries(rcv), [(msg_id + ".0", "1")])
        self.assertEqual(self.dead_letters(d), [])

    def test_fan_out_to_three_targets(self):
        a, b, c = self.receiver(), self.receiver(), self.receiver()
        d = self.start([q_route([a.url("/a"), b.url("/b?sig=B"), c.url("/c")],
                                request_headers={"set": {"X-Route": "r"}})])
        body = pseudo_random(5000, b"fan")
        msg_id = self.accept(d, body=body, headers=[("X-In", "1")])
        for index, (rcv, target) in enumerate(((a, "/a"), (b, "/b?sig=B"), (c, "/c"))):
            seen = rcv.wait_requests(1)[0]
            self.assertEqual(seen.target, target)
            self.assertEqual(seen.body, body)
            self.assertEqual(seen.header("Content-Length"), str(len(body)))
            self.assertEqual(seen.header("Host"), rcv.authority)
            self.assertEqual(seen.header("X-Route"), "r")
            self.assertEqual(seen.header("X-In"), "1")
            self.assertEqual(seen.header("X-Dechunkd-Message-Id"), msg_id)
            self.assertEqual(seen.header("X-Dechunkd-Delivery-Id"), f"{msg_id}.{index}")
            self.assertEqual(seen.header("X-Dechunkd-Attempt"), "1")
        self.settle()
        self.assertEqual([len(r.requests) for r in (a, b, c)], [1, 1, 1])

    def test_fan_out_targets_retry_independently(self):
        ok, flaky = self.receiver(), self.receiver()
        flaky.reply_with(Reply(503, "Service Unavailable"), Reply(503, "Service Unavailable"),
                         Reply())
        d = self.start([q_route([ok.url("/ok"), flaky.url("/flaky")], retry=dict(FAST))])
        msg_id = self.accept(d)
        flaky.wait_requests(3)
        self.settle()
        self.assertEqual(self.deliveries(ok), [(msg_id + ".0", "1")])
        self.assertEqual(self.deliveries(flaky), [(msg_id + ".1", "1"), (msg_id + ".1", "2"),
                                                  (msg_id + ".1", "3")])


# --------------------------------------------------------------------------------------------
# retries
# --------------------------------------------------------------------------------------------

class RetryTests(QueueCase):
    def test_503_then_200_is_retried_with_the_same_delivery_id(self):
        rcv = self.receiver()
        rcv.reply_with(Reply(503, "Service Unavailable"), Reply())
        target = rcv.url("/in")
        d = self.start([q_route([rcv.url("/in?sig=SECRET")], retry=dict(FAST))])
        msg_id = self.accept(d, body=b"retry me")
        seen = rcv.wait_requests(2)
        self.assertEqual(self.deliveries(rcv), [(msg_id + ".0", "1"), (msg_id + ".0", "2")])
        self.assertEqual([s.body for s in seen], [b"retry me", b"retry me"])
        self.assertEqual(seen[0].header("X-Dechunkd-Message-Id"), msg_id)
        self.assertEqual(seen[1].header("X-Dechunkd-Message-Id"), msg_id)
        self.wait_metric(d, metric("deliveries_total", route="q", target=target,
                                   result="delivered"), 1)
        text, m = self.metrics(d)
        self.assertEqual(m.get(metric("deliveries_total", route="q", target=target,
                                      result="retried")), 1, text)
        self.assertEqual(m.get(metric("deliveries_total", route="q", target=target,
                                      result="dead_lettered"), 0), 0, text)
        self.assertNotIn("SECRET", text)
        self.settle()
        self.assertEqual(len(rcv.requests), 2)

    def test_retry_after_seconds_on_429_is_honoured(self):
        rcv = self.receiver()
        timed = Timed(rcv, replies(Reply(429, "Too Many Requests", [("Retry-After", "1")]),
                                   Reply()))
        d = self.start([q_route([rcv.url("/in")],
                                retry={"initial_backoff": "30s", "max_backoff": "1m"})])
        msg_id = self.accept(d)
        rcv.wait_requests(2, timeout=scaled(5))
        gap = timed.times[1] - timed.times[0]
        self.assertGreaterEqual(gap, 0.8, "retried before the Retry-After")
        self.assertLess(gap, scaled(5))
        self.assertEqual(self.deliveries(rcv), [(msg_id + ".0", "1"), (msg_id + ".0", "2")])

    def test_retry_after_http_date_on_503_is_honoured(self):
        rcv = self.receiver()

        def reply(_seen):
            if len(timed.times) == 1:
                when = email.utils.formatdate(time.time() + 2, usegmt=True)  # 1..2 s from now
                return Reply(503, "Service Unavailable", [("Retry-After", when)])
            return Reply()
        timed = Timed(rcv, reply)
        d = self.start([q_route([rcv.url("/in")],
                                retry={"initial_backoff": "30s", "max_backoff": "1m"})])
        msg_id = self.accept(d)
        rcv.wait_requests(2, timeout=scaled(5))
        gap = timed.times[1] - timed.times[0]
        self.assertGreaterEqual(gap, 0.8, "retried before the Retry-After date")
        self.assertLess(gap, scaled(5))
        self.assertEqual(self.deliveries(rcv), [(msg_id + ".0", "1"), (msg_id + ".0", "2")])

    def test_backoff_stays_between_initial_and_max_backoff(self):
        rcv = self.receiver()
        timed = Timed(rcv, replies(Reply(503, "Service Unavailable")))
        d = self.start([q_route([rcv.url("/in")],
                                retry={"initial_backoff": "200ms", "max_backoff": "250ms",
                                       "max_attempts": 8})])
        msg_id = self.accept(d)
        self.wait_dead_letters(d, 1, timeout=scaled(10))
        self.assertEqual(len(timed.times), 8)
        gaps = [b - a for a, b in zip(timed.times, timed.times[1:])]
        self.assertGreaterEqual(min(gaps), 0.19, f"a retry came before initial_backoff: {gaps}")
        # Capped: 7 gaps of at most 250 ms (uncapped doubling would take ~13 s on average).
        self.assertLess(timed.times[-1] - timed.times[0], 7 * 0.25 + scaled(2.5), f"gaps {gaps}")
        self.assertEqual(self.deliveries(rcv), [(msg_id + ".0", str(n)) for n in range(1, 9)])

    def test_retry_after_only_counts_on_429_and_503(self):
        rcv = self.receiver()
        rcv.reply_with(Reply(500, "Internal Server Error", [("Retry-After", "3600")]), Reply())
        d = self.start([q_route([rcv.url("/in")], retry=dict(FAST))])
        msg_id = self.accept(d)
        rcv.wait_requests(2, timeout=scaled(3))
        self.assertEqual(self.deliveries(rcv), [(msg_id + ".0", "1"), (msg_id + ".0", "2")])

    def test_connection_errors_are_retried_and_logged(self):
        port = free_port()
        target = f"http://127.0.0.1:{port}/in"
        d = self.start([q_route([target + "?sig=CONNSECRET"], retry=dict(FAST))])
        msg_id = self.accept(d, body=b"later")
        # At least two failed attempts (connection refused), each logged without a status.
        d.wait_log(r"delivery route=q target=%s delivery_id=%s\.0 attempt=2 status=- .*"
                   r"result=retry" % (re.escape(target), msg_id))
        line = d.wait_log(r"delivery route=q .*delivery_id=%s\.0 attempt=1 .*" % msg_id).string
        self.assertRegex(line, r' status=- ')
        self.assertRegex(line, r' error="[^"]+"')
        self.assertRegex(line, r" result=retry next=\S+")
        rcv = self.port_receiver(port)
        seen = rcv.wait_requests(1, timeout=scaled(5))[0]
        self.assertEqual(seen.body, b"later")
        self.assertEqual(seen.header("X-Dechunkd-Delivery-Id"), msg_id + ".0")
        attempt = int(seen.header("X-Dechunkd-Attempt"))
        self.assertGreaterEqual(attempt, 3)
        d.wait_log(r"delivery route=q target=%s delivery_id=%s\.0 attempt=%d status=200 "
                   r"result=delivered" % (re.escape(target), msg_id, attempt))
        text, m = self.metrics(d)
        self.assertEqual(m.get(metric("deliveries_total", route="q", target=target,
                                      result="retried")), attempt - 1, text)
        self.assertNotIn("CONNSECRET", d.stderr_text())
        self.settle()
        self.assertEqual(len(rcv.requests), 1)

    def test_timeouts_are_retried(self):
        rcv = self.receiver()
        rcv.reply_with(Reply(delay=1.5), Reply())
        d = self.start([q_route([{"url": rcv.url("/in"), "timeout": "300ms"}], retry=dict(FAST))])
        msg_id = self.accept(d)
        rcv.wait_requests(2, timeout=scaled(5))
        self.assertEqual(self.deliveries(rcv)[:2], [(msg_id + ".0", "1"), (msg_id + ".0", "2")])
        self.wait_metric(d, metric("deliveries_total", route="q", target=rcv.url("/in"),
                                   result="delivered"), 1)

    def test_per_attempt_log_lines(self):
        rcv = self.receiver()
        rcv.reply_with(Reply(503, "Service Unavailable"), Reply())
        target = rcv.url("/in")
        d = self.start([q_route([rcv.url("/in?sig=LOGSECRET")], retry=dict(FAST))])
        msg_id = self.accept(d)
        rcv.wait_requests(2)
        retry = d.wait_log(r"delivery route=q target=%s delivery_id=%s\.0 attempt=1 status=503 "
                           r"result=retry next=(\S+)" % (re.escape(target), msg_id))
        rfc3339_epoch(retry.group(1))
        d.wait_log(r"delivery route=q target=%s delivery_id=%s\.0 attempt=2 status=200 "
                   r"result=delivered" % (re.escape(target), msg_id))
        self.assertNotIn("LOGSECRET", d.stderr_text())

    def test_retry_on_is_exactly_the_configured_list(self):
        gone, busy = self.receiver(), self.receiver()
        gone.reply_with(Reply(410, "Gone"), Reply())
        busy.reply_with(Reply(503, "Service Unavailable"), Reply())
        d = self.start([q_route([gone.url("/gone"), busy.url("/busy")],
                                retry=dict(FAST, on=[410]))])
        msg_id = self.accept(d)
        gone.wait_requests(2)
        self.assertEqual(self.deliveries(gone), [(msg_id + ".0", "1"), (msg_id + ".0", "2")])
        dl = self.wait_dead_letters(d, 1)
        self.assertEqual(len(dl), 1)
        self.assert_dead_letter(dl[0], msg_id, 1, "q", busy.url("/busy"), 1, 503)
        self.settle()
        self.assertEqual(self.deliveries(busy), [(msg_id + ".1", "1")])

    def test_410_is_not_retried_by_default(self):
        rcv = self.receiver()
        rcv.reply_with(Reply(410, "Gone"))
        d = self.start([q_route([rcv.url("/in")], retry=dict(FAST))])
        msg_id = self.accept(d)
        dl = self.wait_dead_letters(d, 1)
        self.assert_dead_letter(dl[0], msg_id, 0, "q", rcv.url("/in"), 1, 410)
        self.settle()
        self.assertEqual(len(rcv.requests), 1)

    def test_max_attempts_then_dead_letter(self):
        rcv = self.receiver()
        rcv.reply_with(Reply(503, "Service Unavailable"))
        target = rcv.url("/in")
        d = self.start([q_route([target], retry=dict(FAST, max_attempts=3))])
        msg_id = self.accept(d, body=b"doomed")
        dl = self.wait_dead_letters(d, 1)
        self.assertEqual(len(dl), 1)
        self.assert_dead_letter(dl[0], msg_id, 0, "q", target, 3, 503)
        self.settle()
        self.assertEqual(self.deliveries(rcv), [(msg_id + ".0", "1"), (msg_id + ".0", "2"),
                                                (msg_id + ".0", "3")])
        text, m = self.metrics(d)
        self.assertEqual(m.get(metric("deliveries_total", route="q", target=target,
                                      result="retried")), 2, text)
        self.assertEqual(m.get(metric("deliveries_total", route="q", target=target,
                                      result="dead_lettered")), 1, text)
        self.assertEqual(m.get(metric("dead_letters", route="q", target=target)), 1, text)
        self.assertEqual(m.get(metric("queue_pending", route="q", target=target)), 0, text)
        d.wait_log(r"delivery route=q target=%s delivery_id=%s\.0 attempt=3 status=503 "
                   r"result=dead_letter" % (re.escape(target), msg_id))
        self.assertEqual(self.queue(d), {"routes": [{"route": "q", "paused": False, "targets": [
            {"target": target, "pending": 0, "in_flight": 0, "dead_letters": 1}]}]})

    def test_max_age_then_dead_letter(self):
        rcv = self.receiver()
        rcv.reply_with(Reply(503, "Service Unavailable"))
        target = rcv.url("/in")
        d = self.start([q_route([target], retry={"initial_backoff": "100ms",
                                                 "max_backoff": "200ms", "max_attempts": 1000,
                                                 "max_age": "1s"})])
        t0 = time.monotonic()
        msg_id = self.accept(d)
        dl = self.wait_dead_letters(d, 1, timeout=scaled(6))
        self.assertLess(time.monotonic() - t0, scaled(6))
        self.assertEqual(len(dl), 1)
        attempts = dl[0]["attempts"]
        self.assertGreaterEqual(attempts, 2)
        self.assertLess(attempts, 1000)
        self.assert_dead_letter(dl[0], msg_id, 0, "q", target, attempts, 503)
        self.settle()
        self.assertEqual(len(rcv.requests), attempts, "every attempt counted once")
        _, m = self.metrics(d)
        with self.subTest("deliveries_total counts a retry only when one is made (SPEC 11)"):
            self.assertEqual(m.get(metric("deliveries_total", route="q", target=target,
                                          result="dead_lettered")), 1)
            self.assertEqual(m.get(metric("deliveries_total", route="q", target=target,
                                          result="retried")), attempts - 1)
        with self.subTest("one log line per attempt; the last one says dead_letter"):
            lines = [l for l in d.stderr_lines if f"delivery_id={msg_id}.0 " in l]
            numbers = [int(re.search(r" attempt=(\d+) ", l).group(1)) for l in lines]
            self.assertEqual(numbers, list(range(1, attempts + 1)), "\n".join(lines))
            self.assertRegex(lines[-1], r" result=dead_letter( |$)")
            for line in lines[:-1]:
                self.assertRegex(line, r" status=503 result=retry next=")

    def test_max_age_expiry_while_paused_empties_a_fifo_lane(self):
        # Regression: with max_in_flight 1, a head dead-lettered without an attempt (its max_age
        # passed while paused) must let the next one go at once, not wait for an outside event.
        rcv = self.receiver()
        target = rcv.url("/in")
        d = self.start([q_route([{"url": target, "max_in_flight": 1}],
                                retry=dict(FAST, max_age="1s"))])
        self.pause(d)
        ids = [self.accept(d) for _ in range(3)]
        time.sleep(scaled(1.5))
        self.resume(d)
        dl = self.wait_dead_letters(d, 3, timeout=scaled(5))
        self.assertEqual([x["message_id"] for x in dl], ids)
        for x in dl:
            self.assertEqual(x["attempts"], 0)
            self.assertIsNone(x["last_status"])
            self.assertIn("max_age", x["last_error"])
        self.assertEqual(self.queue(d), {"routes": [{"route": "q", "paused": False, "targets": [
            {"target": target, "pending": 0, "in_flight": 0, "dead_letters": 3}]}]})
        self.settle()
        self.assertEqual(rcv.requests, [], "nothing is attempted after max_age")

    def test_connection_error_dead_letter_has_null_status(self):
        port = free_port()
        target = f"http://127.0.0.1:{port}/in"
        d = self.start([q_route([target], retry=dict(FAST, max_attempts=2))])
        msg_id = self.accept(d)
        dl = self.wait_dead_letters(d, 1)
        self.assert_dead_letter(dl[0], msg_id, 0, "q", target, 2, None)
        d.wait_log(r'delivery route=q target=%s delivery_id=%s\.0 attempt=2 status=- '
                   r'.*result=dead_letter' % (re.escape(target), msg_id))

    def test_max_in_flight_1_keeps_acceptance_order_behind_a_failing_head(self):
        rcv = self.receiver()
        lock = threading.Lock()
        state = {"active": 0, "max_active": 0, "m0": 0}

        def handler(seen):
            with lock:
                state["active"] += 1
                state["max_active"] = max(state["max_active"], state["active"])
                head_failure = seen.body == b"m0" and state["m0"] < 2
                if seen.body == b"m0":
                    state["m0"] += 1
            time.sleep(0.05)
            with lock:
                state["active"] -= 1
            return Reply(503, "Service Unavailable") if head_failure else Reply()
        rcv.handler = handler
        d = self.start([q_route([{"url": rcv.url("/in"), "max_in_flight": 1}],
                                retry={"initial_backoff": "100ms", "max_backoff": "200ms"})])
        self.pause(d)
        ids = [self.accept(d, body=b"m%d" % i) for i in range(5)]
        self.resume(d)
        rcv.wait_requests(7, timeout=scaled(8))
        self.settle()
        self.assertEqual([s.body for s in rcv.requests],
                         [b"m0", b"m0", b"m0", b"m1", b"m2", b"m3", b"m4"])
        self.assertEqual(self.deliveries(rcv),
                         [(ids[0] + ".0", "1"), (ids[0] + ".0", "2"), (ids[0] + ".0", "3")]
                         + [(i + ".0", "1") for i in ids[1:]])
        self.assertEqual(state["max_active"], 1, "max_in_flight: 1 overlapped deliveries")

    def test_max_in_flight_limits_concurrency(self):
        rcv = self.receiver()
        lock = threading.Lock()
        state = {"active": 0, "max_active": 0}

        def handler(seen):
            with lock:
                state["active"] += 1
                state["max_active"] = max(state["max_active"], state["active"])
            time.sleep(0.2)
            with lock:
                state["active"] -= 1
            return Reply()
        rcv.handler = handler
        d = self.start([q_route([{"url": rcv.url("/in"), "max_in_flight": 2}])])
        self.pause(d)
        for i in range(6):
            self.accept(d, body=b"c%d" % i)
        self.resume(d)
        rcv.wait_requests(6, timeout=scaled(8))
        self.assertEqual(state["max_active"], 2)
        self.assertEqual(sorted(s.body for s in rcv.requests), [b"c%d" % i for i in range(6)])


# --------------------------------------------------------------------------------------------
# the response head decides
# --------------------------------------------------------------------------------------------

class ResponseHeadTests(QueueCase):
    """An attempt is recorded when the target's response head arrives; the rest of the body is
    read and dropped for at most the target's response timeout, outside the lane (SPEC 6)."""

    SLOW_BODY = b"x" * 40  # trickled a byte every 0.25 s: 10 s, under upstream_idle at each gap

    def trickled_end(self, rcv: StrictReceiver) -> float:
        """When the first trickled answer ended, or infinity while it goes on."""
        trickles = rcv.trickles
        return trickles[0][1] if trickles else float("inf")

    def test_a_trickled_body_does_not_hold_a_fifo_lane(self):
        rcv = self.receiver()
        timed = Timed(rcv, replies(Reply(body=self.SLOW_BODY, trickle=0.25), Reply()))
        target = rcv.url("/in")
        d = self.start([q_route([{"url": target, "max_in_flight": 1, "timeout": "30s"}])],
                       timeouts={"upstream_idle": "2s"})
        self.pause(d)
        first = self.accept(d, body=b"m0")
        second = self.accept(d, body=b"m1")
        self.resume(d)
        seen = rcv.wait_requests(2, timeout=scaled(15))
        self.assertEqual([s.body for s in seen], [b"m0", b"m1"])
        self.assertLess(timed.times[1], self.trickled_end(rcv),
                        "the second delivery waited for the end of the first one's response body")
        self.assertNotEqual(seen[1].conn, seen[0].conn)
        d.wait_log(r"delivery route=q target=%s delivery_id=%s\.0 attempt=1 status=200 "
                   r"result=delivered next=-" % (re.escape(target), first))
        self.assert_delivered_never_retried(d, target, 2)
        self.assertEqual(self.deliveries(rcv), [(first + ".0", "1"), (second + ".0", "1")])

    def test_the_rest_of_the_body_is_read_and_the_connection_reused(self):
        rcv = self.receiver()
        rcv.reply_with(Reply(body=b"y" * 8, trickle=0.25), Reply())
        d = self.start([q_route([{"url": rcv.url("/in"), "max_in_flight": 1}])],
                       timeouts={"upstream_idle": "2s"})
        self.accept(d, body=b"m0")
        self.accept(d, body=b"m1")
        seen = rcv.wait_requests(2)
        _, _, how = rcv.wait_trickles(1, timeout=scaled(8))[0]
        self.assertEqual(how, "done", "the gateway closed the connection instead of reading the body")
        self.settle(scaled(0.5))
        self.assertNotIn(seen[0].conn, rcv.closed_by_peer, "the drained connection was not kept")
        self.accept(d, body=b"m2")
        seen = rcv.wait_requests(3)
        self.assertEqual(seen[2].conn, seen[0].conn, "the drained connection is used again")

    def test_the_rest_of_the_body_is_cut_at_the_response_timeout(self):
        rcv = self.receiver()
        rcv.reply_with(Reply(body=self.SLOW_BODY, trickle=0.25), Reply())
        target = rcv.url("/in")
        d = self.start([q_route([{"url": target, "timeout": "1s"}], retry=dict(FAST))],
                       timeouts={"upstream_idle": "2s"})
        msg_id = self.accept(d)
        began, ended, how = rcv.wait_trickles(1, timeout=scaled(12))[0]
        self.assertEqual(how, "closed", "the gateway read the whole trickled body")
        self.assertGreaterEqual(ended - began, 0.8, "the body was cut before the response timeout")
        self.assertLess(ended - began, min(1 + scaled(3), 8))
        self.assert_delivered_never_retried(d, target, 1)
        self.assertEqual(self.deliveries(rcv), [(msg_id + ".0", "1")])

    def test_retry_after_is_taken_from_the_head_of_a_trickled_503(self):
        rcv = self.receiver()
        timed = Timed(rcv, replies(Reply(503, "Service Unavailable", [("Retry-After", "1")],
                                         body=self.SLOW_BODY, trickle=0.25), Reply()))
        target = rcv.url("/in")
        d = self.start([q_route([{"url": target, "max_in_flight": 1, "timeout": "30s"}],
                                retry={"initial_backoff": "30s", "max_backoff": "1m"})],
                       timeouts={"upstream_idle": "2s"})
        msg_id = self.accept(d)
        rcv.wait_requests(2, timeout=scaled(15))
        self.assertGreaterEqual(timed.times[1] - timed.times[0], 0.8, "retried before the Retry-After")
        self.assertLess(timed.times[1], self.trickled_end(rcv), "the retry waited for the 503's body")
        self.assertEqual(self.deliveries(rcv), [(msg_id + ".0", "1"), (msg_id + ".0", "2")])
        self.wait_metric(d, metric("deliveries_total", route="q", target=target,
                                   result="delivered"), 1)
        text, m = self.metrics(d)
        self.assertEqual(m.get(metric("deliveries_total", route="q", target=target,
                                      result="retried")), 1, text)

    def test_sigterm_does_not_wait_for_the_rest_of_a_body(self):
        rcv = self.receiver()
        rcv.reply_with(Reply(body=self.SLOW_BODY, trickle=0.25))
        target = rcv.url("/in")
        d = self.start([q_route([{"url": target, "timeout": "30s"}])],
                       timeouts={"upstream_idle": "2s", "drain": "20s"})
        msg_id = self.accept(d)
        self.wait_metric(d, metric("deliveries_total", route="q", target=target,
                                   result="delivered"), 1)
        d2 = self.restart(d)
        _, _, how = rcv.wait_trickles(1, timeout=scaled(12))[0]
        self.assertEqual(how, "closed", "the stop waited for the rest of the response body")
        self.settle()
        self.assertEqual(self.deliveries(rcv), [(msg_id + ".0", "1")])
        self.assertEqual(self.queue(d2)["routes"][0]["targets"][0]["pending"], 0)

    def test_a_body_that_breaks_off_keeps_the_outcome_of_the_head(self):
        rcv = self.receiver()
        whole = Reply(400, "Bad Request", body=b"v" * 100)
        rcv.reply_with(Reply(400, "Bad Request", body=whole.body, action="cut",
                             cut_at=len(whole.encode()) - 50))
        target = rcv.url("/in")
        d = self.start([q_route([target], retry=dict(FAST))])
        msg_id = self.accept(d)
        dl = self.wait_dead_letters(d, 1)
        self.assert_dead_letter(dl[0], msg_id, 0, "q", target, 1, 400)
        self.settle()
        self.assertEqual(self.deliveries(rcv), [(msg_id + ".0", "1")])


# --------------------------------------------------------------------------------------------
# dead letters
# --------------------------------------------------------------------------------------------

class DeadLetterTests(QueueCase):
    def test_400_dead_letter_show_and_replay(self):
        rcv = self.receiver()
        rcv.reply_with(Reply(400, "Bad Request", body=b"nope"))
        target = rcv.url("/in")
        d = self.start([q_route([rcv.url("/in?sig=DLSECRET")], retry=dict(FAST),
                                auth={"type": "header", "name": "X-API-Key", "value": "k3y"})])
        body = pseudo_random(3000, b"dl") + b"\r\n0\r\n\r\n"
        sent_headers = [("X-API-Key", "k3y"), ("Content-Type", "application/octet-stream"),
                        ("X-Custom", "a b")]
        resp = self.post(d, "/q?x=1", body, sent_headers)
        msg_id = self.assert_accepted(resp)
        dl = self.wait_dead_letters(d, 1)
        self.assertEqual(len(dl), 1)
        self.assert_dead_letter(dl[0], msg_id, 0, "q", target, 1, 400)
        self.settle()
        self.assertEqual(len(rcv.requests), 1, "400 is not retried")
        self.assertIsNone(rcv.requests[0].header("X-API-Key"), "checked credential forwarded")

        one = self.admin_json(d, "GET", f"/dead-letters/{msg_id}.0", auth=False)
        self.assertEqual(set(one), DEAD_LETTER_KEYS | {"method", "path", "headers", "body"})
        self.assertEqual({k: one[k] for k in DEAD_LETTER_KEYS}, dl[0])
        self.assertEqual(one["method"], "POST")
        self.assertEqual(one["path"], "/q?x=1")
        self.assertEqual(one["headers"], [["Host", "gw.example"],
                                          ["Content-Type", "application/octet-stream"],
                                          ["X-Custom", "a b"],
                                          ["Transfer-Encoding", "chunked"]],
                         "request header fields as received, minus the checked credential")
        self.assertEqual(base64.b64decode(one["body"], validate=True), body)
        self.assertNotIn("DLSECRET", json.dumps(one) + json.dumps(dl))

        rcv.reset()
        replayed = self.admin_json(d, "POST", f"/dead-letters/{msg_id}.0/replay", status=202)
        self.assertEqual(replayed, {"replayed": 1})
        self.assertEqual(self.dead_letters(d), [], "a replayed dead letter leaves the list at once")
        seen = rcv.wait_requests(1)[0]
        self.assertEqual(seen.header("X-Dechunkd-Delivery-Id"), msg_id + ".0")
        self.assertEqual(seen.header("X-Dechunkd-Message-Id"), msg_id)
        self.assertEqual(seen.header("X-Dechunkd-Attempt"), "1")
        self.assertEqual(seen.target, "/in?sig=DLSECRET&x=1")
        self.assertEqual(seen.body, body)
        self.assertEqual(seen.header("X-Custom"), "a b")
        self.assertIsNone(seen.header("X-API-Key"))
        self.wait_metric(d, metric("deliveries_total", route="q", target=target,
                                   result="delivered"), 1)
        _, m = self.metrics(d)
        self.assertEqual(m.get(metric("dead_letters", route="q", target=target)), 0)
        self.assertEqual(m.get(metric("deliveries_total", route="q", target=target,
                                      result="dead_lettered")), 1)
        self.settle()
        self.assertEqual(self.dead_letters(d), [])
        self.assertEqual(len(rcv.requests), 1)

    def test_replay_resets_the_attempt_count(self):
        rcv = self.receiver()
        rcv.reply_with(Reply(503, "Service Unavailable"))
        d = self.start([q_route([rcv.url("/in")], retry=dict(FAST, max_attempts=2))])
        msg_id = self.accept(d)
        self.wait_dead_letters(d, 1)
        self.settle()
        self.assertEqual([a for _, a in self.deliveries(rcv)], ["1", "2"])
        rcv.clear_requests()
        self.assertEqual(self.admin_json(d, "POST", f"/dead-letters/{msg_id}.0/replay",
                                         status=202), {"replayed": 1})
        dl = self.wait_dead_letters(d, 1)
        self.assert_dead_letter(dl[0], msg_id, 0, "q", rcv.url("/in"), 2, 503)
        self.settle()
        self.assertEqual(self.deliveries(rcv), [(msg_id + ".0", "1"), (msg_id + ".0", "2")])

    def test_replay_resets_the_max_age_clock(self):
        rcv = self.receiver()
        rcv.reply_with(Reply(400, "Bad Request"))
        d = self.start([q_route([rcv.url("/in")], retry=dict(FAST, max_age="1s"))])
        msg_id = self.accept(d)
        self.wait_dead_letters(d, 1)
        time.sleep(1.3)  # the message is now older than max_age
        rcv.reset()
        rcv.reply_with(Reply(503, "Service Unavailable"), Reply())
        self.assertEqual(self.admin_json(d, "POST", f"/dead-letters/{msg_id}.0/replay",
                                         status=202), {"replayed": 1})
        rcv.wait_requests(2)
        self.assertEqual(self.deliveries(rcv), [(msg_id + ".0", "1"), (msg_id + ".0", "2")])
        self.wait_metric(d, metric("deliveries_total", route="q", target=rcv.url("/in"),
                                   result="delivered"), 1)
        self.assertEqual(self.dead_letters(d), [])

    def test_replay_into_a_paused_route_waits_for_resume(self):
        rcv = self.receiver()
        rcv.reply_with(Reply(400, "Bad Request"))
        d = self.start([q_route([rcv.url("/in")], retry=dict(FAST))])
        msg_id = self.accept(d)
        self.wait_dead_letters(d, 1)
        rcv.reset()
        self.pause(d)
        self.assertEqual(self.admin_json(d, "POST", f"/dead-letters/{msg_id}.0/replay",
                                         status=202), {"replayed": 1})
        self.assertEqual(self.dead_letters(d), [])
        self.assertEqual(self.queue(d)["routes"][0]["targets"][0],
                         {"target": rcv.url("/in"), "pending": 1, "in_flight": 0,
                          "dead_letters": 0})
        self.settle()
        self.assertEqual(rcv.requests, [])
        self.resume(d)
        rcv.wait_requests(1)
        self.settle()
        self.assertEqual(self.deliveries(rcv), [(msg_id + ".0", "1")])

    def test_replay_all_by_route_and_everywhere(self):
        a, b = self.receiver(), self.receiver()
        a.reply_with(Reply(400, "Bad Request"))
        b.reply_with(Reply(400, "Bad Request"))
        d = self.start([q_route([a.url("/a")], name="qa", path="/qa", retry=dict(FAST)),
                        q_route([b.url("/b")], name="qb", path="/qb", retry=dict(FAST))])
        ids_a = [self.accept(d, "/qa", b"a%d" % i) for i in range(3)]
        ids_b = [self.accept(d, "/qb", b"b%d" % i) for i in range(2)]
        self.wait_dead_letters(d, 5)
        self.assertEqual([x["id"] for x in self.dead_letters(d, "?route=qa")],
                         [i + ".0" for i in ids_a])
        self.assertEqual([x["id"] for x in self.dead_letters(d, "?route=qb")],
                         [i + ".0" for i in ids_b])
        self.assertEqual([x["id"] for x in self.dead_letters(d)],
                         [i + ".0" for i in ids_a + ids_b], "acceptance order")

        a.reset()
        b.reset()
        self.assertEqual(self.admin_json(d, "POST", "/dead-letters/replay?route=qa", status=202),
                         {"replayed": 3})
        self.assertEqual([x["id"] for x in self.dead_letters(d)], [i + ".0" for i in ids_b])
        a.wait_requests(3)
        self.assertEqual(sorted(s.body for s in a.requests), [b"a0", b"a1", b"a2"])
        self.assertEqual(self.admin_json(d, "POST", "/dead-letters/replay", status=202),
                         {"replayed": 2})
        self.assertEqual(self.dead_letters(d), [])
        b.wait_requests(2)
        self.assertEqual(sorted(s.body for s in b.requests), [b"b0", b"b1"])
        for s in a.requests + b.requests:
            self.assertEqual(s.header("X-Dechunkd-Attempt"), "1")
        self.assertEqual(self.admin_json(d, "POST", "/dead-letters/replay", status=202),
                         {"replayed": 0})
        self.settle()
        self.assertEqual((len(a.requests), len(b.requests)), (3, 2))

    def test_delete_and_unknown_ids(self):
        rcv = self.receiver()
        rcv.reply_with(Reply(400, "Bad Request"))
        d = self.start([q_route([rcv.url("/in")], retry=dict(FAST))])
        keep, drop = self.accept(d, body=b"keep"), self.accept(d, body=b"drop")
        self.wait_dead_letters(d, 2)
        resp = self.admin(d, "DELETE", f"/dead-letters/{drop}.0")
        self.assertEqual(resp.status, 204, f"response: {resp}")
        self.assertEqual(resp.body, b"")
        self.assertEqual([x["id"] for x in self.dead_letters(d)], [keep + ".0"])
        self.assert_admin_error(self.admin(d, "GET", f"/dead-letters/{drop}.0"), 404, "not_found")
        self.assert_admin_error(self.admin(d, "DELETE", f"/dead-letters/{drop}.0"), 404,
                                "not_found")
        self.assert_admin_error(self.admin(d, "POST", f"/dead-letters/{drop}.0/replay"), 404,
                                "not_found")
        unknown = "01ARZ3NDEKTSV4RRFFQ69G5FAV.0"
        for method, path in (("GET", f"/dead-letters/{unknown}"),
                             ("DELETE", f"/dead-letters/{unknown}"),
                             ("POST", f"/dead-letters/{unknown}/replay"),
                             ("GET", "/dead-letters/nonsense"),
                             ("GET", "/no-such-admin-path")):
            with self.subTest(method=method, path=path):
                self.assert_admin_error(self.admin(d, method, path), 404, "not_found")
        self.assertEqual([x["id"] for x in self.dead_letters(d)], [keep + ".0"])
        _, m = self.metrics(d)
        self.assertEqual(m.get(metric("dead_letters", route="q", target=rcv.url("/in"))), 1)

    def test_admin_methods_and_bad_paging_parameters(self):
        # Not spelled out by the SPEC: 405 + Allow like the other admin endpoints, and 400
        # for a limit or after that cannot be meant.
        rcv = self.receiver()
        d = self.start([q_route([rcv.url("/in")])])
        for method, path, allow in (("GET", "/routes/q/pause", "POST"),
                                    ("GET", "/routes/q/resume", "POST"),
                                    ("POST", "/queue", "GET"),
                                    ("GET", "/dead-letters/replay", "POST")):
            with self.subTest(method=method, path=path):
                resp = self.admin(d, method, path)
                self.assert_admin_error(resp, 405, "method_not_allowed")
                self.assertEqual(resp.header("Allow"), allow)
        for query in ("?limit=0", "?limit=abc", "?limit=-1", "?after=zzz"):
            with self.subTest(query=query):
                self.assert_admin_error(self.admin(d, "GET", "/dead-letters" + query), 400,
                                        "bad_request")
        self.assertEqual(self.dead_letters(d, "?route=nope"), [])

    def test_paging_with_limit_and_after(self):
        rcv = self.receiver()
        rcv.reply_with(Reply(400, "Bad Request"))
        d = self.start([q_route([rcv.url("/in")], retry=dict(FAST))])
        ids = [self.accept(d, body=b"p%d" % i) + ".0" for i in range(5)]
        self.wait_dead_letters(d, 5)
        self.assertEqual([x["id"] for x in self.dead_letters(d)], ids)
        page1 = self.dead_letters(d, "?limit=2")
        self.assertEqual([x["id"] for x in page1], ids[:2])
        page2 = self.dead_letters(d, f"?limit=2&after={ids[1]}")
        self.assertEqual([x["id"] for x in page2], ids[2:4])
        page3 = self.dead_letters(d, f"?limit=2&after={ids[3]}")
        self.assertEqual([x["id"] for x in page3], ids[4:])
        self.assertEqual(self.dead_letters(d, f"?after={ids[4]}"), [])
        self.assertEqual([x["id"] for x in self.dead_letters(d, f"?route=q&limit=1&after={ids[0]}")],
                         ids[1:2])

    def test_mutating_endpoints_need_the_token(self):
        rcv = self.receiver()
        rcv.reply_with(Reply(400, "Bad Request"))
        d = self.start([q_route([rcv.url("/in")], retry=dict(FAST))])
        msg_id = self.accept(d)
        self.wait_dead_letters(d, 1)
        for method, path in (("POST", f"/dead-letters/{msg_id}.0/replay"),
                             ("POST", "/dead-letters/replay"),
                             ("POST", "/dead-letters/replay?route=q"),
                             ("DELETE", f"/dead-letters/{msg_id}.0"),
                             ("POST", "/routes/q/pause"),
                             ("POST", "/routes/q/resume")):
            for headers in ([], [("Authorization", "Bearer wrong")]):
                with self.subTest(method=method, path=path, headers=headers):
                    resp = self.admin(d, method, path, auth=False, headers=headers)
                    self.assert_admin_error(resp, 401, "unauthorized")
                    self.assertTrue(resp.header("WWW-Authenticate").startswith("Bearer"))
        # Nothing changed; reads need no token.
        self.assertEqual([x["id"] for x in self.dead_letters(d)], [msg_id + ".0"])
        self.assertEqual(self.admin_json(d, "GET", f"/dead-letters/{msg_id}.0", auth=False)["id"],
                         msg_id + ".0")
        self.assertFalse(self.queue(d)["routes"][0]["paused"])
        self.settle()
        self.assertEqual(len(rcv.requests), 1)
        self.assertNotIn(TOKEN, d.stderr_text())

    def test_no_token_file_means_no_token_needed(self):
        rcv = self.receiver()
        d = self.start([q_route([rcv.url("/in")])], token=False)
        resp = self.admin(d, "POST", "/routes/q/pause", auth=False)
        self.assertEqual(resp.status, 204, f"response: {resp}")
        resp = self.admin(d, "POST", "/routes/q/resume", auth=False)
        self.assertEqual(resp.status, 204, f"response: {resp}")


# --------------------------------------------------------------------------------------------
# dedupe
# --------------------------------------------------------------------------------------------

class DedupeTests(QueueCase):
    def routes(self, rcv):
        return [q_route([rcv.url("/in")], dedupe={"header": "webhook-id", "window": "1h"}),
                q_route([rcv.url("/other")], name="q2", path="/q2",
                        dedupe={"header": "webhook-id", "window": "1h"})]

    def test_same_webhook_id_is_delivered_once(self):
        rcv = self.receiver()
        d = self.start(self.routes(rcv))
        first = self.post(d, body=b"one", headers=[("webhook-id", "msg_1")])
        msg_id = self.assert_accepted(first)
        again = self.post(d, body=b"one", headers=[("webhook-id", "msg_1")])
        self.assertEqual((again.status, again.body), (first.status, first.body))
        self.assertEqual(self.assert_accepted(again), msg_id)
        other_case = self.post(d, body=b"one", headers=[("Webhook-ID", "msg_1")], chunked=False)
        self.assertEqual(self.assert_accepted(other_case), msg_id, "header names are "
                                                                   "case-insensitive")
        rcv.wait_requests(1)
        different = self.accept(d, body=b"two", headers=[("webhook-id", "msg_2")])
        self.assertNotEqual(different, msg_id)
        rcv.wait_requests(2)
        self.settle()
        self.assertEqual([s.header("X-Dechunkd-Message-Id") for s in rcv.requests],
                         [msg_id, different])
        self.assertEqual([s.body for s in rcv.requests], [b"one", b"two"])
        # Dedupe is per route: the same value on another route is a new message.
        elsewhere = self.accept(d, "/q2", body=b"one", headers=[("webhook-id", "msg_1")])
        self.assertNotIn(elsewhere, (msg_id, different))
        rcv.wait_requests(3)
        _, m = self.metrics(d)
        self.assertEqual(m.get(metric("requests_total", route="q", mode="queue", status="202")), 4)

    def test_dedupe_window_ends(self):
        rcv = self.receiver()
        d = self.start([q_route([rcv.url("/in")], dedupe={"header": "webhook-id", "window": "1s"})])
        first = self.accept(d, body=b"w", headers=[("webhook-id", "win")])
        self.assertEqual(self.accept(d, body=b"w", headers=[("webhook-id", "win")]), first)
        time.sleep(1.3)  # the window has passed
        later = self.accept(d, body=b"w", headers=[("webhook-id", "win")])
        self.assertNotEqual(later, first)
        rcv.wait_requests(2)
        self.settle()
        self.assertEqual([s.header("X-Dechunkd-Message-Id") for s in rcv.requests], [first, later])

    def test_requests_without_the_header_are_never_deduplicated(self):
        rcv = self.receiver()
        d = self.start(self.routes(rcv))
        ids = [self.accept(d, body=b"same") for _ in range(3)]
        self.assertEqual(len(set(ids)), 3)
        rcv.wait_requests(3)
        self.settle()
        self.assertEqual(len(rcv.requests), 3)

    def test_dedupe_survives_a_restart(self):
        rcv = self.receiver()
        d = self.start(self.routes(rcv))
        msg_id = self.accept(d, body=b"one", headers=[("webhook-id", "restart-1")])
        rcv.wait_requests(1)
        d2 = self.restart(d)
        self.assertEqual(self.accept(d2, body=b"one", headers=[("webhook-id", "restart-1")]),
                         msg_id)
        fresh = self.accept(d2, body=b"two", headers=[("webhook-id", "restart-2")])
        rcv.wait_requests(2)
        self.settle()
        self.assertEqual([s.header("X-Dechunkd-Message-Id") for s in rcv.requests],
                         [msg_id, fresh])

    def test_dedupe_survives_compaction_and_restart(self):
        rcv = self.receiver()
        rcv.keep_bodies = False
        d = self.start(self.routes(rcv))
        msg_id = self.accept(d, body=b"first", headers=[("webhook-id", "compact-1")])
        for i in range(20):
            self.accept(d, body=pseudo_random(100_000, b"filler%d" % i), chunked=False)
        rcv.wait_requests(21, timeout=scaled(10))
        qdir = os.path.join(d.storage_dir, "queue")

        def disk():
            return sum(os.path.getsize(os.path.join(qdir, f)) for f in os.listdir(qdir)
                       if f.endswith(".seg"))
        wait_until(lambda: disk() < 1_000_000, scaled(5), "the delivered messages' segments "
                                                          "to be reclaimed")
        self.assertEqual(self.accept(d, body=b"first", headers=[("webhook-id", "compact-1")]),
                         msg_id)
        d2 = self.restart(d)
        self.assertEqual(self.accept(d2, body=b"first", headers=[("webhook-id", "compact-1")]),
                         msg_id)
        self.settle()
        self.assertEqual(len(rcv.requests), 21, "a deduplicated message was delivered again")

    def test_dedupe_and_messages_survive_sigkill(self):
        port = free_port()
        routes = [q_route([f"http://127.0.0.1:{port}/in"], retry=dict(FAST),
                          dedupe={"header": "webhook-id", "window": "1h"})]
        d = self.start(routes, storage={"fsync": "always"})
        ids = [self.accept(d, body=b"k%d" % i, headers=[("webhook-id", f"kill-{i}")])
               for i in range(3)]
        d.kill()
        rcv = self.port_receiver(port)
        d2 = self.start(routes, tmpdir=d.tmp, storage={"fsync": "always"})
        for i in range(3):
            self.assertEqual(self.accept(d2, body=b"k%d" % i, headers=[("webhook-id", f"kill-{i}")]),
                             ids[i])
        rcv.wait_requests(3, timeout=scaled(5))
        self.settle()
        got = {}
        for s in rcv.requests:
            got.setdefault(s.header("X-Dechunkd-Delivery-Id"), []).append(s.body)
        self.assertEqual(sorted(got), sorted(i + ".0" for i in ids))
        for i, msg in enumerate(ids):
            self.assertEqual(set(got[msg + ".0"]), {b"k%d" % i})


# --------------------------------------------------------------------------------------------
# pause / resume, GET /queue, metrics
# --------------------------------------------------------------------------------------------

class PauseQueueTests(QueueCase):
    def test_pause_holds_deliveries_and_resume_sends_them(self):
        rcv = self.receiver()
        target = rcv.url("/in")
        d = self.start([q_route([rcv.url("/in?sig=Q")]),
                        {"name": "p", "path": "/p", "target": rcv.url("/proxy")}])
        self.pause(d)
        ids = [self.accept(d, body=b"p%d" % i) for i in range(3)]
        self.settle()
        self.assertEqual(rcv.requests, [], "a paused route delivers nothing")
        self.assertEqual(self.queue(d), {"routes": [{"route": "q", "paused": True, "targets": [
            {"target": target, "pending": 3, "in_flight": 0, "dead_letters": 0}]}]})
        self.pause(d)  # pausing twice is fine
        self.resume(d)
        rcv.wait_requests(3)
        self.assertEqual(sorted(s.header("X-Dechunkd-Message-Id") for s in rcv.requests),
                         sorted(ids))
        wait_until(lambda: self.queue(d) == {"routes": [{"route": "q", "paused": False, "targets": [
            {"target": target, "pending": 0, "in_flight": 0, "dead_letters": 0}]}]},
            WAIT, "an empty, running queue")

    def test_pause_errors(self):
        rcv = self.receiver()
        d = self.start([q_route([rcv.url("/in")]),
                        {"name": "p", "path": "/p", "target": rcv.url("/proxy")},
                        {"name": "e", "path": "/e", "mode": "echo"}])
        for route in ("p", "e"):
            for action in ("pause", "resume"):
                with self.subTest(route=route, action=action):
                    self.assert_admin_error(self.admin(d, "POST", f"/routes/{route}/{action}"),
                                            409, "conflict")
        for action in ("pause", "resume"):
            self.assert_admin_error(self.admin(d, "POST", f"/routes/nope/{action}"), 404,
                                    "not_found")

    def test_pause_survives_reload_and_restart(self):
        rcv = self.receiver()
        target = rcv.url("/in")
        routes = [q_route([target])]
        d = self.start(routes)
        self.pause(d)
        first = self.accept(d, body=b"before reload")
        mark = d.log_mark()
        d.send_signal(signal.SIGHUP)
        d.wait_log("configuration reloaded", start=mark)
        second = self.accept(d, body=b"after reload")
        self.settle()
        self.assertEqual(rcv.requests, [])
        self.assertEqual(self.queue(d)["routes"][0]["paused"], True)

        d2 = self.restart(d)
        self.assertEqual(self.queue(d2), {"routes": [{"route": "q", "paused": True, "targets": [
            {"target": target, "pending": 2, "in_flight": 0, "dead_letters": 0}]}]})
        self.settle()
        self.assertEqual(rcv.requests, [], "still paused after the restart")
        self.resume(d2)
        rcv.wait_requests(2)
        self.assertEqual(sorted(s.header("X-Dechunkd-Delivery-Id") for s in rcv.requests),
                         sorted([first + ".0", second + ".0"]))

    def test_queue_shape_in_flight_and_metrics(self):
        a, b, slow = self.receiver(), self.receiver(), self.receiver()
        slow.reply_with(Reply(delay=1.5))
        ua, ub, us = a.url("/a"), b.url("/b"), slow.url("/s")
        d = self.start([q_route([a.url("/a?sig=1"), ub], name="qa", path="/qa"),
                        {"name": "p", "path": "/p", "target": a.url("/proxy")},
                        q_route([{"url": us, "max_in_flight": 1}], name="qs", path="/qs")])
        self.assertEqual(self.queue(d), {"routes": [
            {"route": "qa", "paused": False, "targets": [
                {"target": ua, "pending": 0, "in_flight": 0, "dead_letters": 0},
                {"target": ub, "pending": 0, "in_flight": 0, "dead_letters": 0}]},
            {"route": "qs", "paused": False, "targets": [
                {"target": us, "pending": 0, "in_flight": 0, "dead_letters": 0}]}]})

        self.pause(d, "qa")
        bodies = [pseudo_random(1000, b"x"), pseudo_random(2000, b"y")]
        for body in bodies:
            self.accept(d, "/qa", body)
        # qs: one in flight (the receiver holds it), one pending behind it.
        self.accept(d, "/qs", b"s1")
        self.accept(d, "/qs", b"s2")
        slow.wait_requests(1)
        self.assertEqual(self.queue(d), {"routes": [
            {"route": "qa", "paused": True, "targets": [
                {"target": ua, "pending": 2, "in_flight": 0, "dead_letters": 0},
                {"target": ub, "pending": 2, "in_flight": 0, "dead_letters": 0}]},
            {"route": "qs", "paused": False, "targets": [
                {"target": us, "pending": 1, "in_flight": 1, "dead_letters": 0}]}]})

        text, m = self.metrics(d)
        self.assertEqual(m.get(metric("queue_pending", route="qa", target=ua)), 2, text)
        self.assertEqual(m.get(metric("queue_pending", route="qa", target=ub)), 2, text)
        self.assertEqual(m.get(metric("queue_pending", route="qs", target=us)), 1, text)
        self.assertGreaterEqual(m.get(metric("queue_bytes"), -1), sum(map(len, bodies)) + 4, text)
        for key in (metric("queue_oldest_pending_seconds", route="qa", target=ua),
                    metric("queue_oldest_pending_seconds", route="qa", target=ub)):
            self.assertIn(key, m, text)
            self.assertGreaterEqual(m[key], 0)
            self.assertLess(m[key], 60)
        self.assertEqual(m.get(metric("requests_total", route="qa", mode="queue", status="202")), 2)
        self.assertEqual(m.get(metric("requests_total", route="qs", mode="queue", status="202")), 2)
        self.assertEqual(m.get(metric("dead_letters", route="qa", target=ua)), 0, text)
        self.assertEqual(m.get(metric("dead_letters", route="qs", target=us)), 0, text)
        self.assertEqual(m.get(metric("queue_corrupt_records_total")), 0, text)
        self.assertNotIn("sig=1", text)
        self.assert_promtool_accepts(text)
        # The age of the oldest pending message grows while the route is paused.
        wait_until(lambda: self.metrics(d)[1].get(
            metric("queue_oldest_pending_seconds", route="qa", target=ua), 0) >= 1.0,
            scaled(5), "queue_oldest_pending_seconds to reach 1 s")

        self.resume(d, "qa")
        a.wait_requests(2)
        b.wait_requests(2)
        slow.wait_requests(2, timeout=scaled(6))
        self.wait_metric(d, metric("deliveries_total", route="qs", target=us, result="delivered"),
                         2, timeout=scaled(6))
        text, m = self.metrics(d)
        for route, target, n in (("qa", ua, 2), ("qa", ub, 2), ("qs", us, 2)):
            self.assertEqual(m.get(metric("deliveries_total", route=route, target=target,
                                          result="delivered")), n, text)
            self.assertEqual(m.get(metric("queue_pending", route=route, target=target)), 0, text)
            self.assertEqual(m.get(metric("queue_oldest_pending_seconds", route=route,
                                          target=target)), 0, text)
        self.assertEqual(self.queue(d)["routes"][1]["targets"][0],
                         {"target": us, "pending": 0, "in_flight": 0, "dead_letters": 0})

    def assert_promtool_accepts(self, text: str):
        promtool = shutil.which("promtool")
        if not promtool:
            return
        r = subprocess.run([promtool, "check", "metrics"], input=text.encode(),
                           capture_output=True, timeout=30)
        self.assertNotIn(b"error while linting", r.stdout + r.stderr,
                         (r.stdout + r.stderr).decode())
        lint = [l for l in (r.stdout + r.stderr).decode().splitlines() if l.strip()]
        self.assertEqual(lint, [], "promtool lint findings")


class HttpsTargetTests(QueueCase):
    def test_https_target_and_a_verification_failure(self):
        from tlsutil import CertFactory, TlsReceiver
        pki = CertFactory()
        self.addCleanup(pki.close)
        good, untrusted = TlsReceiver(pki.server), TlsReceiver(pki.untrusted, send_chain=False)
        self.addCleanup(good.close)
        self.addCleanup(untrusted.close)
        d = self.start([q_route([{"url": good.url("/in?sig=T"), "tls": {"ca_file": pki.ca_cert}},
                                 {"url": untrusted.url("/bad"), "tls": {"ca_file": pki.ca_cert}}],
                                retry=dict(FAST, max_attempts=2))])
        msg_id = self.accept(d, body=b"over tls")
        seen = good.wait_requests(1)[0]
        self.assertEqual(seen.request_line, "POST /in?sig=T HTTP/1.1")
        self.assertEqual(seen.body, b"over tls")
        self.assertEqual(seen.header("X-Dechunkd-Delivery-Id"), msg_id + ".0")
        self.assertEqual(seen.header("X-Dechunkd-Attempt"), "1")
        dl = self.wait_dead_letters(d, 1)
        self.assert_dead_letter(dl[0], msg_id, 1, "q", untrusted.url("/bad"), 2, None)
        self.assertRegex(dl[0]["last_error"].lower(), r"certificate|verif")
        self.assertEqual(untrusted.requests, [])


# --------------------------------------------------------------------------------------------
# full queue, restarts, reloads
# --------------------------------------------------------------------------------------------

class DurabilityTests(QueueCase):
    def test_full_queue_answers_503_and_is_not_remembered_for_dedupe(self):
        rcv = self.receiver()
        d = self.start([q_route([rcv.url("/in")], dedupe={"header": "webhook-id", "window": "1h"})],
                       storage={"max_queue_size": "64KiB"})
        self.pause(d)
        accepted, refused = [], None
        for i in range(40):
            resp = self.post(d, body=pseudo_random(8192, b"full%d" % i), chunked=False)
            if resp.status != 202:
                refused = resp
                break
            accepted.append(self.assert_accepted(resp))
        self.assertIsNotNone(refused, "40 x 8 KiB fit into a 64 KiB queue")
        self.assertGreaterEqual(len(accepted), 4, f"only {len(accepted)} x 8 KiB accepted")
        self.assertLessEqual(len(accepted), 8)
        self.assertEqual(refused.status, 503, f"response: {refused}")
        self.assertEqual(refused.header("Content-Type"), "application/json")
        body = refused.json()
        self.assertEqual(set(body), {"error", "message", "request_id"})
        self.assertEqual(body["error"], "overloaded")
        self.assertEqual(body["request_id"], refused.header("X-Request-Id"))
        self.assertRegex(refused.header("Retry-After") or "", r"^[1-9][0-9]*$")

        # Refused with a dedupe header (a body that does not fit either): not remembered.
        dd = pseudo_random(8192, b"dd")
        again = self.post(d, body=dd, headers=[("webhook-id", "full-1")])
        self.assertEqual(again.status, 503, f"response: {again}")
        self.assertEqual(again.json()["error"], "overloaded")
        _, m = self.metrics(d)
        self.assertEqual(m.get(metric("requests_total", route="q", mode="queue", status="202")),
                         len(accepted))
        self.assertEqual(m.get(metric("requests_total", route="q", mode="queue", status="503")), 2)

        self.resume(d)
        rcv.wait_requests(len(accepted))
        self.assertEqual(sorted(s.header("X-Dechunkd-Message-Id") for s in rcv.requests),
                         sorted(accepted))

        def accepted_now():
            resp = self.post(d, body=dd, headers=[("webhook-id", "full-1")])
            return resp if resp.status == 202 else None
        resp = wait_until(accepted_now, WAIT, "room in the queue again after the deliveries",
                          step=0.1)
        new_id = self.assert_accepted(resp)
        self.assertNotIn(new_id, accepted)
        seen = rcv.wait_requests(len(accepted) + 1)[-1]
        self.assertEqual((seen.header("X-Dechunkd-Message-Id"), seen.body), (new_id, dd))
        self.assertEqual(self.accept(d, body=dd, headers=[("webhook-id", "full-1")]), new_id)
        self.settle()
        self.assertEqual(len(rcv.requests), len(accepted) + 1)

    def test_a_reload_applies_the_queue_size_and_fsync(self):
        # SPEC 2: only workers, storage.dir and admin.address need a restart.
        rcv = self.receiver()
        d = self.start([q_route([rcv.url("/in")])], storage={"max_queue_size": "1MiB"})
        self.pause(d)
        first = self.accept(d, body=pseudo_random(8192, b"r1"))

        def reload(**storage):
            mark = d.log_mark()
            d.rewrite_config(d.config_with(storage=storage))
            d.send_signal(signal.SIGHUP)
            d.wait_log("configuration reloaded", start=mark)
            return mark
        mark = reload(max_queue_size="12KiB", fsync="never")
        d.wait_log(r"queue: reload applied storage\.fsync never, storage\.max_queue_size 12288 bytes",
                   start=mark)
        self.assertNotIn("needs a restart", d.stderr_text(mark))
        refused = self.post(d, body=pseudo_random(8192, b"r2"), chunked=False)
        self.assertEqual((refused.status, refused.json()["error"]), (503, "overloaded"))
        reload(max_queue_size="1MiB", fsync="always")
        second = self.accept(d, body=pseudo_random(8192, b"r3"))
        self.resume(d)
        rcv.wait_requests(2)
        self.assertEqual(sorted(s.header("X-Dechunkd-Message-Id") for s in rcv.requests),
                         sorted([first, second]))

    def test_dead_letters_count_toward_the_queue_size(self):
        rcv = self.receiver()
        rcv.reply_with(Reply(400, "Bad Request"))
        d = self.start([q_route([rcv.url("/in")], retry=dict(FAST))],
                       storage={"max_queue_size": "64KiB"})
        accepted, refused = [], None
        for i in range(40):
            resp = self.post(d, body=pseudo_random(8192, b"dlfull%d" % i), chunked=False)
            if resp.status != 202:
                refused = resp
                break
            accepted.append(self.assert_accepted(resp))
            self.wait_dead_letters(d, len(accepted))
        self.assertIsNotNone(refused, "dead letters do not count toward max_queue_size")
        self.assertEqual((refused.status, refused.json()["error"]), (503, "overloaded"))
        self.assertTrue(refused.header("Retry-After"))
        self.assertGreaterEqual(len(accepted), 4)
        for msg_id in accepted:
            resp = self.admin(d, "DELETE", f"/dead-letters/{msg_id}.0")
            self.assertEqual(resp.status, 204)
        self.assertEqual(self.dead_letters(d), [])
        rcv.reset()

        def accepted_now():
            resp = self.post(d, body=pseudo_random(8192, b"after"), chunked=False)
            return resp if resp.status == 202 else None
        self.assert_accepted(wait_until(accepted_now, WAIT, "room after deleting dead letters",
                                        step=0.1))

    def test_dead_letter_retention(self):
        rcv = self.receiver()
        rcv.reply_with(Reply(400, "Bad Request"))
        routes = [q_route([rcv.url("/in")], retry=dict(FAST, dead_letter_retention="1s")),
                  q_route([rcv.url("/keep")], name="keep", path="/keep", retry=dict(FAST))]
        d = self.start(routes)
        self.accept(d, body=b"expires")
        kept = self.accept(d, "/keep", body=b"kept")
        self.wait_dead_letters(d, 2)
        time.sleep(1.2)  # older than the retention now
        # Expiry is a periodic scan; a restart runs it soon after the start.
        d2 = self.restart(d)
        wait_until(lambda: [x["id"] for x in self.dead_letters(d2)] == [kept + ".0"], scaled(5),
                   "the expired dead letter to go")
        self.assertEqual(self.queue(d2)["routes"][0]["targets"][0]["dead_letters"], 0)

    def test_sigterm_finishes_an_in_flight_delivery(self):
        rcv = self.receiver()
        rcv.reply_with(Reply(delay=1.0), Reply())
        d = self.start([q_route([rcv.url("/in")])])
        msg_id = self.accept(d, body=b"in flight")
        rcv.wait_requests(1)
        d2 = self.restart(d)  # SIGTERM while the target is still answering
        self.settle(1.0)
        self.assertEqual(self.deliveries(rcv), [(msg_id + ".0", "1")],
                         "a delivery that completed during the drain is not sent again")
        self.assertEqual(self.queue(d2)["routes"][0]["targets"][0]["pending"], 0)

    def test_pending_deliveries_keep_their_targets_across_a_reload(self):
        a, b = self.receiver(), self.receiver()
        d = self.start([q_route([a.url("/a")])])
        self.pause(d)
        old = self.accept(d, body=b"old")
        mark = d.log_mark()
        d.rewrite_config(d.config_with(routes=[q_route([b.url("/b"), a.url("/a")])]))
        d.send_signal(signal.SIGHUP)
        d.wait_log("configuration reloaded", start=mark)
        new = self.accept(d, body=b"new")
        self.resume(d)
        a.wait_requests(2)
        b.wait_requests(1)
        self.settle()
        self.assertEqual(sorted((s.header("X-Dechunkd-Delivery-Id"), s.body) for s in a.requests),
                         sorted([(old + ".0", b"old"), (new + ".1", b"new")]))
        self.assertEqual([(s.header("X-Dechunkd-Delivery-Id"), s.body) for s in b.requests],
                         [(new + ".0", b"new")])

    def test_space_of_finished_messages_is_reclaimed(self):
        rcv = self.receiver()
        rcv.keep_bodies = False
        d = self.start([q_route([rcv.url("/in")])])
        for i in range(30):
            self.accept(d, body=pseudo_random(100_000, b"reclaim%d" % i), chunked=False)
        rcv.wait_requests(30, timeout=scaled(10))
        self.wait_metric_at_least(d, metric("deliveries_total", route="q", target=rcv.url("/in"),
                                            result="delivered"), 30)
        qdir = os.path.join(d.storage_dir, "queue")

        def disk():
            return sum(os.path.getsize(os.path.join(qdir, f)) for f in os.listdir(qdir)
                       if f.endswith(".seg"))
        self.assertTrue(all(re.fullmatch(r"\d{20}\.seg", f) for f in os.listdir(qdir)
                            if f.endswith(".seg")), os.listdir(qdir))
        wait_until(lambda: disk() < 1_000_000, scaled(5), "the segments of 3 MB of delivered "
                                                          "messages to be reclaimed")
        _, m = self.metrics(d)
        self.assertLess(m.get(metric("queue_bytes"), -1), 100_000)
        self.assertGreaterEqual(m.get(metric("queue_bytes"), -1), 0)

    def test_restart_resumes_unfinished_deliveries(self):
        port = free_port()
        target = f"http://127.0.0.1:{port}/in"
        routes = [q_route([target], retry=dict(FAST))]
        d = self.start(routes)
        ids = [self.accept(d, body=b"r%d" % i) for i in range(3)]
        self.wait_metric_at_least(d, metric("deliveries_total", route="q", target=target,
                                            result="retried"), 3)
        rcv = self.port_receiver(port)
        d2 = self.restart(d)
        rcv.wait_requests(3, timeout=scaled(5))
        self.settle()
        got = sorted((s.header("X-Dechunkd-Delivery-Id"), s.body) for s in rcv.requests)
        self.assertEqual(got, sorted((i + ".0", b"r%d" % n) for n, i in enumerate(ids)))
        for s in rcv.requests:
            self.assertEqual(s.header("X-Dechunkd-Message-Id") + ".0",
                             s.header("X-Dechunkd-Delivery-Id"))
        self.wait_metric(d2, metric("queue_pending", route="q", target=target), 0)

    def test_restart_keeps_dead_letters(self):
        rcv = self.receiver()
        rcv.reply_with(Reply(400, "Bad Request"))
        d = self.start([q_route([rcv.url("/in")], retry=dict(FAST))])
        msg_id = self.accept(d, body=b"kept")
        before = self.wait_dead_letters(d, 1)
        d2 = self.restart(d)
        self.assertEqual(self.dead_letters(d2), before)
        self.assertEqual(base64.b64decode(
            self.admin_json(d2, "GET", f"/dead-letters/{msg_id}.0", auth=False)["body"]), b"kept")
        self.settle()
        self.assertEqual(len(rcv.requests), 1, "a dead letter is not delivered again")

    def test_pending_deliveries_survive_a_reload_that_removes_the_route(self):
        port = free_port()
        target = f"http://127.0.0.1:{port}/in"
        d = self.start([q_route([target], retry=dict(FAST)),
                        {"name": "e", "path": "/e", "mode": "echo"}])
        msg_id = self.accept(d, body=b"orphan")
        self.wait_metric_at_least(d, metric("deliveries_total", route="q", target=target,
                                            result="retried"), 1)
        mark = d.log_mark()
        d.rewrite_config(d.config_with(routes=[{"name": "e", "path": "/e", "mode": "echo"}]))
        d.send_signal(signal.SIGHUP)
        d.wait_log("configuration reloaded", start=mark)
        routes = self.queue(d)["routes"]
        self.assertEqual([r["route"] for r in routes], ["q"], "a removed route with pending "
                                                             "deliveries is still listed")
        self.assertEqual(routes[0]["targets"][0]["target"], target)
        with self.subTest("the removed route can still be paused and resumed"):
            self.pause(d)
            self.assertTrue(self.queue(d)["routes"][0]["paused"])
            self.resume(d)
            self.assertFalse(self.queue(d)["routes"][0]["paused"])
        rcv = self.port_receiver(port)
        seen = rcv.wait_requests(1, timeout=scaled(5))[0]
        self.assertEqual((seen.header("X-Dechunkd-Delivery-Id"), seen.body),
                         (msg_id + ".0", b"orphan"))


if __name__ == "__main__":
    unittest.main()
