"""Route selection (SPEC 3 and 11): exact vs prefix, longest prefix, host routes, methods, 404
and 405. Each route's target path is its own name, so the receiver tells which route won."""
import unittest

from harness import Daemon, GatewayCase, build_request


def route(name, path=None, prefix=None, **extra):
    r = {"name": name, **({"path": path} if path else {"path_prefix": prefix}), **extra}
    return r


class RoutingTests(GatewayCase):
    @classmethod
    def gateway(cls):
        routes = [
            route("exact-a", "/r/a", methods=["POST"]),
            route("prefix-r", prefix="/r/", methods=["POST", "PUT"]),
            route("prefix-r-long", prefix="/r/long/"),
            route("hooks-noslash", prefix="/hooks"),
            route("host-a", "/h", host="a.example"),
            route("host-a-prefix", prefix="/hp/", host="a.example"),
            route("no-host", "/h"),
            route("prefix-hp", prefix="/hp/"),
            route("only-host", "/only", host="c.example"),
            route("m-get-post", "/m", methods=["GET", "POST"]),
            route("m-put-delete", "/m", methods=["PUT", "DELETE"]),
            route("get-only", "/g", methods=["GET"]),
        ]
        for r in routes:
            r["target"] = cls.rcv.url("/" + r["name"])
        return Daemon(routes)

    def routed(self, method, target, host="gw.example", body=b"x"):
        """The name of the route that carried the request."""
        self.rcv.reset()
        has_body = method in ("POST", "PUT", "PATCH")
        seen, _ = self.forward(build_request(method, target, host=host,
                                             body=body if has_body else None), method=method)
        return seen.target.split("/")[1].split("?")[0]

    def test_route_selection(self):
        cases = [
            ("POST", "/r/a", "gw.example", "exact-a"),
            ("POST", "/r/a?x=1", "gw.example", "exact-a"),
            ("POST", "/r/a/", "gw.example", "prefix-r"),
            ("PUT", "/r/b", "gw.example", "prefix-r"),
            ("POST", "/r/%61", "gw.example", "prefix-r"),     # never percent-decoded
            ("POST", "/r/long/x", "gw.example", "prefix-r-long"),
            ("GET", "/r/long/", "gw.example", "prefix-r-long"),
            ("POST", "/r/longer", "gw.example", "prefix-r"),
            ("POST", "/hooks", "gw.example", "hooks-noslash"),
            ("POST", "/hooks/", "gw.example", "hooks-noslash"),
            ("POST", "/hooks/x/y", "gw.example", "hooks-noslash"),
            ("POST", "/h", "a.example", "host-a"),
            ("POST", "/h", "A.Example:8080", "host-a"),       # case-insensitive, port ignored
            ("POST", "/h", "b.example", "no-host"),
            ("POST", "/h", "a.example.org", "no-host"),
            ("POST", "/hp/x", "a.example", "host-a-prefix"),
            ("POST", "/hp/x", "b.example", "prefix-hp"),
            ("POST", "/only", "c.example", "only-host"),
            ("GET", "/m", "gw.example", "m-get-post"),
            ("DELETE", "/m", "gw.example", "m-put-delete"),
            ("PUT", "/m", "gw.example", "m-put-delete"),
        ]
        for method, target, host, expected in cases:
            with self.subTest(f"{method} {target} Host: {host}"):
                self.assertEqual(self.routed(method, target, host), expected)

    def test_no_route_404(self):
        cases = [("/nope", "gw.example"), ("/R/a", "gw.example"), ("/hooksfoo", "gw.example"),
                 ("/r", "gw.example"), ("/only", "other.example"), ("/only", "c.example.org"),
                 ("/r%2Fa", "gw.example")]
        for target, host in cases:
            with self.subTest(f"{target} Host: {host}"):
                self.assert_rejected(build_request("POST", target, host=host, body=b"hello"),
                                     404, "no_route")

    def test_no_route_echoes_the_senders_request_id(self):
        # The body's request_id must equal the X-Request-Id header (checked by assert_error),
        # whatever bytes the sender's id holds; printable ASCII ids are kept as sent.
        for rid in ("rid-404", 'quoted "x" \\back\\slash', "obs-text caf\u00e9"):
            with self.subTest(rid):
                resp = self.assert_rejected(build_request("POST", "/nope", [("X-Request-Id", rid)],
                                                          body=b"hello"), 404)
                if rid.isascii():
                    self.assertEqual(resp.header("X-Request-Id"), rid)

    def test_method_not_allowed_405_with_allow_union(self):
        cases = [("PATCH", "/m", {"GET", "POST", "PUT", "DELETE"}),
                 ("DELETE", "/r/b", {"POST", "PUT"}),
                 ("POST", "/g", {"GET"})]
        for method, target, allowed in cases:
            with self.subTest(f"{method} {target}"):
                resp = self.assert_rejected(build_request(method, target, body=b"hello"), 405)
                self.assert_allow(resp, allowed)

    def test_head_is_not_implied_by_get(self):
        resp, _ = self.exchange(build_request("HEAD", "/g"), "HEAD")
        self.assertEqual(resp.status, 405)
        self.assertEqual(resp.body, b"")
        self.assert_request_id(resp)
        self.assert_allow(resp, {"GET"})
        self.rcv.assert_nothing()

    def assert_allow(self, resp, allowed):
        allow = [m.strip() for m in (resp.header("Allow") or "").split(",")]
        self.assertEqual(sorted(allow), sorted(allowed), f"Allow: {resp.header('Allow')}")


if __name__ == "__main__":
    unittest.main()
