"""TLS end to end (SPEC 3, 7): HTTPS listeners (curl and a raw `ssl` client, pipelining,
min_version), HTTPS targets (verification against ca_file and by default, the reasons logged,
hostname/IP checks, server_name, verify: false, mTLS, pooled TLS connections), targets reached
through an HTTP CONNECT proxy, and certificate errors found by --check.

Certificates are made at test time by tlsutil.CertFactory (openssl CLI); nothing is committed."""
import hashlib
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import unittest

from harness import (WAIT, Client, Daemon, GatewayCase, Stream, build_request, free_port,
                     pseudo_random, run_cli, scaled, send_request)
from tlsutil import CertFactory, ConnectProxy, TlsReceiver, openssl

QUERY_SECRET = "sig=TLSQUERYSECRET"  # in target URLs: must never reach a log line


class TlsClient(Client):
    """harness.Client over TLS (same send/response/is_closed helpers)."""

    def __init__(self, port: int, context: ssl.SSLContext, server_hostname: str = "localhost",
                 timeout: float = WAIT):
        self.timeout = timeout
        raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            self.sock = context.wrap_socket(raw, server_hostname=server_hostname)
        except BaseException:
            raw.close()
            raise
        self.stream = Stream(self.sock)


def client_context(cafile: str, max_version=None, min_version=None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=cafile)
    if max_version:
        ctx.maximum_version = max_version
    if min_version:
        ctx.minimum_version = min_version
    return ctx


def echo_fields(body: bytes) -> list:
    """The header lines of an echo answer (message/http) as [(name, value)]."""
    head = body.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    return [tuple(part.strip() for part in line.split(":", 1)) for line in head[1:]]


# --------------------------------------------------------------------------------------------
# HTTPS listener
# --------------------------------------------------------------------------------------------

class TlsListenerTests(GatewayCase):
    """One HTTPS listener and one plain listener in the same daemon."""

    @classmethod
    def setUpClass(cls):
        cls.pki = CertFactory()
        cls.addClassCleanup(cls.pki.close)
        super().setUpClass()
        cls.gw.wait_listening(2)
        # Which port is the HTTPS one: the one a TLS handshake succeeds on.
        cls.tls_port = cls.plain_port = None
        for port in cls.gw.ports:
            try:
                TlsClient(port, client_context(cls.pki.ca_cert), timeout=scaled(2)).close()
                cls.tls_port = port
            except (ssl.SSLError, OSError):
                cls.plain_port = port
        assert cls.tls_port and cls.plain_port, f"ports {cls.gw.ports}: no TLS/plain pair found"

    @classmethod
    def gateway(cls):
        # Distinct addresses: two "127.0.0.1:0" listeners are TlsTwoPortZeroListenersTests.
        return Daemon([
            {"name": "echo", "path": "/echo", "mode": "echo"},
            {"name": "plain", "path": "/plain", "target": cls.rcv.url("/plain")},
        ], listen=[
            {"address": "127.0.0.1:0",
             "tls": {"certificate": cls.pki.server.chain, "private_key": cls.pki.server.key}},
            {"address": f"127.0.0.1:{free_port()}"},
        ])

    def tls(self, **kw) -> TlsClient:
        c = TlsClient(self.tls_port, client_context(self.pki.ca_cert, **kw))
        self.addCleanup(c.close)
        return c

    def test_curl_chunked_upload_to_echo_over_https(self):
        tmp = tempfile.mkdtemp(prefix="dechunkd-curl-")
        self.addCleanup(shutil.rmtree, tmp, True)
        body = pseudo_random(5000)
        with open(os.path.join(tmp, "in"), "wb") as f:
            f.write(body)
        out = os.path.join(tmp, "out")
        proc = subprocess.run(
            ["curl", "-sS", "--max-time", str(int(scaled(10))), "--cacert", self.pki.ca_cert,
             "--resolve", f"localhost:{self.tls_port}:127.0.0.1",
             "-H", "Transfer-Encoding: chunked", "-H", "Content-Type: application/octet-stream",
             "--data-binary", f"@{os.path.join(tmp, 'in')}", "-o", out, "-w", "%{http_code}",
             f"https://localhost:{self.tls_port}/echo"],
            capture_output=True, text=True, timeout=scaled(15))
        self.assertEqual(proc.returncode, 0, f"curl failed: {proc.stderr}")
        self.assertEqual(proc.stdout, "200")
        with open(out, "rb") as f:
            echoed = f.read()
        head, _, echoed_body = echoed.partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"POST /echo HTTP/1.1\r\n"), head[:100])
        fields = echo_fields(echoed)
        lower = [(n.lower(), v) for n, v in fields]
        self.assertIn(("x-forwarded-proto", "https"), lower, fields)
        self.assertIn(("content-length", str(len(body))), lower, fields)
        self.assertNotIn("transfer-encoding", [n for n, _ in lower], fields)
        self.assertEqual(echoed_body, body)

    def test_x_forwarded_proto_per_listener(self):
        raw = build_request("POST", "/plain", [("X-Forwarded-Proto", "http")],
                            chunks=[b"abc", b"def"])
        c = self.tls()
        c.send(raw)
        resp = c.final_response()
        self.assertEqual(resp.status, 200, str(resp))
        seen = self.rcv.wait_requests(1)[0]
        self.assert_forwarded(seen, "/plain", b"abcdef")
        self.assertEqual(seen.header("X-Forwarded-Proto"), "https")
        self.rcv.reset()
        resp = send_request(self.plain_port,
                            build_request("POST", "/plain", [("X-Forwarded-Proto", "https")],
                                          body=b"x"))
        self.assertEqual(resp.status, 200, str(resp))
        self.assertEqual(self.rcv.wait_requests(1)[0].header("X-Forwarded-Proto"), "http")

    def test_pipelined_keep_alive_requests_over_tls(self):
        reqs = [
            build_request("POST", "/plain?n=1", chunks=[b"one", b"-1"]),
            build_request("POST", "/plain?n=2", body=b"two-2"),
            build_request("GET", "/plain?n=3"),
            build_request("POST", "/echo", chunks=[b"four"]),
        ]
        c = self.tls()
        c.send(b"".join(reqs))
        methods = ["POST", "POST", "GET", "POST"]
        answers = [c.final_response(m) for m in methods]
        self.assertEqual([a.status for a in answers], [200, 200, 200, 200],
                         [str(a) for a in answers])
        self.assertEqual([a.body for a in answers[:3]],
                         [b"POST /plain?n=1", b"POST /plain?n=2", b"GET /plain?n=3"])
        self.assertIn(b"\r\n\r\nfour", answers[3].body)
        seen = self.rcv.wait_requests(3)
        self.assertEqual([s.target for s in seen], ["/plain?n=1", "/plain?n=2", "/plain?n=3"])
        self.assertEqual([s.body for s in seen], [b"one-1", b"two-2", b""])
        self.assertFalse(c.is_closed(0.5), "keep-alive TLS connection was closed")
        # And the connection still serves one more request afterwards.
        c.send(build_request("POST", "/plain?n=5", body=b"5"))
        self.assertEqual(c.final_response().body, b"POST /plain?n=5")

    def test_request_in_one_byte_tls_records(self):
        raw = build_request("POST", "/plain", [("X-A", "1")], chunks=[b"hello", b" world"])
        c = self.tls()
        c.send(raw, piece=1)
        resp = c.final_response()
        self.assertEqual(resp.status, 200, str(resp))
        self.assert_forwarded(self.rcv.wait_requests(1)[0], "/plain", b"hello world")

    def test_large_chunked_body_over_tls(self):
        body = pseudo_random(1 << 20, b"tls-in")
        chunks = [body[i: i + 70000] for i in range(0, len(body), 70000)]
        c = self.tls()
        c.send(build_request("POST", "/plain", chunks=chunks))
        resp = c.final_response(timeout=scaled(20))
        self.assertEqual(resp.status, 200, str(resp))
        seen = self.rcv.wait_requests(1)[0]
        self.assert_forwarded(seen, "/plain", body)

    def test_tls12_client_accepted_by_default_min_version(self):
        c = self.tls(max_version=ssl.TLSVersion.TLSv1_2)
        self.assertEqual(c.sock.version(), "TLSv1.2")
        c.send(build_request("POST", "/plain", body=b"x"))
        self.assertEqual(c.final_response().status, 200)
        self.rcv.wait_requests(1)

    def test_plain_http_on_tls_port_gets_a_plain_400_saying_so(self):
        # A sender configured with http:// for an https:// listener: a plain-text answer that
        # says what is wrong (as nginx does), never a forwarded request.
        # (Not HEAD: OpenSSL has consumed the request line, so the answer cannot know it was one.)
        for method in ("POST", "GET", "PUT"):
            with self.subTest(method):
                c = self.connect(self.tls_port)
                c.send(build_request(method, "/plain", body=b"x" if method != "GET" else None))
                resp = c.final_response(method=method)
                self.assertEqual(resp.status, 400)
                self.assertEqual((resp.header("Connection") or "").lower(), "close")
                self.assertEqual(resp.json()["error"], "bad_request")
                self.assertEqual(resp.json()["message"],
                                 "this listener expects TLS: the request was sent as plain HTTP (use https://)")
                self.assertEqual(resp.json()["request_id"], resp.header("X-Request-Id"))
                self.assertTrue(c.is_closed())
        self.rcv.assert_nothing()
        # The listener still speaks TLS.
        c = self.tls()
        c.send(build_request("POST", "/plain", body=b"x"))
        self.assertEqual(c.final_response().status, 200)

    def test_abandoned_handshakes_do_not_disturb_service(self):
        for _ in range(3):
            s = socket.create_connection(("127.0.0.1", self.tls_port), timeout=WAIT)
            s.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # a cut ClientHello
            s.close()
        c = self.tls()
        c.send(build_request("POST", "/plain", body=b"after"))
        self.assertEqual(c.final_response().status, 200)
        self.rcv.wait_requests(1)


class TlsTwoPortZeroListenersTests(unittest.TestCase):
    """An HTTPS listener and a plain one, both written "127.0.0.1:0": each keeps its own kind."""

    def test_plain_listener_stays_plain(self):
        pki = CertFactory()
        self.addCleanup(pki.close)
        for order in ("tls first", "plain first"):
            with self.subTest(order):
                listen = [{"address": "127.0.0.1:0",
                           "tls": {"certificate": pki.server.chain,
                                   "private_key": pki.server.key}},
                          {"address": "127.0.0.1:0"}]
                if order == "plain first":
                    listen.reverse()
                gw = Daemon([{"name": "echo", "path": "/echo", "mode": "echo"}], listen=listen)
                self.addCleanup(gw.close)
                gw.start(listeners=2)
                kinds = {}
                for port in gw.ports:
                    try:
                        resp = send_request(port, build_request("POST", "/echo", body=b"x"),
                                            timeout=scaled(2))
                        kinds[port] = f"plain {resp.status}"
                    except AssertionError:
                        kinds[port] = "not plain"
                tls_port = gw.ports[0 if order == "tls first" else 1]
                plain_port = gw.ports[1 if order == "tls first" else 0]
                self.assertEqual(kinds[plain_port], "plain 200",
                                 f"listener without tls: did not answer plain HTTP ({kinds})")
                # The TLS listener refuses plain HTTP (saying so in a plain 400) and does TLS.
                self.assertEqual(kinds[tls_port], "plain 400", f"{kinds}")
                c = TlsClient(tls_port, client_context(pki.ca_cert))
                c.send(build_request("POST", "/echo", body=b"x"))
                self.assertEqual(c.final_response().status, 200)
                c.close()
                gw.stop()


class TlsListenerCertificateExpiryTests(unittest.TestCase):
    def test_an_expired_listener_certificate_is_logged_at_start_and_reload(self):
        pki = CertFactory()
        self.addCleanup(pki.close)
        gw = Daemon([{"name": "echo", "path": "/echo", "mode": "echo"}], listen=[
            {"address": "127.0.0.1:0",
             "tls": {"certificate": pki.expired.chain, "private_key": pki.expired.key}}])
        self.addCleanup(gw.close)
        gw.start()
        line = r"warn listener 127\.0\.0\.1:0: the certificate %s expired \d+ day\(s\) ago; senders refuse it: " \
               r"renew it and reload \(SIGHUP\)" % re.escape(pki.expired.chain)
        gw.wait_log(line)
        mark = gw.log_mark()
        gw.send_signal(signal.SIGHUP)
        gw.wait_log(line, start=mark)
        # A valid certificate says nothing.
        ok = Daemon([{"name": "echo", "path": "/echo", "mode": "echo"}], listen=[
            {"address": "127.0.0.1:0",
             "tls": {"certificate": pki.server.chain, "private_key": pki.server.key}}])
        self.addCleanup(ok.close)
        ok.start()
        self.assertNotIn("the certificate", ok.stderr_text())


class TlsMinVersion13Tests(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.pki = CertFactory()
        cls.addClassCleanup(cls.pki.close)
        cls.gw = Daemon([{"name": "echo", "path": "/echo", "mode": "echo"}], listen=[
            {"address": "127.0.0.1:0",
             "tls": {"certificate": cls.pki.server.chain, "private_key": cls.pki.server.key,
                     "min_version": "1.3"}}])
        cls.addClassCleanup(cls.gw.close)
        cls.gw.start()

    @classmethod
    def tearDownClass(cls):
        cls.gw.stop()

    def test_tls12_only_client_refused(self):
        ctx = client_context(self.pki.ca_cert, max_version=ssl.TLSVersion.TLSv1_2)
        with self.assertRaises((ssl.SSLError, ConnectionResetError, BrokenPipeError)):
            c = TlsClient(self.gw.port, ctx)
            try:  # a handshake that "succeeds" must at least not serve a request
                c.send(build_request("POST", "/echo", body=b"x"))
                c.final_response()
            finally:
                c.close()

    def test_tls13_client_served(self):
        c = TlsClient(self.gw.port, client_context(self.pki.ca_cert,
                                                   min_version=ssl.TLSVersion.TLSv1_3))
        self.addCleanup(c.close)
        self.assertEqual(c.sock.version(), "TLSv1.3")
        c.send(build_request("POST", "/echo", chunks=[b"ab", b"c"]))
        resp = c.final_response()
        self.assertEqual(resp.status, 200, str(resp))
        self.assertIn(("X-Forwarded-Proto", "https"), echo_fields(resp.body))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class TlsStalledPeerTests(unittest.TestCase):
    """A TLS write that waits for the peer's handshake bytes waits on readable, not writable (a
    writable socket would make it spin), and a stalled handshake with a target is bounded by
    upstream_connect and says so."""

    def test_target_that_never_answers_the_handshake(self):
        silent = socket.socket()
        self.addCleanup(silent.close)
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # accepted by the kernel, never read or written
        gw = Daemon([{"name": "t", "path": "/t",
                      "target": f"https://127.0.0.1:{silent.getsockname()[1]}/"}],
                    timeouts={"upstream_connect": "1s", "upstream_response": "10s", "send": "10s"})
        self.addCleanup(gw.close)
        gw.start()
        c = Client(gw.port)
        self.addCleanup(c.close)
        cpu0 = cpu_seconds(gw.pid)
        started = time.monotonic()
        c.send(build_request("GET", "/t"))
        resp = c.final_response("GET", timeout=scaled(8))
        waited = time.monotonic() - started
        self.assertEqual(resp.status, 502, str(resp))
        self.assertIn(b"TLS handshake with the target did not finish in time (upstream_connect)",
                      resp.body)
        self.assertLess(waited, 9, "bounded by upstream_connect (1 s), not send or upstream_response (10 s)")
        self.assertLess(cpu_seconds(gw.pid) - cpu0, 0.5 * waited + 0.2,
                        "the gateway spun while the handshake waited")

    def test_overloaded_tls_listener_does_not_spin_on_a_silent_client(self):
        pki = CertFactory()
        self.addCleanup(pki.close)
        gw = Daemon([{"name": "echo", "path": "/echo", "mode": "echo"}],
                    limits={"max_connections": 1}, timeouts={"send": "3s"},
                    listen=[{"address": "127.0.0.1:0",
                             "tls": {"certificate": pki.server.chain,
                                     "private_key": pki.server.key}}])
        self.addCleanup(gw.close)
        gw.start()
        holder = socket.create_connection(("127.0.0.1", gw.port))  # takes the one slot
        self.addCleanup(holder.close)
        time.sleep(scaled(0.3))
        cpu0 = cpu_seconds(gw.pid)
        silent = socket.create_connection(("127.0.0.1", gw.port))  # over the limit: the 503 path
        self.addCleanup(silent.close)
        time.sleep(1.5)  # the 503 waits for a ClientHello that never comes
        used = cpu_seconds(gw.pid) - cpu0
        self.assertLess(used, 0.75, f"the gateway used {used:.2f} s of CPU in 1.5 s waiting")
        # timeouts.send ends the wait: the connection is closed.
        silent.settimeout(scaled(8))
        self.assertEqual(silent.recv(100), b"")


# --------------------------------------------------------------------------------------------
# HTTPS targets
# --------------------------------------------------------------------------------------------

class TlsTargetTests(GatewayCase):
    reject_settle = 0.1

    @classmethod
    def setUpClass(cls):
        pki = cls.pki = CertFactory()
        cls.addClassCleanup(pki.close)
        cls.t = {
            "good": TlsReceiver(pki.server),
            "pool": TlsReceiver(pki.server),
            "untrusted": TlsReceiver(pki.untrusted, send_chain=False),
            "wrong": TlsReceiver(pki.wrong_name),
            "expired": TlsReceiver(pki.expired),
            "lh-only": TlsReceiver(pki.localhost_only),
            "mtls": TlsReceiver(pki.server, client_ca=pki.ca_cert),
            "big": TlsReceiver(pki.server),
            "closer": TlsReceiver(pki.server, close_after=True),
        }
        for r in cls.t.values():
            cls.addClassCleanup(r.close)
        cls.proxy = ConnectProxy()
        cls.refusing = ConnectProxy(
            refuse=b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                   b"Proxy-Authenticate: Basic realm=\"corp\"\r\nContent-Length: 0\r\n\r\n")
        cls.forbidding = ConnectProxy(
            refuse=b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
        for p in (cls.proxy, cls.refusing, cls.forbidding):
            cls.addClassCleanup(p.close)
        super().setUpClass()

    @classmethod
    def gateway(cls):
        t, pki = cls.t, cls.pki
        ca = {"ca_file": pki.ca_cert}

        def route(name, url, tls=None, **extra):
            target = {"url": url, **extra}
            if tls is not None:
                target["tls"] = tls
            return {"name": name, "path": "/" + name, "targets": [target]}
        return Daemon([
            route("ca", t["good"].url("/in/ca?" + QUERY_SECRET), ca),
            route("by-name", t["good"].url("/in/name", host="localhost"), ca),
            route("system-store", t["good"].url("/in/sys?" + QUERY_SECRET)),
            route("unknown-ca", t["untrusted"].url("/in/unknown?" + QUERY_SECRET), ca),
            route("wrong-name", t["wrong"].url("/in/wrong", host="localhost"), ca),
            route("wrong-ip", t["wrong"].url("/in/wrongip"), ca),
            route("expired", t["expired"].url("/in/expired?" + QUERY_SECRET, host="localhost"),
                  ca),
            route("ip-vs-dns", t["lh-only"].url("/in/ipdns"), ca),
            route("server-name", t["lh-only"].url("/in/sn"), {**ca, "server_name": "localhost"}),
            route("server-name-other", t["wrong"].url("/in/sno"),
                  {**ca, "server_name": "other.test"}),
            route("no-verify", t["untrusted"].url("/in/nv?" + QUERY_SECRET), {"verify": False}),
            route("mtls-none", t["mtls"].url("/in/mtls-none", host="localhost"), ca),
            route("mtls", t["mtls"].url("/in/mtls", host="localhost"),
                  {**ca, "client_certificate": pki.client.cert,
                   "client_private_key": pki.client.key}),
            route("pool", t["pool"].url("/in/pool"), ca),
            route("big", t["big"].url("/in/big"), ca),
            route("closer", t["closer"].url("/in/closer"), ca),
            route("via-proxy-https", t["good"].url("/in/vp?" + QUERY_SECRET), ca,
                  proxy=cls.proxy.url),
            route("via-proxy-name", t["good"].url("/in/vpn", host="localhost"), ca,
                  proxy=cls.proxy.url),
            route("via-proxy-http", cls.rcv.url("/in/vph?a=1"), proxy=cls.proxy.url),
            route("proxy-407", t["good"].url("/in/p407?" + QUERY_SECRET), ca,
                  proxy=cls.refusing.url),
            route("proxy-403-http", cls.rcv.url("/in/p403"), proxy=cls.forbidding.url),
        ])

    def setUp(self):
        super().setUp()
        for r in self.t.values():
            r.reset()
        for p in (self.proxy, self.refusing, self.forbidding):
            p.reset()

    def tearDown(self):
        super().tearDown()
        for name, r in self.t.items():
            self.assertEqual(r.violations, [], f"TLS receiver {name}")

    # -- helpers ----------------------------------------------------------------------------
    def post(self, path: str, **kw):
        raw = build_request("POST", path, [("X-Test", "1")], **(kw or {"chunks": [b"tls", b"-out"]}))
        resp, c = self.exchange(raw)
        return resp, c

    def assert_ok_via(self, path: str, receiver: TlsReceiver, target: str, sni=None,
                      body=b"tls-out"):
        resp, _ = self.post(path)
        self.assertEqual(resp.status, 200, f"{resp}\nlog:\n{self.gw.stderr_text()[-3000:]}")
        self.assertEqual(resp.body, b"tls-ok")
        seen = receiver.wait_requests(1)[0]
        self.assertEqual(seen.request_line, f"POST {target} HTTP/1.1")
        self.assertEqual(seen.header("Content-Length"), str(len(body)))
        self.assertIsNone(seen.header("Transfer-Encoding"))
        self.assertEqual(seen.body, body)
        self.assertEqual(seen.header("X-Forwarded-Proto"), "http")
        self.assertEqual(seen.sni, sni, "SNI sent")
        return seen

    def assert_502_logged(self, path: str, route: str, target_no_query: str, reason: str):
        mark = self.gw.log_mark()
        resp, c = self.post(path)
        self.assert_error(resp, 502, "bad_gateway")
        line = self.gw.wait_log(re.escape(reason), start=mark).string
        self.assertIn(route, line)
        self.assertIn(target_no_query, line)
        self.assertNotIn("TLSQUERYSECRET", self.gw.stderr_text())
        self.assertFalse(c.is_closed(0.3), "the connection should stay open after a 502")
        return line

    # -- verification -----------------------------------------------------------------------
    def test_ca_file_verifies_ip_target(self):
        seen = self.assert_ok_via("/ca", self.t["good"], "/in/ca?" + QUERY_SECRET)
        self.assertEqual(seen.header("Host"), f"127.0.0.1:{self.t['good'].port}")

    def test_dns_name_target_sends_sni(self):
        seen = self.assert_ok_via("/by-name", self.t["good"], "/in/name", sni="localhost")
        self.assertEqual(seen.header("Host"), f"localhost:{self.t['good'].port}")

    def test_system_trust_store_is_the_default(self):
        # Our CA is not in the system store: verification is on without any tls: block.
        self.assert_502_logged("/system-store", "system-store",
                               f"https://127.0.0.1:{self.t['good'].port}/in/sys",
                               "certificate verification failed")
        self.assertEqual(self.t["good"].requests, [])

    def test_unknown_ca_is_502_with_reason(self):
        self.assert_502_logged("/unknown-ca", "unknown-ca",
                               f"https://127.0.0.1:{self.t['untrusted'].port}/in/unknown",
                               "certificate verification failed: unable to get local issuer "
                               "certificate")
        self.assertEqual(self.t["untrusted"].requests, [])

    def test_wrong_host_name_is_502(self):
        self.assert_502_logged("/wrong-name", "wrong-name",
                               f"https://localhost:{self.t['wrong'].port}/in/wrong",
                               "hostname mismatch")
        self.assertEqual(self.t["wrong"].requests, [])

    def test_wrong_ip_is_502(self):
        self.assert_502_logged("/wrong-ip", "wrong-ip",
                               f"https://127.0.0.1:{self.t['wrong'].port}/in/wrongip",
                               "certificate verification failed")
        self.assertEqual(self.t["wrong"].requests, [])

    def test_ip_literal_is_not_matched_against_dns_names(self):
        # A cert for DNS:localhost only does not cover https://127.0.0.1/ (IP SANs only).
        self.assert_502_logged("/ip-vs-dns", "ip-vs-dns",
                               f"https://127.0.0.1:{self.t['lh-only'].port}/in/ipdns",
                               "certificate verification failed")
        self.assertEqual(self.t["lh-only"].requests, [])

    def test_expired_certificate_is_502(self):
        self.assert_502_logged("/expired", "expired",
                               f"https://localhost:{self.t['expired'].port}/in/expired",
                               "certificate verification failed: certificate has expired")
        self.assertEqual(self.t["expired"].requests, [])

    def test_server_name_verifies_ip_url_against_dns_name(self):
        seen = self.assert_ok_via("/server-name", self.t["lh-only"], "/in/sn", sni="localhost")
        # server_name changes SNI and verification only, not the Host header.
        self.assertEqual(seen.header("Host"), f"127.0.0.1:{self.t['lh-only'].port}")

    def test_server_name_other_name(self):
        self.assert_ok_via("/server-name-other", self.t["wrong"], "/in/sno", sni="other.test")

    def test_verify_false_accepts_untrusted_and_warns(self):
        # The warning comes at start (this route has not been called yet), then the call works.
        line = self.gw.wait_log(r"(?i)warn.*no-verify.*verif|warn.*verif.*no-verify").string
        self.assert_ok_via("/no-verify", self.t["untrusted"], "/in/nv?" + QUERY_SECRET)
        self.assertRegex(line.lower(), r"warn")
        self.assertRegex(line.lower(), r"verif")
        self.assertNotIn("TLSQUERYSECRET", self.gw.stderr_text())

    # -- client certificates ----------------------------------------------------------------
    def test_mtls_target_without_client_certificate_is_502(self):
        resp, _ = self.post("/mtls-none")
        self.assert_error(resp, 502, "bad_gateway")
        self.assertEqual(self.t["mtls"].requests, [])
        self.t["mtls"].wait_handshake_error()
        self.gw.wait_log(r"mtls-none.*https://localhost:\d+/in/mtls-none")

    def test_mtls_target_with_client_certificate(self):
        seen = self.assert_ok_via("/mtls", self.t["mtls"], "/in/mtls", sni="localhost")
        subject = dict(x[0] for x in seen.peer_cert["subject"])
        self.assertEqual(subject.get("commonName"), "dechunkd-client")

    # -- the pool ---------------------------------------------------------------------------
    def test_pooled_tls_connection_reused(self):
        r = self.t["pool"]
        before = r.tls_connections
        c = self.connect()
        for i in range(2):
            resp, _ = self.exchange(build_request("POST", "/pool", body=b"n%d" % i), client=c)
            self.assertEqual(resp.status, 200, str(resp))
        resp, _ = self.exchange(build_request("POST", "/pool", body=b"n2"))  # another client
        self.assertEqual(resp.status, 200, str(resp))
        seen = r.wait_requests(3)
        self.assertEqual([s.body for s in seen], [b"n0", b"n1", b"n2"])
        self.assertEqual(r.tls_connections - before, 1,
                         f"expected one TLS connection, got {r.tls_connections - before}")
        self.assertEqual({s.conn for s in seen}, {seen[0].conn})

    def test_target_closing_pooled_tls_connection(self):
        r = self.t["closer"]
        c = self.connect()
        for i, pause in enumerate((0.0, 0.3, 0.0)):
            time.sleep(pause)
            resp, _ = self.exchange(build_request("POST", "/closer", body=b"c%d" % i), client=c)
            self.assertEqual(resp.status, 200, f"request {i}: {resp}\n"
                                               f"{self.gw.stderr_text()[-2000:]}")
        seen = r.wait_requests(3)
        self.assertEqual([s.body for s in seen], [b"c0", b"c1", b"c2"])
        self.assertEqual(len({s.conn for s in seen}), 3)

    def test_large_body_to_tls_target(self):
        body = pseudo_random(3 << 20, b"tls-out")
        chunks = [body[i: i + 100_000] for i in range(0, len(body), 100_000)]
        resp, _ = self.exchange(build_request("POST", "/big", chunks=chunks))
        self.assertEqual(resp.status, 200, str(resp))
        seen = self.t["big"].wait_requests(1)[0]
        self.assertEqual(seen.header("Content-Length"), str(len(body)))
        self.assertEqual(hashlib.sha256(seen.body).hexdigest(), hashlib.sha256(body).hexdigest())

    # -- CONNECT proxy ----------------------------------------------------------------------
    def test_connect_proxy_to_https_target(self):
        port = self.t["good"].port
        self.assert_ok_via("/via-proxy-https", self.t["good"], "/in/vp?" + QUERY_SECRET)
        heads = self.proxy.wait_heads(1)
        self.assertEqual(self.proxy.request_lines[0], f"CONNECT 127.0.0.1:{port} HTTP/1.1")
        self.assertIn(f"\r\nHost: 127.0.0.1:{port}\r\n".lower().encode(), heads[0].lower())
        self.assertNotIn(b"TLSQUERYSECRET", heads[0])

    def test_connect_proxy_names_the_host_and_sends_sni(self):
        port = self.t["good"].port
        self.assert_ok_via("/via-proxy-name", self.t["good"], "/in/vpn", sni="localhost")
        self.proxy.wait_heads(1)
        self.assertEqual(self.proxy.request_lines[0], f"CONNECT localhost:{port} HTTP/1.1")

    def test_connect_proxy_to_http_target(self):
        resp, _ = self.post("/via-proxy-http")
        self.assertEqual(resp.status, 200, f"{resp}\nlog:\n{self.gw.stderr_text()[-2000:]}")
        seen = self.rcv.wait_requests(1)[0]
        self.assert_forwarded(seen, "/in/vph?a=1", b"tls-out")  # origin-form in the tunnel
        self.assertEqual(seen.header("Host"), self.rcv.authority)
        self.proxy.wait_heads(1)
        self.assertEqual(self.proxy.request_lines[0], f"CONNECT {self.rcv.authority} HTTP/1.1")

    def test_proxy_refusing_with_407_is_502(self):
        line = self.assert_502_logged("/proxy-407", "proxy-407",
                                      f"https://127.0.0.1:{self.t['good'].port}/in/p407", "407")
        self.assertIn("Proxy Authentication Required", line)
        self.assertEqual(self.t["good"].requests, [])
        self.assertEqual(self.refusing.request_lines,
                         [f"CONNECT 127.0.0.1:{self.t['good'].port} HTTP/1.1"])

    def test_proxy_refusing_with_403_for_http_target_is_502(self):
        self.assert_502_logged("/proxy-403-http", "proxy-403-http",
                               f"http://{self.rcv.authority}/in/p403", "403 Forbidden")
        self.rcv.assert_nothing(settle=0.1)

    def test_zz_no_query_secret_in_logs(self):
        self.assertNotIn("TLSQUERYSECRET", self.gw.stderr_text())
        try:
            with open(self.gw.access_log) as f:
                self.assertNotIn("TLSQUERYSECRET", f.read())
        except FileNotFoundError:
            pass


# --------------------------------------------------------------------------------------------
# --check
# --------------------------------------------------------------------------------------------

class TlsConfigCheckTests(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.pki = CertFactory()
        cls.addClassCleanup(cls.pki.close)
        cls.tmp = tempfile.mkdtemp(prefix="dechunkd-tlscheck-")
        cls.addClassCleanup(shutil.rmtree, cls.tmp, True)
        cls.garbage = os.path.join(cls.tmp, "garbage.pem")
        with open(cls.garbage, "w") as f:
            f.write("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")

    def check(self, text: str):
        path = os.path.join(self.tmp, "dechunkd.yaml")
        with open(path, "w") as f:
            f.write(text)
        return path, run_cli("--check", "-c", path)

    def listener_config(self, cert: str, key: str) -> str:
        return (
            "listen:\n"
            "  - address: \"127.0.0.1:0\"\n"
            "    tls:\n"
            f"      certificate: \"{cert}\"\n"
            f"      private_key: \"{key}\"\n"
            "storage:\n"
            f"  dir: \"{self.tmp}/storage\"\n"
            "routes:\n"
            "  - name: \"r\"\n"
            "    path: \"/r\"\n"
            "    mode: \"echo\"\n")

    def target_config(self, tls_lines: str) -> str:
        return (
            "listen:\n"
            "  - address: \"127.0.0.1:0\"\n"
            "storage:\n"
            f"  dir: \"{self.tmp}/storage\"\n"
            "routes:\n"
            "  - name: \"r\"\n"
            "    path: \"/r\"\n"
            "    targets:\n"
            "      - url: \"https://localhost:9/x\"\n"
            "        tls:\n" + tls_lines)

    def test_valid_tls_config_is_ok(self):
        path, p = self.check(self.listener_config(self.pki.server.chain, self.pki.server.key))
        self.assertEqual((p.returncode, p.stdout.strip()), (0, "ok"), p.stderr)

    def test_missing_certificate_names_path_and_position(self):
        missing = "/nonexistent/dechunkd/cert.pem"
        path, p = self.check(self.listener_config(missing, self.pki.server.key))
        self.assertEqual(p.returncode, 1, p.stdout + p.stderr)
        self.assertRegex(p.stderr, re.escape(f"{path}:4:20: cannot load the certificate chain "
                                             f"{missing}: "))

    def test_garbage_certificate(self):
        path, p = self.check(self.listener_config(self.garbage, self.pki.server.key))
        self.assertEqual(p.returncode, 1, p.stdout + p.stderr)
        self.assertIn(f"{path}:4:", p.stderr)
        self.assertIn(self.garbage, p.stderr)

    def test_missing_private_key(self):
        missing = "/nonexistent/dechunkd/key.pem"
        path, p = self.check(self.listener_config(self.pki.server.chain, missing))
        self.assertEqual(p.returncode, 1, p.stdout + p.stderr)
        # At the private_key value (line 5), not the certificate's.
        self.assertIn(f"{path}:5:20: cannot load the private key {missing}: ", p.stderr)

    def test_encrypted_private_key_is_refused_without_a_prompt(self):
        # dechunkd runs unattended and reloads on SIGHUP: asking for a passphrase would hang
        # (on a terminal) or fail with OpenSSL's "UI routines::processing error".
        enc = os.path.join(self.tmp, "encrypted.key")
        openssl("pkey", "-in", self.pki.server.key, "-aes256", "-passout", "pass:hunter2", "-out", enc)
        path, p = self.check(self.listener_config(self.pki.server.chain, enc))
        self.assertEqual(p.returncode, 1, p.stdout + p.stderr)
        self.assertIn(f"{path}:5:20: cannot load the private key {enc}: it is encrypted with a passphrase",
                      p.stderr)
        self.assertNotIn("pass phrase", p.stdout + p.stderr)

    def test_key_not_matching_certificate(self):
        path, p = self.check(self.listener_config(self.pki.server.chain, self.pki.client.key))
        self.assertEqual(p.returncode, 1, p.stdout + p.stderr)
        self.assertIn(f"{path}:", p.stderr)
        self.assertTrue(self.pki.client.key in p.stderr or self.pki.server.chain in p.stderr,
                        p.stderr)

    def test_target_ca_file_missing(self):
        missing = "/nonexistent/dechunkd/ca.pem"
        path, p = self.check(self.target_config(f"          ca_file: \"{missing}\"\n"))
        self.assertEqual(p.returncode, 1, p.stdout + p.stderr)
        self.assertIn(f"{path}:11:20: cannot load the CA file {missing}: ", p.stderr)  # at the value

    def test_target_client_certificate_garbage(self):
        path, p = self.check(self.target_config(
            f"          client_certificate: \"{self.garbage}\"\n"
            f"          client_private_key: \"{self.pki.client.key}\"\n"))
        self.assertEqual(p.returncode, 1, p.stdout + p.stderr)
        self.assertIn(f"{path}:11:31: cannot load the client certificate {self.garbage}: ", p.stderr)

    def test_target_client_private_key_missing_points_at_its_value(self):
        missing = "/nonexistent/dechunkd/client.key"
        path, p = self.check(self.target_config(
            f"          client_certificate: \"{self.pki.client.cert}\"\n"
            f"          client_private_key: \"{missing}\"\n"))
        self.assertEqual(p.returncode, 1, p.stdout + p.stderr)
        self.assertIn(f"{path}:12:31: cannot load the client private key {missing}: ", p.stderr)

    def test_target_tls_config_ok(self):
        path, p = self.check(self.target_config(
            f"          ca_file: \"{self.pki.ca_cert}\"\n"
            f"          client_certificate: \"{self.pki.client.cert}\"\n"
            f"          client_private_key: \"{self.pki.client.key}\"\n"
            "          server_name: \"localhost\"\n"))
        self.assertEqual((p.returncode, p.stdout.strip()), (0, "ok"), p.stderr)

    def test_daemon_start_fails_on_bad_certificate(self):
        missing = "/nonexistent/dechunkd/cert.pem"
        d = Daemon(config_text=self.listener_config(missing, self.pki.server.key))
        self.addCleanup(d.close)
        d.start(wait_ready=False)
        self.assertEqual(d.wait_exit(scaled(10)), 1)
        self.assertIn(missing, d.stderr_text())


if __name__ == "__main__":
    unittest.main()
