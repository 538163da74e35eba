"""Proxy mode end to end (SPEC 4, 11): de-chunking, the exact outbound request, target mapping,
trailers, response relay, the upstream pool and its safe resend, and upstream failures."""
import gzip
import time
import unittest

from harness import (ANY, WAIT, Daemon, GatewayCase, PeerClosed, Reply, build_request,
                     deadline_in, exact_request, free_port, header_values, parse_fields,
                     pseudo_random, read_chunked, scaled, split_head)

MERGE_TRAILERS_NEVER = [
    ("Authorization", "Bearer t"), ("Content-Type", "text/evil"), ("Host", "evil.example"),
    ("X-Forwarded-For", "6.6.6.6"), ("X-Forwarded-Proto", "https"),
    ("X-Forwarded-Host", "evil.example"), ("X-Request-Id", "evil-id"), ("webhook-id", "w1"),
    ("Webhook-Signature", "v1,abc"), ("Cookie", "c=1"), ("Set-Cookie", "s=1"),
    ("Content-Encoding", "gzip"), ("Content-Range", "bytes 0-1/2"), ("Expect", "100-continue"),
    ("Max-Forwards", "3"), ("Proxy-Authorization", "Basic eA=="), ("Connection", "close"),
    ("Keep-Alive", "timeout=1"), ("TE", "trailers"), ("Trailer", "X-Sig"), ("Upgrade", "h2c"),
    ("Proxy-Connection", "close"),
]


class ProxyTests(GatewayCase):
    receiver_names = ("main", "drop", "reset", "garbage", "resend", "idle", "slow", "closing",
                      "reuse", "short-idle", "desync")

    @classmethod
    def gateway(cls):
        r = cls.r
        cls.dead_port = free_port()
        return Daemon([
            {"name": "exact", "path": "/hooks/exact",
             "target": r["main"].url("/in/exact?sig=abc%3D&api-version=1")},
            {"name": "plain", "path": "/plain", "target": r["main"].url("/plain")},
            {"name": "prefix", "path_prefix": "/p/", "target": r["main"].url("/base/")},
            {"name": "prefix-noslash", "path_prefix": "/q", "target": r["main"].url("/qbase")},
            {"name": "prefix-query", "path_prefix": "/pq/", "target": r["main"].url("/base?sig=1")},
            {"name": "headers", "path": "/hdr", "target": r["main"].url("/hdr"),
             "request_headers": {"set": {"X-Api-Key": "k1", "X-Second": "two"},
                                 "remove": ["Cookie", "X-Drop"]}},
            {"name": "merge", "path": "/merge", "target": r["main"].url("/merge"),
             "trailers": "merge"},
            {"name": "drop", "path": "/drop", "target": r["drop"].url("/drop")},
            {"name": "reset", "path": "/reset", "target": r["reset"].url("/reset")},
            {"name": "garbage", "path": "/garbage", "target": r["garbage"].url("/garbage")},
            {"name": "resend", "path": "/resend", "target": r["resend"].url("/resend")},
            {"name": "idle", "path": "/idle", "target": r["idle"].url("/idle")},
            {"name": "closing", "path": "/closing", "target": r["closing"].url("/closing")},
            {"name": "reuse", "path": "/reuse", "target": r["reuse"].url("/reuse")},
            {"name": "desync", "path": "/desync", "target": r["desync"].url("/desync")},
            {"name": "short-idle", "path": "/short-idle",
             "targets": [{"url": r["short-idle"].url("/si"), "idle_timeout": "300ms"}]},
            {"name": "target-rules", "path": "/trules",
             "request_headers": {"set": {"X-K": "route", "X-A": "a", "X-B": "b"}},
             "targets": [{"url": r["main"].url("/trules"),
                          "headers": {"set": {"X-K": "target"}, "remove": ["X-B", "X-Rm"]}}]},
            {"name": "preserve", "path": "/preserve",
             "targets": [{"url": r["main"].url("/preserve"), "preserve_host": True}]},
            {"name": "localhost", "path": "/localhost",
             "target": f"http://localhost:{r['main'].port}/lh"},
            {"name": "route-slow-target", "path": "/slow",
             "targets": [{"url": r["slow"].url("/slow/path?sig=SLOWSECRET"), "timeout": "1s"}]},
            {"name": "route-dead-target", "path": "/dead",
             "target": f"http://127.0.0.1:{cls.dead_port}/dead/path?sig=DEADSECRET"},
        ], timeouts={"upstream_idle": "1s"})

    # -- de-chunking ------------------------------------------------------------------------
    def test_dechunks_every_chunk_layout(self):
        text = b"hello world"
        layouts = {
            "one chunk": [text],
            "one-byte chunks": [bytes([b]) for b in text],
            "empty body": [],
            "1000 one-byte chunks": [b"x"] * 1000,
            "binary with CRLFs and a fake last chunk": [b"\r\n0\r\n\r\n", bytes(range(256))],
            "uneven sizes": [pseudo_random(n, bytes([n % 251])) for n in (1, 15, 16, 17, 4095,
                                                                       4096, 4097, 65536, 3)],
        }
        for name, chunks in layouts.items():
            with self.subTest(name):
                self.rcv.reset()
                body = b"".join(chunks)
                seen, _ = self.forward(build_request("POST", "/plain", chunks=chunks))
                self.assert_forwarded(seen, "/plain", body)

    def test_dechunks_hex_size_spellings(self):
        for size_line in (b"a", b"A", b"000a", b"0000000000000A"):
            with self.subTest(size_line):
                self.rcv.reset()
                raw = (b"POST /plain HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n"
                       + size_line + b"\r\n0123456789\r\n0\r\n\r\n")
                seen, _ = self.forward(raw)
                self.assert_forwarded(seen, "/plain", b"0123456789")

    def test_dechunks_request_sent_in_tiny_pieces(self):
        chunks = [b"abc", b"defgh", b"i" * 40]
        raw = build_request("POST", "/plain", [("X-A", "1")], chunks=chunks,
                            trailers=[("X-T", "1")])
        for piece in (1, 2, 7):
            with self.subTest(piece=piece):
                self.rcv.reset()
                seen, _ = self.forward(raw, piece=piece, delay=0.001)
                self.assert_forwarded(seen, "/plain", b"".join(chunks))

    def test_content_length_body_forwarded_identical(self):
        body = pseudo_random(100_000)
        seen, _ = self.forward(build_request("POST", "/plain", body=body))
        self.assert_forwarded(seen, "/plain", body)

    def test_unframed_request_content_length_by_method(self):
        for method, expected in (("POST", "0"), ("PUT", "0"), ("PATCH", "0"), ("GET", None),
                                 ("DELETE", None), ("OPTIONS", None)):
            with self.subTest(method):
                self.rcv.reset()
                seen, _ = self.forward(build_request(method, "/plain"), method=method)
                self.assertEqual((seen.method, seen.body_len), (method, 0))
                self.assertEqual(seen.header("Content-Length"), expected)

    # -- the outbound head ------------------------------------------------------------------
    def test_exact_outbound_head(self):
        received = [
            ("X-First", "a"), ("Host", "gw.example:8080"), ("X-Forwarded-For", "10.1.1.1"),
            ("Connection", "keep-alive, X-Hop"), ("X-Hop", "secret"), ("Keep-Alive", "timeout=5"),
            ("TE", "trailers"), ("Trailer", "X-T"), ("Proxy-Connection", "keep-alive"),
            ("Upgrade", "h2c"), ("x-mixed-Case", "Value with  inner  spaces"),
            ("X-Forwarded-For", "10.2.2.2"), ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-Host", "evil.example"), ("X-Dup", "1"), ("X-Dup", "2"),
        ]
        raw = build_request("POST", "/plain", received + [("X-Last", "z")], host=None,
                            chunks=[b"hello", b" world"], trailers=[("X-T", "t")])
        seen, resp = self.forward(raw)
        rid = resp.header("X-Request-Id")
        expected = [
            ("X-First", "a"), ("Host", self.rcv.authority),
            ("X-Forwarded-For", "10.1.1.1, 10.2.2.2, 127.0.0.1"),
            ("x-mixed-Case", "Value with  inner  spaces"), ("X-Dup", "1"), ("X-Dup", "2"),
            ("X-Last", "z"), ("X-Forwarded-Proto", "http"),
            ("X-Forwarded-Host", "gw.example:8080"), ("X-Request-Id", rid),
            ("Content-Length", "11"),
        ]
        self.assert_headers(seen.headers, expected)
        self.assertEqual(seen.raw_head, exact_request("POST", "/plain", expected))
        self.assertEqual(seen.body, b"hello world")

    def test_request_headers_set_and_remove(self):
        raw = build_request("POST", "/hdr", [
            ("X-Api-Key", "client-value"), ("Cookie", "a=b"), ("x-drop", "1"), ("X-Keep", "y"),
            ("x-second", "client"), ("X-API-KEY", "other")], body=b"data")
        seen, _ = self.forward(raw)
        self.assert_headers(seen.headers, [
            ("Host", self.rcv.authority), ("X-Keep", "y"), ("X-Forwarded-For", "127.0.0.1"),
            ("X-Api-Key", "k1"), ("X-Second", "two"), ("X-Forwarded-Proto", "http"),
            ("X-Forwarded-Host", "gw.example"), ("X-Request-Id", ANY), ("Content-Length", "4")])

    def test_http10_request_without_host(self):
        raw = build_request("POST", "/plain", [("X-A", "1")], host=None, body=b"abc",
                            version="HTTP/1.0")
        seen, resp = self.forward(raw)
        fields = [f for f in seen.headers if f[0].lower() != "x-forwarded-host"]
        self.assert_headers(fields, [
            ("X-A", "1"), ("Host", self.rcv.authority), ("X-Forwarded-For", "127.0.0.1"),
            ("X-Forwarded-Proto", "http"), ("X-Request-Id", resp.header("X-Request-Id")),
            ("Content-Length", "3")])

    def test_http10_response_closes_without_keep_alive(self):
        resp, c = self.exchange(build_request("POST", "/plain", body=b"abc", version="HTTP/1.0"))
        self.assertEqual(resp.status, 200)
        self.assertEqual(resp.body, b"POST /plain")
        self.assertTrue(c.is_closed(), "HTTP/1.0 without keep-alive must be closed")

    def test_http10_keep_alive(self):
        raw = build_request("POST", "/plain", [("Connection", "keep-alive")], body=b"abc",
                            version="HTTP/1.0")
        resp, c = self.exchange(raw)
        self.assertEqual(resp.status, 200)
        self.assertEqual((resp.header("Connection") or "").lower(), "keep-alive")
        self.assertIsNotNone(resp.header("Content-Length"), "HTTP/1.0 answer needs a length")
        resp2, _ = self.exchange(raw, client=c)
        self.assertEqual(resp2.status, 200)

    def test_request_id_kept_and_echoed(self):
        seen, resp = self.forward(build_request("POST", "/plain", [("X-Request-Id", "abc-123")],
                                                body=b"x"))
        self.assertEqual(resp.header("X-Request-Id"), "abc-123")
        self.assertEqual(seen.header("X-Request-Id"), "abc-123")
        self.assertEqual(seen.names().index("X-Request-Id"), 1, "kept at its received position")

    def test_request_id_generated_unique_and_echoed(self):
        ids = set()
        for _ in range(3):
            self.rcv.reset()
            seen, resp = self.forward(build_request("POST", "/plain", body=b"x"))
            self.assertEqual(seen.header("X-Request-Id"), resp.header("X-Request-Id"))
            ids.add(resp.header("X-Request-Id"))
        self.assertEqual(len(ids), 3, f"request ids repeat: {ids}")

    def test_request_target_mapping(self):
        cases = [
            ("/hooks/exact", "/in/exact?sig=abc%3D&api-version=1"),
            ("/hooks/exact?x=1&y=%20", "/in/exact?sig=abc%3D&api-version=1&x=1&y=%20"),
            ("/hooks/exact?", "/in/exact?sig=abc%3D&api-version=1"),
            ("/plain?a=b", "/plain?a=b"),
            ("/plain?", "/plain"),
            ("/p/x", "/base/x"),
            ("/p/", "/base/"),
            ("/p//x", "/base/x"),
            ("/p/a/b//c", "/base/a/b//c"),
            ("/p/a%2Fb?z=1", "/base/a%2Fb?z=1"),
            ("/q", "/qbase"),
            ("/q/", "/qbase"),
            ("/q/x/y", "/qbase/x/y"),
            ("/pq/x?y=2", "/base/x?sig=1&y=2"),
            ("/pq/", "/base?sig=1"),
        ]
        for request_target, expected in cases:
            with self.subTest(request_target):
                self.rcv.reset()
                seen, _ = self.forward(build_request("POST", request_target, body=b"b"))
                self.assertEqual(seen.target, expected)

    # -- trailers ---------------------------------------------------------------------------
    def test_trailers_dropped_by_default(self):
        raw = build_request("POST", "/plain", chunks=[b"abc"],
                            trailers=[("X-Sig", "abc"), ("X-Other", "2")])
        seen, _ = self.forward(raw)
        self.assertIsNone(seen.header("X-Sig"))
        self.assertIsNone(seen.header("X-Other"))
        self.assert_forwarded(seen, "/plain", b"abc")

    def test_trailers_merged_except_never_merged_fields(self):
        trailers = [("X-Sig", "abc")] + MERGE_TRAILERS_NEVER + [("X-Other", "2")]
        raw = build_request("POST", "/merge", [("X-A", "1")], chunks=[b"abc"], trailers=trailers)
        seen, resp = self.forward(raw)
        self.assertNotEqual(resp.header("X-Request-Id"), "evil-id")
        self.assert_headers(seen.headers, [
            ("Host", self.rcv.authority), ("X-A", "1"), ("X-Forwarded-For", "127.0.0.1"),
            ("X-Sig", "abc"), ("X-Other", "2"), ("X-Forwarded-Proto", "http"),
            ("X-Forwarded-Host", "gw.example"), ("X-Request-Id", resp.header("X-Request-Id")),
            ("Content-Length", "3")])

    def test_trailer_connection_close_does_not_close(self):
        raw = build_request("POST", "/merge", chunks=[b"abc"], trailers=[("Connection", "close")])
        resp, c = self.exchange(raw)
        self.assertEqual(resp.status, 200)
        self.assertIsNone(resp.header("Connection"))
        self.assertFalse(c.is_closed(0.5), "keep-alive is decided from the head alone")

    def test_trailer_content_length_not_merged(self):
        raw = build_request("POST", "/merge", chunks=[b"abc"], trailers=[("Content-Length", "9")])
        seen, _ = self.forward(raw)
        self.assert_forwarded(seen, "/merge", b"abc")

    # -- response relay ---------------------------------------------------------------------
    def test_response_relay(self):
        big = pseudo_random(3 << 20)
        cases = {
            "length, custom reason": Reply(201, "Created Fine", [("X-Resp", "1")], b"created"),
            "chunked": Reply(200, "OK", [("X-Resp", "2")], b"chunky body " * 50,
                             framing="chunked"),
            "large chunked": Reply(200, "OK", [], big, framing="chunked", chunk_size=65536),
            "close-delimited": Reply(200, "OK", [("X-Resp", "3")], b"until close",
                                     framing="close"),
            "empty": Reply(200, "OK", [], b""),
            "400": Reply(400, "Bad Request", [("Content-Type", "text/plain")], b"no"),
            "404 no reason": Reply(404, "", [], b"missing"),
            "500": Reply(500, "Internal Server Error", [], b"boom"),
            "503 with Retry-After": Reply(503, "Service Unavailable", [("Retry-After", "7")],
                                          b"busy"),
        }
        for name, reply in cases.items():
            with self.subTest(name):
                self.rcv.reset()
                self.rcv.reply_with(reply)
                _, resp = self.forward(build_request("POST", "/plain", body=b"x"),
                                       status=reply.status)
                self.assertEqual(resp.reason, reply.reason)
                self.assertEqual(resp.body, reply.body)
                for n, v in reply.headers:
                    self.assertEqual(resp.header_all(n), [v])

    def test_response_hop_by_hop_removed_and_order_kept(self):
        self.rcv.reply_with(Reply(200, "OK", [
            ("Set-Cookie", "a=1"), ("Connection", "X-Secret-Hop"), ("X-Secret-Hop", "1"),
            ("Keep-Alive", "timeout=5"), ("Proxy-Connection", "keep-alive"),
            ("X-Kept", "yes"), ("Set-Cookie", "b=2")], b"body"))
        _, resp = self.forward(build_request("POST", "/plain", body=b"x"))
        names = [n.lower() for n, _ in resp.headers]
        for hop in ("x-secret-hop", "keep-alive", "proxy-connection"):
            self.assertNotIn(hop, names)
        self.assertEqual(resp.header_all("Set-Cookie"), ["a=1", "b=2"])
        self.assertLess(names.index("set-cookie"), names.index("x-kept"))
        self.assertEqual(resp.header("X-Kept"), "yes")

    def test_head_and_bodiless_statuses(self):
        cases = [("HEAD", Reply(200, "OK", [("Content-Length", "100")], framing="none")),
                 ("POST", Reply(204, "No Content", [("X-A", "1")], framing="none")),
                 ("GET", Reply(304, "Not Modified", [("ETag", '"e"')], framing="none"))]
        for method, reply in cases:
            with self.subTest(status=reply.status, method=method):
                self.rcv.reset()
                self.rcv.reply_with(reply, Reply(body=b"next"))
                c = self.connect()
                raw = build_request(method, "/plain", body=b"x" if method == "POST" else None)
                resp, _ = self.exchange(raw, method, client=c)
                self.assertEqual((resp.status, resp.body), (reply.status, b""))
                # The connection carries no stray body bytes: the next answer parses.
                resp2, _ = self.exchange(build_request("GET", "/plain"), "GET", client=c)
                self.assertEqual((resp2.status, resp2.body), (200, b"next"))
                seen = self.rcv.wait_requests(2)
                self.assertEqual(seen[0].method, method)

    def test_gateway_error_answers_to_head_carry_no_body(self):
        # RFC 9110 9.3.2: a HEAD answer has no content, also when the gateway answers an error
        # itself. Content-Length keeps the length a GET would get; the connection stays usable.
        self.rcv.reply_with(Reply(body=b"next"))
        c = self.connect()
        resp, _ = self.exchange(build_request("HEAD", "/dead"), "HEAD", client=c)
        self.assertEqual((resp.status, resp.body), (502, b""))
        self.assertGreater(int(resp.header("Content-Length")), 0)
        self.assertIsNone(resp.header("Connection"))
        resp2, _ = self.exchange(build_request("GET", "/plain"), "GET", client=c)
        self.assertEqual((resp2.status, resp2.body), (200, b"next"))
        # An error decided from the head closes, with no body either.
        c = self.connect()
        resp, _ = self.exchange(build_request("HEAD", "/no-such-route"), "HEAD", client=c)
        self.assertEqual((resp.status, resp.body), (404, b""))
        self.assertTrue(c.is_closed())

    def test_interim_responses_not_relayed(self):
        self.rcv.reply_with(Reply(200, "OK", [], b"final", interim=[
            b"HTTP/1.1 100 Continue\r\n\r\n",
            b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"]))
        c = self.connect()
        c.send(build_request("POST", "/plain", body=b"x"))
        resp = c.response()
        self.assertEqual((resp.status, resp.body), (200, b"final"))

    # -- the upstream pool ------------------------------------------------------------------
    def test_upstream_connection_reused(self):
        for i in range(3):
            resp, _ = self.exchange(build_request("POST", "/reuse", [("Connection", "close")],
                                                  body=b"%d" % i))
            self.assertEqual(resp.status, 200)
        seen = self.r["reuse"].wait_requests(3)
        self.assertEqual([(s.conn, s.index) for s in seen], [(1, 0), (1, 1), (1, 2)])

    def test_pooled_connection_closed_after_target_idle_timeout(self):
        rcv = self.r["short-idle"]
        started = time.monotonic()
        self.forward(build_request("POST", "/short-idle", body=b"x"), receiver=rcv)
        rcv.wait_closed_by_peer(1)
        self.assertGreater(time.monotonic() - started, 0.25, "closed before idle_timeout")

    def test_target_header_rules_apply_after_route_rules(self):
        seen, _ = self.forward(build_request("POST", "/trules", [
            ("X-Rm", "1"), ("X-Keep", "k"), ("X-K", "client")], body=b"x"))
        self.assert_headers(seen.headers, [
            ("Host", self.rcv.authority), ("X-Keep", "k"), ("X-Forwarded-For", "127.0.0.1"),
            ("X-A", "a"), ("X-K", "target"), ("X-Forwarded-Proto", "http"),
            ("X-Forwarded-Host", "gw.example"), ("X-Request-Id", ANY), ("Content-Length", "1")])

    def test_preserve_host(self):
        seen, _ = self.forward(build_request("POST", "/preserve", host="gw.example:8080",
                                             body=b"x"))
        self.assertEqual(seen.header("Host"), "gw.example:8080")
        self.assertEqual(seen.header("X-Forwarded-Host"), "gw.example:8080")

    def test_target_by_host_name(self):
        seen, _ = self.forward(build_request("POST", "/localhost", body=b"x"))
        self.assertEqual((seen.target, seen.header("Host")),
                         ("/lh", f"localhost:{self.rcv.port}"))

    def test_get_with_chunked_body_gets_content_length(self):
        seen, _ = self.forward(build_request("GET", "/plain", chunks=[b"q", b"uery"]),
                               method="GET")
        self.assert_forwarded(seen, "/plain", b"query", method="GET")

    def test_target_connection_close_is_honoured(self):
        rcv = self.r["closing"]
        rcv.reply_with(Reply(headers=[("Connection", "close")], body=b"bye", action="close"))
        for _ in range(3):
            resp, _ = self.exchange(build_request("POST", "/closing", body=b"x"))
            self.assertEqual((resp.status, resp.body), (200, b"bye"))
        self.assertEqual([s.conn for s in rcv.wait_requests(3)], [1, 2, 3])

    def test_resend_once_when_reused_connection_closes_before_answer(self):
        rcv = self.r["resend"]
        rcv.reply_with(Reply(body=b"first"), Reply(action="drop"), Reply(body=b"resent"))
        self.assertEqual(self.exchange(build_request("POST", "/resend", body=b"1"))[0].body,
                         b"first")
        resp, _ = self.exchange(build_request("POST", "/resend", body=b"two"))
        self.assertEqual((resp.status, resp.body), (200, b"resent"))
        first, dropped, resent = rcv.wait_requests(3)
        self.assertEqual((dropped.conn, dropped.index), (first.conn, 1))
        self.assertNotEqual(resent.conn, first.conn)
        self.assertEqual((dropped.body, resent.body), (b"two", b"two"))
        self.assertEqual(len(rcv.requests), 3, "resent more than once")

    def test_pooled_connection_closed_by_target_while_idle(self):
        rcv = self.r["idle"]
        rcv.reply_with(Reply(body=b"a", idle_close=0.2), Reply(body=b"b"))
        self.assertEqual(self.exchange(build_request("POST", "/idle", body=b"1"))[0].body, b"a")
        rcv.wait_requests(1)
        time.sleep(0.6)  # the target closed the pooled connection 0.2 s after answering
        resp, _ = self.exchange(build_request("POST", "/idle", body=b"2"))
        self.assertEqual((resp.status, resp.body), (200, b"b"))
        seen = rcv.wait_requests(2)
        self.assertEqual(len(seen), 2)
        self.assertNotEqual(seen[0].conn, seen[1].conn)

    # -- upstream failures ------------------------------------------------------------------
    def test_fresh_connection_closed_without_answer_is_502_not_resent(self):
        rcv = self.r["drop"]
        rcv.reply_with(Reply(action="drop"))
        resp, c = self.exchange(build_request("POST", "/drop", body=b"x"))
        self.assert_error(resp, 502, "bad_gateway")
        self.assertEqual(len(rcv.wait_requests(1)), 1)
        self.assertFalse(c.is_closed(0.5), "the request was read completely: keep the connection")
        time.sleep(0.2)
        self.assertEqual(len(rcv.requests), 1, "a request on a fresh connection was resent")

    def test_target_refused_is_502_and_logged_without_query(self):
        mark = self.gw.log_mark()
        resp, c = self.exchange(build_request("POST", "/dead", body=b"x"))
        self.assert_error(resp, 502, "bad_gateway")
        self.assertFalse(c.is_closed(0.5), "502 keeps the connection open")
        self.assert_error_logged(mark, "route-dead-target",
                                 f"127.0.0.1:{self.dead_port}/dead/path", "DEADSECRET")

    def test_target_timeout_is_504_and_logged_without_query(self):
        self.r["slow"].reply_with(Reply(body=b"late", delay=1 + scaled(1.5)))
        mark = self.gw.log_mark()
        c = self.connect()
        c.send(build_request("POST", "/slow", body=b"x"))
        resp = c.final_response(timeout=1 + scaled(1.2))  # the target timeout is 1 s
        self.assert_error(resp, 504, "gateway_timeout")
        self.assertEqual(resp.json()["message"], "the target did not answer in time: "
                                                 "no response head within 1000 ms (the target's timeout)")
        self.assertFalse(c.is_closed(0.3), "504 keeps the connection open")
        self.assert_error_logged(mark, "route-slow-target",
                                 f"{self.r['slow'].authority}/slow/path", "SLOWSECRET")

    def assert_error_logged(self, mark, route, target, secret):
        self.gw.wait_log(f"{route}.*{target}|{target}.*{route}", start=mark)
        self.assertNotIn(secret, self.gw.stderr_text(), "target query string logged")

    def test_reset_before_any_response_byte_is_502(self):
        self.r["reset"].reply_with(Reply(action="reset", cut_at=0))
        resp, _ = self.exchange(build_request("POST", "/reset", body=b"x"))
        self.assert_error(resp, 502, "bad_gateway")

    def test_truncated_target_body_is_not_relayed_as_complete(self):
        head_len = len(Reply(body=b"y" * 5000).encode()) - 5000
        cases = {"reset": Reply(body=b"y" * 5000, action="reset", cut_at=head_len + 1000),
                 "close": Reply(body=b"y" * 5000, action="cut", cut_at=head_len + 1000),
                 "stall past upstream_idle": Reply(body=b"y" * 5000, action="stall",
                                                   cut_at=head_len + 1000, stall=1 + scaled(2.5)),
                 "chunked, close before the last chunk": Reply(
                     body=b"y" * 5000, framing="chunked", chunk_size=1000, action="cut",
                     cut_at=head_len + 3000)}
        for name, reply in cases.items():
            with self.subTest(name):
                self.r["reset"].reset()
                self.r["reset"].reply_with(reply)
                c = self.connect()
                c.send(build_request("POST", "/reset", body=b"x"))
                try:
                    resp = c.final_response(timeout=1 + scaled(1.5))  # upstream_idle is 1 s
                except PeerClosed:
                    continue  # the sender sees a truncated answer: correct
                if resp.status == 502:
                    self.assert_error(resp, 502, "bad_gateway")
                    continue
                self.fail(f"a truncated target body was relayed as complete: {resp.status}, "
                          f"{len(resp.body)} body bytes")
        # The log does not claim a 502 the client never got.
        self.gw.wait_log(r"route=reset .*: the target (closed|reset|stopped).*\(the response to the client is cut off\)")

    def test_http10_client_never_gets_chunked(self):
        self.rcv.reply_with(Reply(body=b"chunked upstream body", framing="chunked"))
        resp, c = self.exchange(build_request("POST", "/plain", body=b"x", version="HTTP/1.0"))
        self.assertEqual((resp.status, resp.body), (200, b"chunked upstream body"))
        self.assertFalse(resp.chunked, "chunked framing sent to an HTTP/1.0 client")
        if resp.header("Content-Length") is None:
            self.assertTrue(c.stream.eof, "no length: the body must end with the close")

    def test_client_connection_close(self):
        resp, c = self.exchange(build_request("POST", "/plain", [("Connection", "close")],
                                              body=b"x"))
        self.assertEqual(resp.status, 200)
        self.assertEqual((resp.header("Connection") or "").lower(), "close")
        self.assertTrue(c.is_closed())

    def test_connection_listing_gateway_fields(self):
        raw = build_request("POST", "/plain", [
            ("Connection", "Host, X-Forwarded-For, X-Request-Id"), ("X-Forwarded-For", "10.9.9.9"),
            ("X-Request-Id", "listed")], body=b"x")
        seen, resp = self.forward(raw)
        self.assertEqual(seen.header("Host"), self.rcv.authority)
        self.assertEqual(seen.header("X-Forwarded-For"), "127.0.0.1")
        self.assertEqual(seen.header("X-Request-Id"), resp.header("X-Request-Id"),
                         "the target must get the id the sender is told")

    def test_many_pipelined_requests(self):
        count = 100
        c = self.connect()
        c.send(b"".join(build_request("POST", f"/plain?n={i}", chunks=[b"%d" % i])
                        for i in range(count)))
        bodies = [c.final_response().body for _ in range(count)]
        self.assertEqual(bodies, [f"POST /plain?n={i}".encode() for i in range(count)])
        self.assertEqual([s.body for s in self.rcv.wait_requests(count)],
                         [b"%d" % i for i in range(count)])

    def test_client_gone_mid_upload_forwards_nothing(self):
        c = self.connect()
        c.send(build_request("POST", "/plain", chunks=[b"a" * 1000, b"b" * 1000])[:-20])
        c.close()
        self.rcv.assert_nothing(settle=0.5)
        seen, _ = self.forward(build_request("POST", "/plain", body=b"after"))
        self.assertEqual(seen.body, b"after")

    def test_client_gone_while_target_answers(self):
        self.rcv.reply_with(Reply(body=b"late", delay=0.5), Reply(body=b"next"))
        c = self.connect()
        c.send(build_request("POST", "/plain", body=b"x"))
        self.rcv.wait_requests(1)
        c.close()
        time.sleep(0.8)
        resp, _ = self.exchange(build_request("POST", "/plain", body=b"y"))
        self.assertEqual((resp.status, resp.body), (200, b"next"))

    def test_extra_bytes_from_target_never_reach_another_request(self):
        smuggled = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nevil!!"
        cases = {
            "a second response after the first": (
                "POST", Reply(raw=b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok" + smuggled)),
            "a body on a HEAD answer": (
                "HEAD", Reply(raw=b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok" + smuggled)),
            "a body on a 204": (
                "POST", Reply(raw=b"HTTP/1.1 204 No Content\r\n\r\n" + smuggled)),
        }
        for name, (method, reply) in cases.items():
            with self.subTest(name):
                rcv = self.r["desync"]
                rcv.reset()
                rcv.reply_with(reply, Reply(body=b"good"))
                body = b"x" if method == "POST" else None
                first, c = self.exchange(build_request(method, "/desync", body=body), method)
                self.assertIn(first.status, (200, 204, 502))
                for client in (c, self.connect()):  # the same client, then another one
                    resp, _ = self.exchange(build_request("POST", "/desync", body=b"y"),
                                            client=client)
                    self.assertEqual((resp.status, resp.body), (200, b"good"),
                                     "bytes the target sent after its answer were relayed")
                    rcv.reply_with(Reply(body=b"good"))

    def test_malformed_target_response_is_502(self):
        cases = {
            "not http": b"NOT HTTP AT ALL\r\n\r\n",
            "bad status": b"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n",
            "bare LF": b"HTTP/1.1 200 OK\nContent-Length: 0\n\n",
            "two lengths": (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"
                            b"hello"),
            "length and chunked": (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n"
                                   b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
            "space in name": b"HTTP/1.1 200 OK\r\nX-Bad Header: 1\r\nContent-Length: 0\r\n\r\n",
            "non-digit length": b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\n",
        }
        for name, raw in cases.items():
            with self.subTest(name):
                self.r["garbage"].reset()
                self.r["garbage"].reply_with(Reply(raw=raw, action="close"))
                resp, _ = self.exchange(build_request("POST", "/garbage", body=b"x"))
                self.assert_error(resp, 502, "bad_gateway")

    def test_response_transfer_codings_other_than_chunked_stay_on_the_body(self):
        # The relay re-chunks a streamed body; a coding like gzip stays applied to the bytes, so
        # it stays in Transfer-Encoding before the relay's chunked (RFC 9112 6.1). Dropping it
        # would hand the client gzip bytes labelled as plain.
        coded = gzip.compress(b"the target's answer")
        chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(coded), coded)
        cases = {
            "gzip, chunked": b"Transfer-Encoding: gzip, chunked\r\n\r\n" + chunked,
            "gzip on its own line, then chunked": (b"Transfer-Encoding: gzip\r\n"
                                                   b"Transfer-Encoding: chunked\r\n\r\n" + chunked),
            "gzip, close-delimited": b"Transfer-Encoding: gzip\r\n\r\n" + coded,
        }
        for name, rest in cases.items():
            with self.subTest(name):
                self.r["garbage"].reset()
                self.r["garbage"].reply_with(Reply(raw=b"HTTP/1.1 200 OK\r\nX-A: 1\r\n" + rest,
                                                   action="close"))
                c = self.connect()
                c.send(build_request("POST", "/garbage", body=b"x"))
                deadline = deadline_in(WAIT)
                start, lines = split_head(c.stream.read_until(b"\r\n\r\n", deadline))
                self.assertTrue(start.startswith(b"HTTP/1.1 200 "), start)
                fields = parse_fields(lines)
                self.assertEqual(header_values(fields, "Transfer-Encoding"), ["gzip, chunked"])
                self.assertEqual(header_values(fields, "Content-Length"), [])
                body, _ = read_chunked(c.stream, deadline)
                self.assertEqual(gzip.decompress(body), b"the target's answer")

    def test_response_transfer_coding_an_http10_client_cannot_receive_is_502(self):
        self.r["garbage"].reply_with(Reply(raw=b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n"
                                           + gzip.compress(b"x"), action="close"))
        resp, _ = self.exchange(b"POST /garbage HTTP/1.0\r\nContent-Length: 1\r\n\r\nx")
        self.assert_error(resp, 502, "bad_gateway")
        self.assertIn('transfer coding \\"gzip\\"', resp.body.decode())

    def test_response_chunked_before_another_coding_is_502(self):
        self.r["garbage"].reply_with(Reply(raw=b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n"
                                           b"3\r\nabc\r\n0\r\n\r\n", action="close"))
        resp, _ = self.exchange(build_request("POST", "/garbage", body=b"x"))
        self.assert_error(resp, 502, "bad_gateway")
        self.assertIn("chunked before another coding", resp.body.decode())


if __name__ == "__main__":
    unittest.main()
