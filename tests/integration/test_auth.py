"""Inbound authentication and client addresses end to end (SPEC 7, 11): basic, bearer, header
(401 from the head, then close), hmac and standard_webhooks (signatures over the de-chunked
body, checked after it, connection kept), Expect: 100-continue, the order of 403/405/401/417/413,
allow_from, trusted_proxies and X-Forwarded-For, and secrets kept out of every log.

Signatures are made the way a sender makes them (hmac/hashlib/base64; Ed25519 with the openssl
CLI); keys are generated at test time."""
import base64
import hashlib
import hmac
import os
import re
import shutil
import tempfile
import time
import unittest

from harness import WAIT, Daemon, GatewayCase, build_request, pseudo_random, run_cli, wait_until
from tlsutil import openssl

BASIC_USER = "alice"
BASIC_PASSWORD = "pa:ss-BASICPW-1"          # a ':' inside: split at the first one only
BEARER_TOKEN = "tok-BEARERSECRET-123"       # from ${file:...} (trailing newline trimmed)
API_KEY = "key-HEADERSECRET-9"              # from ${env:...}
HMAC_SECRET = "hmac-HMACSECRET-1"
HMAC512_SECRET = "HMAC512SECRET-two"
WH_KEY_A = b"SWSECRETA-0123456789abcdef"
WH_KEY_B = b"SWSECRETB-fedcba9876543210"
WH_KEY_OTHER = b"not-configured-key-000000"
WHSEC_A = "whsec_" + base64.b64encode(WH_KEY_A).decode()
WHSEC_B = "whsec_" + base64.b64encode(WH_KEY_B).decode()

SECRETS = [BASIC_PASSWORD, "BASICPW", BEARER_TOKEN, "BEARERSECRET", API_KEY, "HEADERSECRET",
           HMAC_SECRET, "HMACSECRET", HMAC512_SECRET, "HMAC512SECRET", WHSEC_A, WHSEC_B,
           base64.b64encode(WH_KEY_A).decode(), base64.b64encode(WH_KEY_B).decode(),
           base64.b64encode(f"{BASIC_USER}:{BASIC_PASSWORD}".encode()).decode()]


def basic(user: str, password: str, scheme: str = "Basic") -> str:
    return scheme + " " + base64.b64encode(f"{user}:{password}".encode()).decode()


def hmac_hex(secret: str, body: bytes, algo=hashlib.sha256) -> str:
    return hmac.new(secret.encode(), body, algo).hexdigest()


def hmac_b64(secret: str, body: bytes, algo=hashlib.sha512) -> str:
    return base64.b64encode(hmac.new(secret.encode(), body, algo).digest()).decode()


def sw_v1(key: bytes, msg_id: str, ts: int, body: bytes) -> str:
    content = f"{msg_id}.{ts}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, content, hashlib.sha256).digest()).decode()


class Ed25519Key:
    """An Ed25519 key pair made and used with the openssl CLI."""

    def __init__(self, directory: str, name: str):
        self.dir = directory
        self.private = os.path.join(directory, name + ".key")
        self.public = os.path.join(directory, name + ".pub.pem")
        openssl("genpkey", "-algorithm", "ed25519", "-out", self.private)
        openssl("pkey", "-in", self.private, "-pubout", "-out", self.public)

    def v1a(self, msg_id: str, ts: int, body: bytes) -> str:
        content = os.path.join(self.dir, "content.bin")
        with open(content, "wb") as f:
            f.write(f"{msg_id}.{ts}.".encode() + body)
        sig = openssl("pkeyutl", "-sign", "-inkey", self.private, "-rawin", "-in", content)
        assert len(sig) == 64, len(sig)
        return "v1a," + base64.b64encode(sig).decode()


def wh_headers(msg_id: str, ts, signature: str) -> list:
    return [("webhook-id", msg_id), ("webhook-timestamp", str(ts)),
            ("webhook-signature", signature)]


class AuthTests(GatewayCase):
    reject_settle = 0.1

    @classmethod
    def setUpClass(cls):
        cls.keys_dir = tempfile.mkdtemp(prefix="dechunkd-auth-")
        cls.addClassCleanup(shutil.rmtree, cls.keys_dir, True)
        cls.token_file = os.path.join(cls.keys_dir, "bearer.token")
        with open(cls.token_file, "w") as f:
            f.write(BEARER_TOKEN + "\n")
        cls.ed = Ed25519Key(cls.keys_dir, "epilot-org")
        cls.ed_other = Ed25519Key(cls.keys_dir, "other-org")
        super().setUpClass()

    @classmethod
    def gateway(cls):
        url = cls.rcv.url
        basic_auth = {"type": "basic", "username": BASIC_USER, "password": BASIC_PASSWORD}
        bearer_auth = {"type": "bearer", "token": "${file:" + cls.token_file + "}"}
        header_auth = {"type": "header", "name": "X-API-Key",
                       "value": "${env:DECHUNKD_TEST_API_KEY}"}
        return Daemon([
            {"name": "basic", "path": "/basic", "target": url("/basic"), "auth": basic_auth},
            {"name": "bearer", "path": "/bearer", "target": url("/bearer"), "auth": bearer_auth},
            {"name": "header", "path": "/header", "target": url("/header"), "auth": header_auth},
            {"name": "header-small", "path": "/header-small", "target": url("/header-small"),
             "auth": header_auth, "max_body_size": "1KiB"},
            {"name": "basic-post", "path": "/basic-post", "methods": ["POST"],
             "target": url("/basic-post"), "auth": basic_auth},
            {"name": "echo-bearer", "path": "/echo-bearer", "mode": "echo", "auth": bearer_auth},
            {"name": "hmac", "path": "/hmac", "target": url("/hmac"),
             "auth": {"type": "hmac", "header": "X-Signature", "secret": HMAC_SECRET}},
            {"name": "hmac512", "path": "/hmac512", "target": url("/hmac512"),
             "auth": {"type": "hmac", "header": "X-Hub-Signature", "secret": HMAC512_SECRET,
                      "algorithm": "sha512", "encoding": "base64", "prefix": "sha512="}},
            {"name": "hmac-prefix", "path": "/hmac-prefix", "target": url("/hmac-prefix"),
             "auth": {"type": "hmac", "header": "X-Sig256", "secret": HMAC_SECRET,
                      "prefix": "sha256="}},
            {"name": "sw", "path": "/sw", "target": url("/sw"),
             "auth": {"type": "standard_webhooks", "secrets": [WHSEC_A, WHSEC_B]}},
            {"name": "sw-ed", "path": "/sw-ed", "target": url("/sw-ed"),
             "auth": {"type": "standard_webhooks", "public_keys": [cls.ed.public]}},
            {"name": "hmac-merge", "path": "/hmac-merge", "target": url("/hmac-merge"),
             "trailers": "merge",
             "auth": {"type": "hmac", "header": "X-Signature", "secret": HMAC_SECRET}},
            {"name": "header-merge", "path": "/header-merge", "target": url("/header-merge"),
             "trailers": "merge", "auth": header_auth},
            {"name": "allow-local", "path": "/allow-local", "target": url("/allow-local"),
             "allow_from": ["127.0.0.0/8"]},
            {"name": "allow-ten", "path": "/allow-ten", "target": url("/allow-ten"),
             "allow_from": ["10.0.0.0/8"]},
            {"name": "allow-ten-auth", "path": "/allow-ten-auth", "target": url("/ata"),
             "allow_from": ["10.0.0.0/8"], "auth": bearer_auth},
            {"name": "allow-ten-post", "path": "/allow-ten-post", "methods": ["POST"],
             "target": url("/atp"), "allow_from": ["10.0.0.0/8"]},
        ], limits={"memory_buffer": "64KiB"}, log={"level": "debug"},
            env={"DECHUNKD_TEST_API_KEY": API_KEY})

    # -- helpers ----------------------------------------------------------------------------
    def assert_401(self, resp, challenge=None):
        body = self.assert_error(resp, 401, "unauthorized")
        if challenge:
            www = resp.header("WWW-Authenticate")
            self.assertIsNotNone(www, f"401 without WWW-Authenticate: {resp}")
            self.assertTrue(www.lower().startswith(challenge.lower()), www)
        for secret in SECRETS:
            self.assertNotIn(secret.encode(), resp.raw_head + resp.body, "secret in the 401")
        return body

    def rejected_401(self, raw, challenge=None, closed=True):
        resp = self.assert_rejected(raw, 401, "unauthorized", closed=closed)
        self.assert_401(resp, challenge)
        return resp

    def body_401(self, raw):
        """A body-signature failure: 401 after the body, nothing forwarded, connection kept
        (proven by a second request on it)."""
        self.rcv.clear_requests()
        resp, c = self.exchange(raw)
        self.assert_401(resp)
        self.rcv.assert_nothing(settle=0.05)
        self.open_after(c)
        return resp

    def open_after(self, client):
        """The connection still serves a request (keep-alive after the answer)."""
        self.rcv.clear_requests()
        resp, _ = self.exchange(build_request("POST", "/allow-local", body=b"again"),
                                client=client)
        self.assertEqual(resp.status, 200, str(resp))
        self.rcv.wait_requests(1)
        self.rcv.clear_requests()

    # -- basic ------------------------------------------------------------------------------
    def test_basic_right_credentials_forwarded_without_authorization(self):
        raw = build_request("POST", "/basic", [("X-Before", "1"),
                                               ("Authorization", basic(BASIC_USER,
                                                                       BASIC_PASSWORD)),
                                               ("X-After", "2")], chunks=[b"hel", b"lo"])
        seen, _ = self.forward(raw)
        self.assert_forwarded(seen, "/basic", b"hello")
        self.assertIsNone(seen.header("Authorization"))
        self.assertEqual((seen.header("X-Before"), seen.header("X-After")), ("1", "2"))

    def test_basic_scheme_is_case_insensitive(self):
        raw = build_request("POST", "/basic",
                            [("Authorization", basic(BASIC_USER, BASIC_PASSWORD, "basic"))],
                            body=b"x")
        seen, _ = self.forward(raw)
        self.assertIsNone(seen.header("Authorization"))

    def test_basic_wrong_or_missing(self):
        cases = {
            "missing": [],
            "wrong password": [("Authorization", basic(BASIC_USER, "pa:ss-wrong"))],
            "password cut at the second colon": [("Authorization", basic(BASIC_USER, "pa"))],
            "wrong user": [("Authorization", basic("mallory", BASIC_PASSWORD))],
            "bearer scheme": [("Authorization", "Bearer " + base64.b64encode(
                f"{BASIC_USER}:{BASIC_PASSWORD}".encode()).decode())],
            "not base64": [("Authorization", "Basic !!!notbase64!!!")],
            "no colon": [("Authorization", "Basic " + base64.b64encode(b"alice").decode())],
            "empty": [("Authorization", "")],
            "twice": [("Authorization", basic(BASIC_USER, BASIC_PASSWORD)),
                      ("Authorization", basic(BASIC_USER, BASIC_PASSWORD))],
        }
        for name, headers in cases.items():
            with self.subTest(name):
                self.rejected_401(build_request("POST", "/basic", headers, body=b"data"),
                                  "Basic")

    def test_basic_401_exact_error_shape(self):
        resp = self.rejected_401(build_request("POST", "/basic", chunks=[b"abc"]), "Basic")
        self.assertEqual(resp.header("Content-Type").split(";")[0], "application/json")
        body = resp.json()
        self.assertEqual(list(body), ["error", "message", "request_id"])
        self.assertEqual(body["error"], "unauthorized")
        self.assertEqual(int(resp.header("Content-Length")), len(resp.body))
        self.assertIn('realm="', resp.header("WWW-Authenticate"))

    # -- bearer -----------------------------------------------------------------------------
    def test_bearer_right_token_from_file(self):
        raw = build_request("POST", "/bearer", [("Authorization", "Bearer " + BEARER_TOKEN)],
                            chunks=[b"a", b"b"])
        seen, _ = self.forward(raw)
        self.assert_forwarded(seen, "/bearer", b"ab")
        self.assertIsNone(seen.header("Authorization"))

    def test_bearer_wrong_or_missing(self):
        cases = {
            "missing": [],
            "wrong": [("Authorization", "Bearer tok-wrong")],
            "prefix of the token": [("Authorization", "Bearer " + BEARER_TOKEN[:-1])],
            "token plus more": [("Authorization", "Bearer " + BEARER_TOKEN + "x")],
            "basic scheme": [("Authorization", "Basic " + BEARER_TOKEN)],
            "no scheme": [("Authorization", BEARER_TOKEN)],
            "scheme only": [("Authorization", "Bearer")],
            "in another header": [("X-Authorization", "Bearer " + BEARER_TOKEN)],
        }
        for name, headers in cases.items():
            with self.subTest(name):
                self.rejected_401(build_request("POST", "/bearer", headers, body=b"data"),
                                  "Bearer")

    def test_echo_route_applies_auth_and_removes_credentials(self):
        raw = build_request("POST", "/echo-bearer",
                            [("Authorization", "Bearer " + BEARER_TOKEN), ("X-K", "v")],
                            chunks=[b"payload"])
        resp, _ = self.exchange(raw)
        self.assertEqual(resp.status, 200, str(resp))
        self.assertNotIn(b"authorization", resp.body.lower())
        self.assertNotIn(BEARER_TOKEN.encode(), resp.body)
        self.assertIn(b"\r\nX-K: v\r\n", resp.body)
        self.assertTrue(resp.body.endswith(b"\r\n\r\npayload"), resp.body)
        self.rejected_401(build_request("POST", "/echo-bearer", body=b"x"), "Bearer")

    # -- header -----------------------------------------------------------------------------
    def test_header_right_value_removed_before_forwarding(self):
        for name in ("X-API-Key", "x-api-key", "X-Api-Key"):
            with self.subTest(name):
                self.rcv.reset()
                raw = build_request("POST", "/header", [(name, API_KEY), ("X-Other", "o")],
                                    chunks=[b"{}"])
                seen, _ = self.forward(raw)
                self.assert_forwarded(seen, "/header", b"{}")
                self.assertIsNone(seen.header("X-API-Key"))
                self.assertEqual(seen.header("X-Other"), "o")

    def test_header_value_with_surrounding_whitespace(self):
        raw = build_request("POST", "/header", [("X-API-Key", "  \t" + API_KEY + " \t ")],
                            body=b"ws")
        seen, _ = self.forward(raw)
        self.assertIsNone(seen.header("X-API-Key"))

    def test_head_401_does_not_read_a_smuggled_request_from_the_body(self):
        inner = build_request("POST", "/allow-local", [("X-Smuggled", "1")], body=b"evil")
        for name, framing in (("length", {"body": inner}), ("chunked", {"chunks": [inner]})):
            with self.subTest(name):
                raw = build_request("POST", "/header", [("X-API-Key", "wrong")], **framing)
                self.rejected_401(raw, closed=True)

    def test_auth_header_in_trailers_is_never_merged(self):
        body = b"merge me"
        sig = hmac_hex(HMAC_SECRET, body)
        seen, _ = self.forward(build_request(
            "POST", "/hmac-merge", [("X-Signature", sig)], chunks=[body],
            trailers=[("X-Signature", "forged"), ("webhook-signature", "v1,forged"),
                      ("X-Merged", "yes")]))
        self.assert_forwarded(seen, "/hmac-merge", body)
        self.assertEqual(seen.header("X-Signature"), sig)
        self.assertIsNone(seen.header("webhook-signature"))
        self.assertEqual(seen.header("X-Merged"), "yes")
        self.rcv.reset()
        seen, _ = self.forward(build_request(
            "POST", "/header-merge", [("X-API-Key", API_KEY)], chunks=[body],
            trailers=[("X-API-Key", API_KEY), ("x-api-key", "injected"),
                      ("Authorization", "Bearer injected"), ("X-Merged", "yes")]))
        self.assertIsNone(seen.header("X-API-Key"), "the auth header came back via a trailer")
        self.assertIsNone(seen.header("Authorization"))
        self.assertEqual(seen.header("X-Merged"), "yes")

    def test_header_wrong_or_missing(self):
        cases = {
            "missing": [],
            "wrong": [("X-API-Key", "key-wrong")],
            "other case": [("X-API-Key", API_KEY.upper())],
            "prefix": [("X-API-Key", API_KEY[:-1])],
            "longer": [("X-API-Key", API_KEY + "0")],
            "as bearer": [("Authorization", "Bearer " + API_KEY)],
            "twice, one wrong": [("X-API-Key", "nope"), ("X-API-Key", API_KEY)],
        }
        for name, headers in cases.items():
            with self.subTest(name):
                self.rejected_401(build_request("POST", "/header", headers, body=b"data"))

    def test_header_401_before_the_body_arrives(self):
        # Head only, chunked: the answer must not wait for the body; then close.
        c = self.connect()
        c.send(b"POST /header HTTP/1.1\r\nHost: gw\r\nX-API-Key: wrong\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n")
        resp = c.final_response(timeout=WAIT)
        self.assert_401(resp)
        self.assertTrue(c.is_closed(), "head-decided 401 must close the connection")
        self.rcv.assert_nothing()

    # -- order of checks --------------------------------------------------------------------
    def test_check_order_403_405_401_417_413(self):
        good = [("X-API-Key", API_KEY)]
        bad = [("X-API-Key", "bad")]
        big = b"x" * 5000
        cases = [
            ("403 before 401", build_request("POST", "/allow-ten-auth", body=b"x"), 403),
            ("403 before 405", build_request("GET", "/allow-ten-post"), 403),
            ("405 before 401", build_request("GET", "/basic-post"), 405),
            ("401 before 417", build_request("POST", "/header", bad + [("Expect", "magic")],
                                             body=b"x"), 401),
            ("417 after auth", build_request("POST", "/header", good + [("Expect", "magic")],
                                             body=b"x"), 417),
            ("401 before 413", build_request("POST", "/header-small", bad, body=big), 401),
            ("413 after auth", build_request("POST", "/header-small", good, body=big), 413),
        ]
        for name, raw, status in cases:
            with self.subTest(name):
                method = raw.split(b" ", 1)[0].decode()
                self.assert_rejected(raw, status, closed=None, method=method)

    # -- hmac -------------------------------------------------------------------------------
    def test_hmac_hex_content_length_and_chunked(self):
        body = b'{"event":"order.created","id":42}'
        sig = hmac_hex(HMAC_SECRET, body)
        for name, framing in (("length", {"body": body}),
                              ("chunked", {"chunks": [body[:5], body[5:6], body[6:]]}),
                              ("uppercase hex", {"body": body})):
            with self.subTest(name):
                self.rcv.reset()
                value = sig.upper() if name == "uppercase hex" else sig
                raw = build_request("POST", "/hmac", [("X-Signature", value)], **framing)
                seen, _ = self.forward(raw)
                self.assert_forwarded(seen, "/hmac", body)
                self.assertEqual(seen.header("X-Signature"), value, "signature header kept")

    def test_hmac_empty_body(self):
        raw = build_request("POST", "/hmac", [("X-Signature", hmac_hex(HMAC_SECRET, b""))],
                            chunks=[])
        seen, _ = self.forward(raw)
        self.assert_forwarded(seen, "/hmac", b"")

    def test_hmac_failures_keep_the_connection(self):
        body = b"the real body"
        sig = hmac_hex(HMAC_SECRET, body)
        cases = {
            "altered body": [("X-Signature", sig)],
            "wrong secret": [("X-Signature", hmac_hex("other", body))],
            "sha512 instead": [("X-Signature", hmac_hex(HMAC_SECRET, body, hashlib.sha512))],
            "base64 instead of hex": [("X-Signature", base64.b64encode(
                bytes.fromhex(sig)).decode())],
            "truncated": [("X-Signature", sig[:-2])],
            "with a prefix": [("X-Signature", "sha256=" + sig)],
        }
        for name, headers in cases.items():
            with self.subTest(name):
                sent = b"the real bodY" if name == "altered body" else body
                raw = build_request("POST", "/hmac", headers, chunks=[sent[:4], sent[4:]])
                self.body_401(raw)

    def test_hmac_missing_header(self):
        self.assert_rejected(build_request("POST", "/hmac", body=b"x"), 401, closed=None)

    def test_hmac_after_401_the_connection_serves_again(self):
        c = self.connect()
        resp, _ = self.exchange(build_request("POST", "/hmac", [("X-Signature", "00" * 32)],
                                              body=b"abc"), client=c)
        self.assert_401(resp)
        self.open_after(c)

    def test_hmac_pipelined_after_body_401_stays_in_sync(self):
        good_body, bad_body = b"good one", b"bad one"
        reqs = [
            build_request("POST", "/hmac?n=1", [("X-Signature", hmac_hex(HMAC_SECRET, b"x"))],
                          chunks=[bad_body]),
            build_request("POST", "/hmac?n=2",
                          [("X-Signature", hmac_hex(HMAC_SECRET, good_body))], body=good_body),
            build_request("POST", "/hmac?n=3", [("X-Signature", "ff" * 32)], body=bad_body),
            build_request("POST", "/hmac?n=4",
                          [("X-Signature", hmac_hex(HMAC_SECRET, good_body))],
                          chunks=[good_body[:3], good_body[3:]]),
        ]
        c = self.connect()
        c.send(b"".join(reqs))
        statuses = [c.final_response().status for _ in reqs]
        self.assertEqual(statuses, [401, 200, 401, 200])
        seen = self.rcv.wait_requests(2)
        self.assertEqual([(s.target, s.body) for s in seen],
                         [("/hmac?n=2", good_body), ("/hmac?n=4", good_body)])
        time.sleep(0.1)
        self.assertEqual(len(self.rcv.requests), 2)

    def test_hmac_sha512_base64_with_prefix(self):
        body = pseudo_random(3000, b"h512")
        sig = "sha512=" + hmac_b64(HMAC512_SECRET, body)
        raw = build_request("POST", "/hmac512", [("X-Hub-Signature", sig)],
                            chunks=[body[:1000], body[1000:]])
        seen, _ = self.forward(raw)
        self.assert_forwarded(seen, "/hmac512", body)
        self.assertEqual(seen.header("X-Hub-Signature"), sig)
        bad = {
            "no prefix": hmac_b64(HMAC512_SECRET, body),
            "unpadded base64": sig.rstrip("="),
            "hex": "sha512=" + hmac_hex(HMAC512_SECRET, body, hashlib.sha512),
            "urlsafe alphabet": "sha512=" + base64.urlsafe_b64encode(
                hmac.new(HMAC512_SECRET.encode(), body, hashlib.sha512).digest()).decode(),
            "sha256": "sha512=" + hmac_b64(HMAC512_SECRET, body, hashlib.sha256),
            "other prefix": "sha256=" + hmac_b64(HMAC512_SECRET, body),
        }
        if bad["urlsafe alphabet"] == sig:  # no '+' or '/' in this digest: make one differ
            del bad["urlsafe alphabet"]
        for name, value in bad.items():
            with self.subTest(name):
                raw = build_request("POST", "/hmac512", [("X-Hub-Signature", value)],
                                    body=body)
                self.body_401(raw)

    def test_hmac_hex_with_prefix(self):
        body = b"prefixed"
        sig = hmac_hex(HMAC_SECRET, body)
        seen, _ = self.forward(build_request("POST", "/hmac-prefix",
                                             [("X-Sig256", "sha256=" + sig)], body=body))
        self.assertEqual(seen.header("X-Sig256"), "sha256=" + sig)
        for value in (sig, "sha1=" + sig, "sha256=" + sig[:-1]):
            with self.subTest(value[:10]):
                self.body_401(build_request("POST", "/hmac-prefix", [("X-Sig256", value)],
                                            body=body))

    def test_hmac_spilled_body_verifies(self):
        body = pseudo_random(1 << 20, b"spill-hmac")
        chunks = [body[i: i + 65536] for i in range(0, len(body), 65536)]
        raw = build_request("POST", "/hmac", [("X-Signature", hmac_hex(HMAC_SECRET, body))],
                            chunks=chunks)
        seen, _ = self.forward(raw)
        self.assert_forwarded(seen, "/hmac", body)
        # The last byte altered: 401, nothing forwarded.
        altered = body[:-1] + bytes([body[-1] ^ 1])
        raw = build_request("POST", "/hmac", [("X-Signature", hmac_hex(HMAC_SECRET, body))],
                            body=altered)
        self.body_401(raw)

    def test_hmac_expect_100_continue_then_401_after_body(self):
        c = self.connect()
        body = b"expect body"
        c.send(b"POST /hmac HTTP/1.1\r\nHost: gw\r\nX-Signature: %s\r\nExpect: 100-continue\r\n"
               b"Content-Length: %d\r\n\r\n" % (b"ab" * 32, len(body)))
        first = c.response(timeout=WAIT)
        self.assertEqual(first.status, 100, f"hmac is checked after the body: {first}")
        c.send(body)
        self.assert_401(c.final_response())
        self.assertFalse(c.is_closed(0.3), "body-auth 401 keeps the connection")
        self.rcv.assert_nothing(settle=0.1)
        self.open_after(c)

    # -- standard webhooks ------------------------------------------------------------------
    def sw_request(self, path, msg_id, ts, sig, body, chunked=True, extra=()):
        kw = {"chunks": [body[i: i + 7] for i in range(0, len(body), 7)]} if chunked else \
            {"body": body}
        return build_request("POST", path, wh_headers(msg_id, ts, sig) + list(extra), **kw)

    def test_sw_v1_each_secret_and_headers_forwarded(self):
        body = b'{"type":"entity.updated","data":{"id":"e1"}}'
        for name, key in (("first secret", WH_KEY_A), ("rotated secret", WH_KEY_B)):
            for chunked in (True, False):
                with self.subTest(name, chunked=chunked):
                    self.rcv.reset()
                    ts = int(time.time())
                    sig = sw_v1(key, "msg_1", ts, body)
                    seen, _ = self.forward(self.sw_request("/sw", "msg_1", ts, sig, body,
                                                           chunked))
                    self.assert_forwarded(seen, "/sw", body)
                    self.assertEqual(seen.header("webhook-id"), "msg_1")
                    self.assertEqual(seen.header("webhook-timestamp"), str(ts))
                    self.assertEqual(seen.header("webhook-signature"), sig)

    def test_sw_several_signatures_one_valid(self):
        body = b"multi"
        ts = int(time.time())
        good = sw_v1(WH_KEY_B, "msg_m", ts, body)
        bad1 = sw_v1(WH_KEY_OTHER, "msg_m", ts, body)
        bad2 = "v1," + base64.b64encode(b"\0" * 32).decode()
        for value in (f"{bad1} {good}", f"{good} {bad1}", f"{bad1} {bad2} {good}",
                      f"v2,{good[3:]} {good}", f"{self.ed_other.v1a('msg_m', ts, body)} {good}"):
            with self.subTest(value[:30]):
                self.rcv.reset()
                seen, _ = self.forward(self.sw_request("/sw", "msg_m", ts, value, body))
                self.assertEqual(seen.header("webhook-signature"), value)
        for value in (f"{bad1} {bad2}", f"v2,{good[3:]}", good[3:], f"v1a,{good[3:]}", ""):
            with self.subTest("all invalid", value=value[:30]):
                self.body_401(self.sw_request("/sw", "msg_m", ts, value, body))

    def test_sw_failures(self):
        body = b'{"a":1}'
        now = int(time.time())
        sig = sw_v1(WH_KEY_A, "msg_f", now, body)
        cases = {
            "altered body": ("msg_f", now, sig, b'{"a":2}'),
            "other id": ("msg_g", now, sig, body),
            "other timestamp": ("msg_f", now + 1, sig, body),
            "unknown secret": ("msg_f", now, sw_v1(WH_KEY_OTHER, "msg_f", now, body), body),
            "stale timestamp": ("msg_f", now - 400, sw_v1(WH_KEY_A, "msg_f", now - 400, body),
                                body),
            "future timestamp": ("msg_f", now + 400, sw_v1(WH_KEY_A, "msg_f", now + 400, body),
                                 body),
            "timestamp not digits": ("msg_f", f"{now}.0", sw_v1(WH_KEY_A, "msg_f", f"{now}.0",
                                                                 body), body),
            "millisecond timestamp": ("msg_f", now * 1000,
                                      sw_v1(WH_KEY_A, "msg_f", now * 1000, body), body),
        }
        for name, (msg_id, ts, value, sent) in cases.items():
            with self.subTest(name):
                raw = self.sw_request("/sw", msg_id, ts, value, sent)
                self.body_401(raw)

    def test_sw_within_tolerance(self):
        body = b"tolerated"
        for delta in (-200, 200):
            with self.subTest(delta=delta):
                self.rcv.reset()
                ts = int(time.time()) + delta
                self.forward(self.sw_request("/sw", "msg_t", ts,
                                             sw_v1(WH_KEY_A, "msg_t", ts, body), body))

    def test_sw_missing_headers(self):
        body = b"x"
        ts = int(time.time())
        full = dict(wh_headers("msg_h", ts, sw_v1(WH_KEY_A, "msg_h", ts, body)))
        for missing in ("webhook-id", "webhook-timestamp", "webhook-signature"):
            with self.subTest(missing):
                headers = [(n, v) for n, v in full.items() if n != missing]
                self.assert_rejected(build_request("POST", "/sw", headers, body=body), 401,
                                     closed=None)

    def test_sw_401_keeps_connection(self):
        c = self.connect()
        ts = int(time.time())
        raw = self.sw_request("/sw", "msg_k", ts, sw_v1(WH_KEY_A, "msg_k", ts, b"one"), b"two")
        resp, _ = self.exchange(raw, client=c)
        self.assert_401(resp)
        self.open_after(c)

    def test_sw_ed25519_v1a(self):
        body = b'{"signed":"with ed25519"}'
        ts = int(time.time())
        sig = self.ed.v1a("msg_e", ts, body)
        seen, _ = self.forward(self.sw_request("/sw-ed", "msg_e", ts, sig, body))
        self.assert_forwarded(seen, "/sw-ed", body)
        self.assertEqual(seen.header("webhook-signature"), sig)
        cases = {
            "other key": self.ed_other.v1a("msg_e", ts, body),
            "v1 on a key-only route": sw_v1(WH_KEY_A, "msg_e", ts, body),
            "v1 tag with the ed25519 signature": "v1," + sig[4:],
        }
        for name, value in cases.items():
            with self.subTest(name):
                self.body_401(self.sw_request("/sw-ed", "msg_e", ts, value, body))
        with self.subTest("altered body"):
            self.body_401(self.sw_request("/sw-ed", "msg_e", ts, sig, body + b" "))
        with self.subTest("v1a on a secrets-only route"):
            self.body_401(self.sw_request("/sw", "msg_e", ts, sig, body))

    def test_sw_spilled_bodies_verify(self):
        body = pseudo_random(1 << 20, b"spill-sw")
        ts = int(time.time())
        chunks = [body[i: i + 50000] for i in range(0, len(body), 50000)]
        for path, sig in (("/sw", sw_v1(WH_KEY_A, "msg_big", ts, body)),
                          ("/sw-ed", self.ed.v1a("msg_big", ts, body))):
            with self.subTest(path):
                self.rcv.reset()
                raw = build_request("POST", path, wh_headers("msg_big", ts, sig), chunks=chunks)
                seen, _ = self.forward(raw)
                self.assert_forwarded(seen, path, body)
                altered = body[:500000] + b"!" + body[500001:]
                raw = build_request("POST", path, wh_headers("msg_big", ts, sig), body=altered)
                self.body_401(raw)

    # -- Expect: 100-continue with header auth -----------------------------------------------
    def test_expect_with_wrong_credentials_gets_401_without_100(self):
        for path, field, challenge in (("/header", ("X-API-Key", "wrong"), None),
                                       ("/basic", ("Authorization", basic("x", "y")), "Basic"),
                                       ("/bearer", ("Authorization", "Bearer no"), "Bearer")):
            with self.subTest(path):
                c = self.connect()
                c.send(b"POST %s HTTP/1.1\r\nHost: gw\r\n%s: %s\r\nExpect: 100-continue\r\n"
                       b"Content-Length: 10\r\n\r\n" % (path.encode(), field[0].encode(),
                                                       field[1].encode()))
                first = c.response(timeout=WAIT)
                self.assertEqual(first.status, 401, f"expected 401 at once, got {first}")
                self.assert_401(first, challenge)
                self.assertTrue(c.is_closed(), "connection should close after the 401")
                self.rcv.assert_nothing(settle=0.1)

    def test_expect_with_right_credentials_gets_100(self):
        for path, field in (("/header", ("X-API-Key", API_KEY)),
                            ("/basic", ("Authorization", basic(BASIC_USER, BASIC_PASSWORD)))):
            with self.subTest(path):
                self.rcv.reset()
                c = self.connect()
                c.send(b"POST %s HTTP/1.1\r\nHost: gw\r\n%s: %s\r\nExpect: 100-continue\r\n"
                       b"Content-Length: 10\r\n\r\n" % (path.encode(), field[0].encode(),
                                                       field[1].encode()))
                first = c.response(timeout=WAIT)
                self.assertEqual(first.status, 100, str(first))
                c.send(b"0123456789")
                final = c.final_response()
                self.assertEqual(final.status, 200, str(final))
                seen = self.rcv.wait_requests(1)[0]
                self.assert_forwarded(seen, path, b"0123456789")
                self.assertIsNone(seen.header(field[0]))

    # -- allow_from -------------------------------------------------------------------------
    def test_allow_from(self):
        seen, _ = self.forward(build_request("POST", "/allow-local", body=b"in"))
        self.assert_forwarded(seen, "/allow-local", b"in")
        for raw in (build_request("POST", "/allow-ten", body=b"out"),
                    build_request("POST", "/allow-ten", chunks=[b"out"]),
                    build_request("POST", "/allow-ten", [("X-Forwarded-For", "10.1.2.3")],
                                  body=b"spoof")):
            with self.subTest(raw[:60]):
                self.assert_rejected(raw, 403, "forbidden", closed=True)

    # -- last: nothing secret in the logs ---------------------------------------------------
    def test_zz_secrets_never_logged(self):
        # Provoke a failure and a success of each kind (log level is debug).
        ts = int(time.time())
        reqs = [
            build_request("POST", "/basic", [("Authorization", basic(BASIC_USER, BASIC_PASSWORD
                                                                     + "x"))], body=b"a"),
            build_request("POST", "/basic", [("Authorization", basic(BASIC_USER,
                                                                     BASIC_PASSWORD))],
                          body=b"a"),
            build_request("POST", "/bearer", [("Authorization", "Bearer " + BEARER_TOKEN)],
                          body=b"a"),
            build_request("POST", "/bearer", [("Authorization", "Bearer " + BEARER_TOKEN
                                               + "x")], body=b"a"),
            build_request("POST", "/header", [("X-API-Key", API_KEY)], body=b"a"),
            build_request("POST", "/header", [("X-API-Key", API_KEY + "x")], body=b"a"),
            build_request("POST", "/hmac", [("X-Signature", "0" * 64)], body=b"a"),
            self.sw_request("/sw", "m", ts, sw_v1(WH_KEY_OTHER, "m", ts, b"a"), b"a"),
        ]
        for raw in reqs:
            resp, _ = self.exchange(raw)
            self.assertIn(resp.status, (200, 401))
        self.gw.access_log_entries(len(reqs))
        time.sleep(0.2)
        with open(self.gw.access_log) as f:
            access = f.read()
        stderr = self.gw.stderr_text()
        for secret in SECRETS:
            with self.subTest(secret=secret[:6] + "..."):
                self.assertNotIn(secret, stderr, "secret in the daemon's stderr")
                self.assertNotIn(secret, access, "secret in the access log")
        # The failures are logged, with the route, and without the expected values.
        self.assertRegex(stderr, r"route=?\W?basic")


# --------------------------------------------------------------------------------------------
# Auth configuration errors (--check)
# --------------------------------------------------------------------------------------------

class AuthConfigCheckTests(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="dechunkd-authcheck-")
        cls.addClassCleanup(shutil.rmtree, cls.tmp, True)
        cls.ed = Ed25519Key(cls.tmp, "ok")
        cls.ec_key = os.path.join(cls.tmp, "ec.pub.pem")
        ec_private = os.path.join(cls.tmp, "ec.key")
        openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
                "-out", ec_private)
        openssl("pkey", "-in", ec_private, "-pubout", "-out", cls.ec_key)

    def check(self, route_extra: str, listen_extra: str = ""):
        path = os.path.join(self.tmp, "dechunkd.yaml")
        text = ("listen:\n"
                "  - address: \"127.0.0.1:0\"\n" + listen_extra +
                "storage:\n"
                f"  dir: \"{self.tmp}/storage\"\n"
                "routes:\n"
                "  - name: \"r\"\n"
                "    path: \"/r\"\n"
                "    mode: \"echo\"\n" + route_extra)
        with open(path, "w") as f:
            f.write(text)
        return path, run_cli("--check", "-c", path)

    def assert_ok(self, route_extra: str, listen_extra: str = ""):
        _, p = self.check(route_extra, listen_extra)
        self.assertEqual((p.returncode, p.stdout.strip()), (0, "ok"), p.stderr)

    def assert_error(self, route_extra: str, line: int, needle=None, listen_extra: str = ""):
        path, p = self.check(route_extra, listen_extra)
        self.assertEqual(p.returncode, 1, f"accepted:\n{route_extra}\n{p.stdout}{p.stderr}")
        self.assertRegex(p.stderr, rf"{re.escape(path)}:{line}:\d+: ", p.stderr)
        if needle:
            self.assertIn(needle, p.stderr)
        self.assertNotIn("S3CRETVALUE", p.stderr + p.stdout, "a secret in --check output")
        return p.stderr

    def test_valid_auth_configs(self):
        for auth in (
            "    auth: {type: basic, username: u, password: S3CRETVALUE}\n",
            "    auth: {type: bearer, token: S3CRETVALUE}\n",
            "    auth: {type: header, name: X-Key, value: S3CRETVALUE}\n",
            "    auth: {type: hmac, header: X-Sig, secret: S3CRETVALUE, algorithm: sha512, "
            "encoding: base64, prefix: \"sha512=\"}\n",
            f"    auth: {{type: standard_webhooks, secrets: [\"{WHSEC_A}\"], "
            f"public_keys: [\"{self.ed.public}\"], tolerance: 10m}}\n",
        ):
            with self.subTest(auth.split(",")[0]):
                self.assert_ok(auth)

    def test_invalid_auth_configs(self):
        cases = {
            "standard_webhooks without keys": "    auth: {type: standard_webhooks}\n",
            "secret without whsec_": "    auth: {type: standard_webhooks, secrets: "
                                     "[\"S3CRETVALUE\"]}\n",
            "whsec_ not base64": "    auth: {type: standard_webhooks, secrets: "
                                 "[\"whsec_S3CRETVALUE!!\"]}\n",
            "public key missing": "    auth: {type: standard_webhooks, public_keys: "
                                  "[\"/nonexistent/dechunkd/key.pem\"]}\n",
            "public key not ed25519": "    auth: {type: standard_webhooks, public_keys: "
                                      f"[\"{self.ec_key}\"]}}\n",
            "hmac md5": "    auth: {type: hmac, header: X-Sig, secret: S3CRETVALUE, "
                        "algorithm: md5}\n",
            "hmac base32": "    auth: {type: hmac, header: X-Sig, secret: S3CRETVALUE, "
                           "encoding: base32}\n",
            "token on basic": "    auth: {type: basic, username: u, password: S3CRETVALUE, "
                              "token: S3CRETVALUE}\n",
            "missing password": "    auth: {type: basic, username: u}\n",
            "unknown type": "    auth: {type: digest, secret: S3CRETVALUE}\n",
            "unset env": "    auth: {type: bearer, token: \"${env:DECHUNKD_TEST_SURELY_UNSET}\"}\n",
            "bad CIDR": "    allow_from: [\"10.0.0.0/33\"]\n",
            "not a CIDR": "    allow_from: [\"example.com\"]\n",
        }
        for name, extra in cases.items():
            with self.subTest(name):
                self.assert_error(extra, 9, "/nonexistent/dechunkd/key.pem"
                                  if name == "public key missing" else None)

    def test_invalid_trusted_proxies(self):
        self.assert_error("", 3, listen_extra="    trusted_proxies: [\"bogus\"]\n")


# --------------------------------------------------------------------------------------------
# trusted_proxies and X-Forwarded-For
# --------------------------------------------------------------------------------------------

class TrustedPeerTests(GatewayCase):
    """The peer (127.0.0.1) is a trusted proxy: its X-Forwarded-For names the client."""
    reject_settle = 0.1

    @classmethod
    def gateway(cls):
        return Daemon([
            {"name": "doc", "path": "/doc", "target": cls.rcv.url("/doc"),
             "allow_from": ["203.0.113.0/24"]},
            {"name": "any", "path": "/any", "target": cls.rcv.url("/any")},
        ], listen=[{"address": "127.0.0.1:0", "trusted_proxies": ["127.0.0.0/8"]}])

    def access_entry(self, request_id):
        def find():
            for e in self.gw.access_log_entries(1):
                if e.get("request_id") == request_id:
                    return e
            return None
        return wait_until(find, WAIT, f"access log entry {request_id}")

    def test_forwarded_client_allowed_and_logged(self):
        seen, resp = self.forward(build_request("POST", "/doc",
                                                [("X-Forwarded-For", "203.0.113.9")],
                                                chunks=[b"doc"]))
        self.assert_forwarded(seen, "/doc", b"doc")
        self.assertEqual(seen.header("X-Forwarded-For"), "203.0.113.9, 127.0.0.1")
        entry = self.access_entry(resp.header("X-Request-Id"))
        self.assertRegex(entry["remote"], r"^203\.0\.113\.9(:\d+)?$", entry)

    def test_rightmost_untrusted_entry_is_the_client(self):
        cases = [
            ("trusted hops skipped", [("X-Forwarded-For", "198.51.100.7, 203.0.113.9, "
                                                          "127.0.0.5")], 200),
            ("spoofed leftmost entry", [("X-Forwarded-For", "203.0.113.9, 198.51.100.7")], 403),
            ("two lines, client last", [("X-Forwarded-For", "198.51.100.7"),
                                        ("X-Forwarded-For", "203.0.113.20")], 200),
            ("two lines, spoof first", [("X-Forwarded-For", "203.0.113.20"),
                                        ("X-Forwarded-For", "198.51.100.7")], 403),
            ("no header: the peer", [], 403),
        ]
        for name, headers, status in cases:
            with self.subTest(name):
                self.rcv.reset()
                raw = build_request("POST", "/doc", headers, body=b"x")
                if status == 200:
                    self.forward(raw)
                else:
                    self.assert_rejected(raw, status, "forbidden", closed=True)

    def test_garbage_forwarded_for_is_not_a_client(self):
        for value in ("not-an-ip", "203.0.113.9:1234x", "", "203.0.113.999"):
            with self.subTest(value=value):
                self.rcv.reset()
                resp, _ = self.exchange(build_request("POST", "/doc",
                                                      [("X-Forwarded-For", value)], body=b"x"))
                self.assertIn(resp.status, (400, 403), str(resp))
                self.rcv.assert_nothing(settle=0.1)

    def test_peer_logged_without_forwarded_for(self):
        c = self.connect()
        resp, _ = self.exchange(build_request("POST", "/any", body=b"x"), client=c)
        self.assertEqual(resp.status, 200)
        entry = self.access_entry(resp.header("X-Request-Id"))
        self.assertEqual(entry["remote"], f"127.0.0.1:{c.local_port}")


class UntrustedPeerTests(GatewayCase):
    """trusted_proxies does not list the peer: its X-Forwarded-For is dropped."""
    reject_settle = 0.1

    @classmethod
    def gateway(cls):
        return Daemon([
            {"name": "doc", "path": "/doc", "target": cls.rcv.url("/doc"),
             "allow_from": ["203.0.113.0/24"]},
            {"name": "local", "path": "/local", "target": cls.rcv.url("/local"),
             "allow_from": ["127.0.0.0/8"]},
            {"name": "any", "path": "/any", "target": cls.rcv.url("/any")},
        ], listen=[{"address": "127.0.0.1:0", "trusted_proxies": ["10.0.0.0/8"]}])

    def test_spoofed_forwarded_for_not_believed(self):
        self.assert_rejected(build_request("POST", "/doc", [("X-Forwarded-For", "203.0.113.9")],
                                           body=b"x"), 403, "forbidden", closed=True)

    def test_received_forwarded_for_dropped(self):
        c = self.connect()
        for headers in ([("X-Forwarded-For", "203.0.113.9")],
                        [("X-Forwarded-For", "10.0.0.1, 203.0.113.9"),
                         ("X-Forwarded-For", "1.2.3.4")],
                        []):
            with self.subTest(headers):
                self.rcv.reset()
                resp, _ = self.exchange(build_request("POST", "/any", headers, body=b"x"),
                                        client=c)
                self.assertEqual(resp.status, 200, str(resp))
                seen = self.rcv.wait_requests(1)[0]
                self.assertEqual([v for n, v in seen.headers if n.lower() == "x-forwarded-for"],
                                 ["127.0.0.1"])
        entries = self.gw.access_log_entries(3)
        self.assertEqual({e["remote"] for e in entries[-3:]}, {f"127.0.0.1:{c.local_port}"})

    def test_peer_address_used_for_allow_from(self):
        seen, _ = self.forward(build_request("POST", "/local",
                                             [("X-Forwarded-For", "10.9.9.9")], body=b"ok"))
        self.assertEqual(seen.header("X-Forwarded-For"), "127.0.0.1")


if __name__ == "__main__":
    unittest.main()
