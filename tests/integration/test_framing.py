"""Inbound framing and request-smuggling rules (SPEC 4 and 11).

Every rejected request must be answered by the gateway itself with the JSON error, the
connection must be closed afterwards, and the receiver must see nothing.
"""
import time
import unittest

from harness import WAIT, Daemon, GatewayCase, Reply, build_request, chunked_body

REQ = b"POST /f HTTP/1.1\r\nHost: gw\r\n"
CHUNKED = REQ + b"Transfer-Encoding: chunked\r\n\r\n"
BODY = b"5\r\nhello\r\n0\r\n\r\n"
HIDDEN = b"GET /f?smuggled HTTP/1.1\r\nHost: gw\r\n\r\n"


def te(value: bytes, body: bytes = BODY) -> bytes:
    return REQ + b"Transfer-Encoding: " + value + b"\r\n\r\n" + body


def cl(value: bytes, body: bytes = b"hello") -> bytes:
    return REQ + b"Content-Length: " + value + b"\r\n\r\n" + body


def field(line: bytes) -> bytes:
    """A request with one extra raw field line."""
    return REQ + line + b"\r\nContent-Length: 5\r\n\r\nhello"


def line(request_line: bytes) -> bytes:
    return request_line + b"\r\nHost: gw\r\nContent-Length: 5\r\n\r\nhello"


REJECTED = {
    # -- Content-Length and Transfer-Encoding together, repeated or malformed lengths -----------
    "CL then TE": REQ + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n" + BODY,
    "TE then CL": REQ + b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n" + BODY,
    "CL and TE gzip (400 before 501)": REQ + b"Content-Length: 5\r\nTransfer-Encoding: gzip, "
                                             b"chunked\r\n\r\nhello",
    "CL and TE identity": REQ + b"Content-Length: 5\r\nTransfer-Encoding: identity\r\n\r\nhello",
    "CL and empty TE": REQ + b"Content-Length: 5\r\nTransfer-Encoding: \r\n\r\nhello",
    "two CL differing": REQ + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    "two CL equal": REQ + b"Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
    "two CL differing in case": REQ + b"Content-Length: 5\r\ncontent-length: 5\r\n\r\nhello",
    "lower-case TE with CL": REQ + b"content-length: 5\r\ntransfer-encoding: chunked\r\n\r\n"
                             + BODY,
    "CL list equal": cl(b"5, 5"),
    "CL list differing": cl(b"5, 6"),
    "CL non-digit suffix": cl(b"5a"),
    "CL plus sign": cl(b"+5"),
    "CL negative": cl(b"-5"),
    "CL hex": cl(b"0x5"),
    "CL decimal point": cl(b"5.0"),
    "CL empty": cl(b""),
    "CL inner space": cl(b"5 5"),
    "CL non-ASCII digit": cl("\u0665".encode()),
    # -- Transfer-Encoding coding lists (SPEC 11 order) ----------------------------------------
    "TE leading empty element": te(b", chunked"),
    "TE trailing empty element": te(b"chunked,"),
    "TE empty value": te(b""),
    "TE empty line next to chunked": REQ + b"Transfer-Encoding: \r\nTransfer-Encoding: chunked"
                                           b"\r\n\r\n" + BODY,
    "TE chunked twice": te(b"chunked, chunked"),
    "TE chunked twice over two lines": REQ + b"Transfer-Encoding: chunked\r\n"
                                             b"Transfer-Encoding: chunked\r\n\r\n" + BODY,
    "TE chunked not last": te(b"chunked, gzip"),
    "TE chunked before identity": te(b"chunked, identity"),
    "TE in HTTP/1.0": b"POST /f HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n" + BODY,
    "TE in HTTP/1.0 with Host": b"POST /f HTTP/1.0\r\nHost: gw\r\nTransfer-Encoding: chunked"
                                b"\r\n\r\n" + BODY,
    "TE folded": REQ + b"Transfer-Encoding:\r\n chunked\r\n\r\n" + BODY,
    "TE folded list": REQ + b"Transfer-Encoding: gzip,\r\n chunked\r\n\r\n" + BODY,
    "TE space before colon with CL": REQ + b"Transfer-Encoding : chunked\r\nContent-Length: 5"
                                           b"\r\n\r\nhello",
    # -- field syntax ---------------------------------------------------------------------------
    "obs-fold": field(b"X-A: a\r\n b"),
    "obs-fold with tab": field(b"X-A: a\r\n\tb"),
    "whitespace before first field": b"POST /f HTTP/1.1\r\n Host: gw\r\nContent-Length: 0\r\n\r\n",
    "space before colon": field(b"X-A : b"),
    "tab before colon": field(b"X-A\t: b"),
    "space before colon in Host": b"POST /f HTTP/1.1\r\nHost : gw\r\nContent-Length: 0\r\n\r\n",
    "empty field name": field(b": value"),
    "no colon": field(b"X-A b"),
    "space inside name": field(b"X A: b"),
    "separator in name": field(b"X(A): b"),
    "NUL in value": field(b"X-A: a\x00b"),
    "NUL in name": field(b"X-\x00A: b"),
    "control byte in value": field(b"X-A: a\x01b"),
    "escape byte in value": field(b"X-A: a\x1bb"),
    "DEL in value": field(b"X-A: a\x7fb"),
    "bare CR in value": field(b"X-A: a\rb"),
    "bare CR before CRLF": field(b"X-A: a\r"),
    "bare LF after request line": b"POST /f HTTP/1.1\nHost: gw\r\nContent-Length: 0\r\n\r\n",
    "bare LF after field": REQ + b"X-A: b\nContent-Length: 0\r\n\r\n",
    "bare LF empty line": REQ + b"Content-Length: 0\r\n\n",
    "bare LF everywhere": b"POST /f HTTP/1.1\nHost: gw\nContent-Length: 0\n\n",
    # -- request line ---------------------------------------------------------------------------
    "two spaces after method": line(b"POST  /f HTTP/1.1"),
    "two spaces before version": line(b"POST /f  HTTP/1.1"),
    "tab as separator": line(b"POST\t/f HTTP/1.1"),
    "space after version": line(b"POST /f HTTP/1.1 "),
    "NUL in target": line(b"POST /f\x00 HTTP/1.1"),
    "control byte in target": line(b"POST /f\x01x HTTP/1.1"),
    "no version": line(b"POST /f"),
    "version HTTP/1": line(b"POST /f HTTP/1"),
    "version HTTP/1.1.1": line(b"POST /f HTTP/1.1.1"),
    "version HTTP/11": line(b"POST /f HTTP/11"),
    "version lower case": line(b"POST /f http/1.1"),
    "version HTTP/1.x": line(b"POST /f HTTP/1.x"),
    "version HTTP/10.0": line(b"POST /f HTTP/10.0"),
    "version with space": line(b"POST /f HTTP/ 1.1"),
    "target without leading slash": line(b"POST f HTTP/1.1"),
    "absolute-form": line(b"POST http://127.0.0.1:1/f HTTP/1.1"),
    "absolute-form https": line(b"POST https://gw/f HTTP/1.1"),
    # -- Host -----------------------------------------------------------------------------------
    "HTTP/1.1 without Host": b"POST /f HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
    "two Host fields": REQ + b"Host: gw\r\nContent-Length: 5\r\n\r\nhello",
    "two different Host fields": REQ + b"Host: other\r\nContent-Length: 5\r\n\r\nhello",
    # -- chunked body ---------------------------------------------------------------------------
    "chunk size not hex": CHUNKED + b"zz\r\nhello\r\n0\r\n\r\n",
    "chunk size negative": CHUNKED + b"-5\r\nhello\r\n0\r\n\r\n",
    "chunk size 0x prefix": CHUNKED + b"0x5\r\nhello\r\n0\r\n\r\n",
    "chunk size leading space": CHUNKED + b" 5\r\nhello\r\n0\r\n\r\n",
    "chunk size trailing space": CHUNKED + b"5 \r\nhello\r\n0\r\n\r\n",
    "chunk size empty": CHUNKED + b"\r\nhello\r\n0\r\n\r\n",
    "chunk size overflow": CHUNKED + b"1" + b"0" * 16 + b"\r\nhello\r\n0\r\n\r\n",
    "chunk data longer than size": CHUNKED + b"3\r\nhello\r\n0\r\n\r\n",
    "chunk data without CRLF": CHUNKED + b"5\r\nhelloXX0\r\n\r\n",
    "bare LF after chunk size": CHUNKED + b"5\nhello\r\n0\r\n\r\n",
    "bare LF after chunk data": CHUNKED + b"5\r\nhello\n0\r\n\r\n",
    "bare LF after last chunk": CHUNKED + b"5\r\nhello\r\n0\n\r\n",
    "bare LF ending trailers": CHUNKED + b"5\r\nhello\r\n0\r\n\n",
    "bare CR after chunk size": CHUNKED + b"5\rhello\r\n0\r\n\r\n",
    "several extension parameters": CHUNKED + b"5;a=b;c=d\r\nhello\r\n0\r\n\r\n",
    "whitespace before extension": CHUNKED + b"5 ;a=b\r\nhello\r\n0\r\n\r\n",
    "extension over 4 KiB": CHUNKED + b"5;" + b"a" * 4096 + b"\r\nhello\r\n0\r\n\r\n",
    "TE in trailers": CHUNKED + b"5\r\nhello\r\n0\r\nTransfer-Encoding: chunked\r\n\r\n",
    "obs-fold in trailers": CHUNKED + b"5\r\nhello\r\n0\r\nX-T: a\r\n b\r\n\r\n",
    "empty trailer name": CHUNKED + b"5\r\nhello\r\n0\r\n: v\r\n\r\n",
    "space before colon in trailer": CHUNKED + b"5\r\nhello\r\n0\r\nX-T : v\r\n\r\n",
    "NUL in trailer": CHUNKED + b"5\r\nhello\r\n0\r\nX-T: a\x00b\r\n\r\n",
    # -- the order of checks --------------------------------------------------------------------
    "CL+TE on an unknown path (400 before 404)": b"POST /nope HTTP/1.1\r\nHost: gw\r\n"
        b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n" + BODY,
}

NOT_IMPLEMENTED = {
    "TE gzip, chunked": te(b"gzip, chunked"),
    "TE identity": te(b"identity", b""),
    "TE gzip": te(b"gzip", b""),
    "TE deflate, chunked": te(b"deflate, chunked"),
    "TE identity, chunked": te(b"identity, chunked"),
    "TE mixed case Gzip, Chunked": te(b"Gzip, Chunked"),
    "TE gzip and chunked on two lines": REQ + b"Transfer-Encoding: gzip\r\n"
                                              b"Transfer-Encoding: chunked\r\n\r\n" + BODY,
    "CONNECT": b"CONNECT 127.0.0.1:80 HTTP/1.1\r\nHost: 127.0.0.1:80\r\n\r\n",
    "Upgrade": REQ + b"Connection: Upgrade\r\nUpgrade: websocket\r\nContent-Length: 0\r\n\r\n",
    "Upgrade among Connection tokens": REQ + b"Connection: keep-alive, upgrade\r\nUpgrade: h2c"
                                             b"\r\nContent-Length: 5\r\n\r\nhello",
    "TE gzip on an unknown path (501 before 404)": b"POST /nope HTTP/1.1\r\nHost: gw\r\n"
        b"Transfer-Encoding: gzip, chunked\r\n\r\n" + BODY,
}

VERSION_NOT_SUPPORTED = {
    "HTTP/0.9": line(b"POST /f HTTP/0.9"),
    "HTTP/1.2": line(b"POST /f HTTP/1.2"),
    "HTTP/2.0": line(b"POST /f HTTP/2.0"),
    "HTTP/3.0": line(b"POST /f HTTP/3.0"),
    "HTTP/2 connection preface": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    "HTTP/2.0 with CL and TE (505 before 400)": b"POST /f HTTP/2.0\r\nHost: gw\r\n"
        b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n" + BODY,
}

EXPECTATION_FAILED = {
    "Expect other": REQ + b"Expect: something\r\nContent-Length: 5\r\n\r\nhello",
    "Expect 100-continue and more": REQ + b"Expect: 100-continue, foo\r\nContent-Length: 5"
                                          b"\r\n\r\nhello",
}

# name -> (raw request, body the receiver must get)
ACCEPTED = {
    "TE Chunked": (te(b"Chunked"), b"hello"),
    "TE CHUNKED": (te(b"CHUNKED"), b"hello"),
    "TE with leading OWS": (te(b" \tchunked"), b"hello"),
    "TE with trailing OWS": (te(b"chunked\t "), b"hello"),
    "TE line after other fields": (REQ + b"X-A: 1\r\nTransfer-Encoding: chunked\r\nX-B: 2\r\n\r\n"
                                   + BODY, b"hello"),
    "CL with leading zeros": (cl(b"005"), b"hello"),
    "CL zero": (cl(b"0", b""), b""),
    "HTTP/1.0 with CL and no Host": (b"POST /f HTTP/1.0\r\nContent-Length: 5\r\n\r\nhello",
                                     b"hello"),
    "HTAB in a value": (field(b"X-A: a\tb"), b"hello"),
    "obs-text in a value": (field(b"X-A: caf\xe9"), b"hello"),
    "chunk extension name=value": (CHUNKED + b"5;foo=bar\r\nhello\r\n0\r\n\r\n", b"hello"),
    "chunk extension name only": (CHUNKED + b"5;foo\r\nhello\r\n0;last\r\n\r\n", b"hello"),
    "chunk extension of exactly 4 KiB": (CHUNKED + b"5;" + b"a" * 4095 + b"\r\nhello\r\n0\r\n\r\n",
                                         b"hello"),
    "bare Upgrade without Connection token": (field(b"Upgrade: h2c"), b"hello"),
    "trailer with a tab in its value": (CHUNKED + b"5\r\nhello\r\n0\r\nX-T: a\tb\r\n\r\n",
                                        b"hello"),
    "request hidden in a CL body": (cl(b"%d" % len(HIDDEN), HIDDEN), HIDDEN),
}


class FramingTests(GatewayCase):
    reject_settle = 0.05  # per case; tearDown and a final look use the receiver's full record

    @classmethod
    def gateway(cls):
        return Daemon([
            {"name": "f", "path_prefix": "/f", "target": cls.rcv.url("/f")},
            {"name": "small", "path": "/small", "target": cls.rcv.url("/small"),
             "max_body_size": 10},
        ])

    def check_rejected_table(self, table, status):
        for name, raw in table.items():
            with self.subTest(name):
                self.assert_rejected(raw, status)
        self.rcv.assert_nothing()

    def test_rejected_400(self):
        self.check_rejected_table(REJECTED, 400)

    def test_rejected_501(self):
        self.check_rejected_table(NOT_IMPLEMENTED, 501)

    def test_rejected_505(self):
        self.check_rejected_table(VERSION_NOT_SUPPORTED, 505)

    def test_rejected_417(self):
        self.check_rejected_table(EXPECTATION_FAILED, 417)

    def test_accepted_edge_cases(self):
        for name, (raw, body) in ACCEPTED.items():
            with self.subTest(name):
                self.rcv.reset()
                seen, _ = self.forward(raw)
                self.assert_forwarded(seen, "/f", body)
                self.assertIsNone(seen.header("Upgrade"))

    def test_obs_text_value_forwarded_byte_exact(self):
        seen, _ = self.forward(field(b"X-A: caf\xe9"))
        self.assertIn(b"\r\nX-A: caf\xe9\r\n", seen.raw_head)

    # -- reads split at every byte boundary ------------------------------------------------
    def test_valid_request_split_at_every_position(self):
        raw = (REQ + b"X-A: 1\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"3;ext=1\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\nX-T: t\r\n\r\n")
        c = self.connect()
        for cut in range(1, len(raw)):
            with self.subTest(cut=cut):
                self.rcv.reset()
                c.send(raw[:cut])
                time.sleep(0.002)
                resp, _ = self.exchange(raw[cut:], client=c)
                self.assertEqual(resp.status, 200, f"response: {resp}")
                self.assert_forwarded(self.rcv.wait_requests(1)[0], "/f", b"abc0123456789abcdef")

    def test_invalid_requests_split_at_every_position(self):
        for name in ("bare CR in value", "bare LF after chunk data", "CL then TE",
                     "obs-fold in trailers"):
            raw = REJECTED[name]
            for cut in range(1, len(raw)):
                with self.subTest(name, cut=cut):
                    c = self.connect()
                    c.send(raw[:cut])
                    time.sleep(0.002)
                    try:
                        c.send(raw[cut:])
                    except OSError:
                        pass  # already answered and closed: the answer is still readable
                    self.assert_error(c.final_response(), 400)
                    self.assertTrue(c.is_closed())
                    c.close()
        self.rcv.assert_nothing()

    # -- Expect: 100-continue ---------------------------------------------------------------
    def expect_continue(self, head: bytes, body: bytes, forwarded: bytes):
        c = self.connect()
        c.send(head)
        interim = c.response()
        self.assertEqual(interim.status, 100, f"expected 100 Continue, got {interim}")
        self.rcv.assert_nothing(settle=0.1)
        c.send(body)
        resp = c.final_response()
        self.assertEqual(resp.status, 200)
        self.assertEqual(resp.interim, [], "more than one 100 Continue")
        # Every response carries the request id, the interim one too (SPEC 4).
        self.assertEqual(interim.header("X-Request-Id"), resp.header("X-Request-Id"))
        self.assert_forwarded(self.rcv.wait_requests(1)[0], "/f", forwarded)

    def test_expect_100_continue_with_content_length(self):
        self.expect_continue(REQ + b"Expect: 100-continue\r\nContent-Length: 5\r\n\r\n",
                             b"hello", b"hello")

    def test_expect_100_continue_with_chunked_body(self):
        self.expect_continue(REQ + b"Expect: 100-Continue\r\nTransfer-Encoding: chunked\r\n\r\n",
                             BODY, b"hello")

    def test_expect_ignored_for_http10(self):
        resp, _ = self.exchange(b"POST /f HTTP/1.0\r\nExpect: 100-continue\r\n"
                                b"Content-Length: 5\r\n\r\nhello")
        self.assertEqual(resp.status, 200)
        self.assertEqual(resp.interim, [], "100 Continue sent to an HTTP/1.0 client")
        self.assert_forwarded(self.rcv.wait_requests(1)[0], "/f", b"hello")

    def test_expect_refusals_answer_the_final_error_at_once(self):
        cases = {
            "no route": (b"POST /nope HTTP/1.1\r\nHost: gw\r\n", 404),
            "declared length over the limit": (b"POST /small HTTP/1.1\r\nHost: gw\r\n", 413),
        }
        for name, (start, status) in cases.items():
            with self.subTest(name):
                c = self.connect()
                c.send(start + b"Expect: 100-continue\r\nContent-Length: 11\r\n\r\n")
                resp = c.response()  # the first answer must be the final one
                self.assert_error(resp, status)
                self.assertTrue(c.is_closed(), "a refused 100-continue must close")
        self.rcv.assert_nothing()

    def test_expect_checks_order(self):
        # 404 before 417; 417 before 413.
        self.assert_rejected(b"POST /nope HTTP/1.1\r\nHost: gw\r\nExpect: foo\r\n"
                             b"Content-Length: 5\r\n\r\nhello", 404)
        self.assert_rejected(b"POST /small HTTP/1.1\r\nHost: gw\r\nExpect: foo\r\n"
                             b"Content-Length: 50\r\n\r\n" + b"x" * 50, 417)

    # -- pipelining and smuggling -----------------------------------------------------------
    def test_pipelined_requests_answered_in_order(self):
        requests = [
            build_request("POST", "/f?n=1", chunks=[b"one"]),
            build_request("POST", "/f?n=2", body=b"two"),
            build_request("GET", "/f?n=3"),
            build_request("POST", "/f?n=4", chunks=[b"fo", b"ur"], trailers=[("X-T", "1")]),
        ]
        c = self.connect()
        c.send(b"".join(requests))
        bodies = [c.final_response(method).body for method in ("POST", "POST", "GET", "POST")]
        self.assertEqual(bodies, [b"POST /f?n=1", b"POST /f?n=2", b"GET /f?n=3", b"POST /f?n=4"])
        seen = self.rcv.wait_requests(4)
        self.assertEqual([s.body for s in seen], [b"one", b"two", b"", b"four"])
        self.assertFalse(c.is_closed(0.3))

    def test_pipelined_order_kept_when_first_is_slow(self):
        self.rcv.handler = lambda seen: Reply(body=seen.target.encode(),
                                              delay=0.5 if seen.target.endswith("slow") else 0)
        c = self.connect()
        c.send(build_request("POST", "/f/slow", body=b"a")
               + build_request("POST", "/f/fast", body=b"b"))
        self.assertEqual(c.final_response().body, b"/f/slow")
        self.assertEqual(c.final_response().body, b"/f/fast")

    def test_pipelined_bad_request_after_good_one(self):
        self.rcv.reply_with(Reply(body=b"first", delay=0.3))  # the 400 must not overtake it
        c = self.connect()
        c.send(build_request("POST", "/f?n=1", body=b"ok")
               + b"POST /f HTTP/1.1\r\nHost: gw\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"
               + build_request("POST", "/f?n=3", body=b"never"))
        self.assertEqual(c.final_response().body, b"first")
        self.assert_error(c.final_response(), 400)
        self.assertTrue(c.is_closed(WAIT))
        self.rcv.wait_requests(1)
        time.sleep(0.3)
        self.assertEqual([s.target for s in self.rcv.requests], ["/f?n=1"])

    def test_smuggled_request_in_chunked_body_is_not_a_request(self):
        resp, c = self.exchange(CHUNKED + chunked_body([HIDDEN[:10], HIDDEN[10:]]))
        self.assertEqual((resp.status, resp.body), (200, b"POST /f"))
        self.assertFalse(c.is_closed(0.3))
        seen = self.rcv.requests
        self.assertEqual([(s.method, s.target, s.body) for s in seen], [("POST", "/f", HIDDEN)])


if __name__ == "__main__":
    unittest.main()
