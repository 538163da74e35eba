"""Echo mode (SPEC 5, 11): 200 `message/http` whose body is exactly the request a target would
get, except that Host is the received one and the request line keeps the incoming target."""
import os
import shutil
import tempfile
import unittest

from harness import Daemon, GatewayCase, build_request, exact_request, pseudo_random

FORWARDED = [("X-Forwarded-Proto", "http"), ("X-Forwarded-Host", "gw.example")]


class EchoTests(GatewayCase):
    receiver_names = ()

    @classmethod
    def gateway(cls):
        secrets = tempfile.mkdtemp(prefix="dechunkd-echo-")
        cls.addClassCleanup(shutil.rmtree, secrets, True)
        with open(os.path.join(secrets, "key"), "w") as f:
            f.write("from-file\n")  # one trailing newline is trimmed
        return Daemon([
            {"name": "echo-expand", "path": "/echo-expand", "mode": "echo",
             "request_headers": {"set": {"X-Env": "${env:DECHUNKD_IT_KEY}",
                                         "X-File": "${file:%s/key}" % secrets,
                                         "X-Lit": "$${env:NOPE}"}}},
            {"name": "echo", "path": "/echo", "mode": "echo"},
            {"name": "dbg", "path_prefix": "/dbg/", "mode": "echo"},
            {"name": "echo-hdr", "path": "/echo-hdr", "mode": "echo",
             "request_headers": {"set": {"X-Api-Key": "k1"}, "remove": ["Cookie"]}},
            {"name": "echo-merge", "path": "/echo-merge", "mode": "echo", "trailers": "merge"},
        ], env={"DECHUNKD_IT_KEY": "from-env"})

    def echo(self, raw: bytes, method: str = "POST", client=None) -> tuple:
        """Sends raw; returns (echoed bytes, request id)."""
        resp, _ = self.exchange(raw, method, client=client)
        self.assertEqual(resp.status, 200, f"response: {resp}")
        self.assertEqual((resp.header("Content-Type") or "").split(";")[0].strip(),
                         "message/http")
        return resp.body, self.assert_request_id(resp)

    def expect(self, method, target, fields, body=b"", rid=None, generated=True):
        """The echo of a request with `fields` received (Host first), no XFF received."""
        tail = [("X-Request-Id", rid)] if generated else []
        length = [("Content-Length", str(len(body)))] if body or method in ("POST", "PUT",
                                                                            "PATCH") else []
        return exact_request(method, target, [*fields, ("X-Forwarded-For", "127.0.0.1"),
                                              *FORWARDED, *tail, *length], body)

    def test_chunked_post(self):
        got, rid = self.echo(build_request("POST", "/echo?x=1", [("X-A", "1")],
                                           chunks=[b"hello", b" ", b"world"]))
        received = [("Host", "gw.example"), ("X-A", "1")]
        self.assertEqual(got, self.expect("POST", "/echo?x=1", received, b"hello world", rid))

    def test_binary_content_length_body(self):
        body = pseudo_random(5000)
        got, rid = self.echo(build_request("PUT", "/echo", body=body))
        self.assertEqual(got, self.expect("PUT", "/echo", [("Host", "gw.example")], body, rid))

    def test_body_larger_than_memory_buffer(self):
        body = pseudo_random(3 << 20)
        got, rid = self.echo(build_request("POST", "/echo",
                                           chunks=[body[i:i + 100_000]
                                                   for i in range(0, len(body), 100_000)]))
        self.assertEqual(got, self.expect("POST", "/echo", [("Host", "gw.example")], body, rid))

    def test_requests_without_body(self):
        for method in ("GET", "DELETE", "POST", "PATCH"):
            with self.subTest(method):
                got, rid = self.echo(build_request(method, "/echo"), method)
                self.assertEqual(got, self.expect(method, "/echo", [("Host", "gw.example")],
                                                  b"", rid))

    def test_empty_chunked_body_gets_content_length_0(self):
        got, rid = self.echo(build_request("POST", "/echo", chunks=[]))
        self.assertEqual(got, self.expect("POST", "/echo", [("Host", "gw.example")], b"", rid))

    def test_prefix_route_keeps_incoming_target(self):
        got, rid = self.echo(build_request("POST", "/dbg/a//b?q=1&r", body=b"x"))
        self.assertTrue(got.startswith(b"POST /dbg/a//b?q=1&r HTTP/1.1\r\n"), got[:100])

    def test_senders_request_id_and_forwarded_for_kept_in_place(self):
        got, rid = self.echo(build_request("POST", "/echo", [
            ("X-Request-Id", "abc"), ("X-Forwarded-For", "10.0.0.1"), ("X-B", "2")], body=b"x"))
        self.assertEqual(rid, "abc")
        self.assertEqual(got, exact_request("POST", "/echo", [
            ("Host", "gw.example"), ("X-Request-Id", "abc"),
            ("X-Forwarded-For", "10.0.0.1, 127.0.0.1"), ("X-B", "2"), *FORWARDED,
            ("Content-Length", "1")], b"x"))

    def test_header_rules_and_hop_by_hop(self):
        got, rid = self.echo(build_request("POST", "/echo-hdr", [
            ("Cookie", "a=b"), ("Connection", "X-Hop"), ("X-Hop", "1"), ("Keep-Alive", "5"),
            ("X-Api-Key", "client"), ("X-C", "3"), ("Expect", "100-continue")], body=b"data"))
        self.assertEqual(got, exact_request("POST", "/echo-hdr", [
            ("Host", "gw.example"), ("X-C", "3"), ("X-Forwarded-For", "127.0.0.1"),
            ("X-Api-Key", "k1"), *FORWARDED, ("X-Request-Id", rid), ("Content-Length", "4")],
            b"data"))

    def test_merged_trailers(self):
        got, rid = self.echo(build_request("POST", "/echo-merge", chunks=[b"abc"],
                                           trailers=[("X-Sig", "s"), ("Authorization", "x")]))
        self.assertEqual(got, exact_request("POST", "/echo-merge", [
            ("Host", "gw.example"), ("X-Forwarded-For", "127.0.0.1"), ("X-Sig", "s"),
            *FORWARDED, ("X-Request-Id", rid), ("Content-Length", "3")], b"abc"))

    def test_config_expansion_in_set_values(self):
        got, rid = self.echo(build_request("POST", "/echo-expand", body=b"x"))
        for line in (b"X-Env: from-env", b"X-File: from-file", b"X-Lit: ${env:NOPE}"):
            self.assertIn(b"\r\n" + line + b"\r\n", got)

    def test_keep_alive_across_echoes(self):
        c = self.connect()
        for i in range(3):
            got, rid = self.echo(build_request("POST", "/echo", body=b"%d" % i), client=c)
            self.assertTrue(got.endswith(b"\r\n\r\n%d" % i))
        self.assertFalse(c.is_closed(0.3))

    def test_pipelined_echoes_larger_than_a_read_block_keep_their_boundaries(self):
        # An echo completes while its read is processed; the pipelined rest of that read must
        # still come before bytes read after it. Past one read block (128 KiB) of pipelined
        # bytes, a later request's body was once parsed as a new request (and could be forwarded).
        for count, size, chunked in ((2, 100_000, False), (3, 60_000, True), (13, 10_000, False),
                                     (200, 1_000, True)):
            with self.subTest(count=count, size=size, chunked=chunked):
                bodies = [pseudo_random(size, b"pipe%d" % i) for i in range(count)]
                # A request line inside a body must stay body bytes.
                bodies[-1] = bodies[-1][:size // 2] + b"\r\n\r\nPOST /dbg/SMUGGLED HTTP/1.1\r\n" \
                    b"Host: gw\r\nContent-Length: 0\r\n\r\n" + bodies[-1][size // 2:]
                raw = b"".join(build_request("POST", f"/echo?n={i}",
                                             **({"chunks": [b[:size // 3], b[size // 3:]]} if chunked
                                                else {"body": b}))
                               for i, b in enumerate(bodies))
                c = self.connect()
                c.send(raw)
                for i, b in enumerate(bodies):
                    resp = c.final_response()
                    self.assertEqual(resp.status, 200, f"request {i}: {resp}")
                    self.assertTrue(resp.body.startswith(b"POST /echo?n=%d HTTP/1.1\r\n" % i),
                                    resp.body[:80])
                    self.assertTrue(resp.body.endswith(b"\r\n\r\n" + b), f"request {i}: body differs")
                self.assertFalse(c.is_closed(0.3), "the connection must stay in sync and open")


if __name__ == "__main__":
    unittest.main()
