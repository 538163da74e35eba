"""A real client: Debian's curl sending chunked uploads, as a webhook sender would."""
import os
import shutil
import subprocess
import tempfile
import unittest

from harness import WAIT, Daemon, GatewayCase, pseudo_random

CURL = shutil.which("curl")


@unittest.skipUnless(CURL, "curl is not installed")
class CurlTests(GatewayCase):
    @classmethod
    def gateway(cls):
        cls.files = tempfile.mkdtemp(prefix="dechunkd-curl-")
        cls.addClassCleanup(shutil.rmtree, cls.files, True)
        return Daemon([
            {"name": "echo", "path": "/echo", "mode": "echo"},
            {"name": "p", "path": "/p", "target": cls.rcv.url("/in?sig=1")},
        ])

    def payload(self, size: int) -> tuple:
        data = pseudo_random(size, b"curl%d" % size)
        path = os.path.join(self.files, f"body-{size}")
        with open(path, "wb") as f:
            f.write(data)
        return data, path

    def curl(self, url_path: str, *args: str, stdin=None) -> tuple:
        """Runs curl; returns (status, response headers text, body bytes)."""
        head = os.path.join(self.files, "head")
        body = os.path.join(self.files, "out")
        r = subprocess.run([CURL, "-sS", "--http1.1", "--max-time", str(int(WAIT * 4)),
                            "-D", head, "-o", body, "-w", "%{http_code}", *args,
                            f"http://127.0.0.1:{self.gw.port}{url_path}"],
                           capture_output=True, stdin=stdin, timeout=WAIT * 5)
        self.assertEqual(r.returncode, 0, r.stderr)
        with open(head, "rb") as h, open(body, "rb") as b:
            return int(r.stdout), h.read().decode("latin-1"), b.read()

    def chunked_post(self, url_path: str, path: str, *extra: str) -> tuple:
        return self.curl(url_path, "-H", "Transfer-Encoding: chunked",
                         "-H", "Content-Type: application/json", *extra,
                         "--data-binary", f"@{path}")

    def test_chunked_post_to_echo(self):
        for size in (100, 100_000):
            with self.subTest(size=size):
                data, path = self.payload(size)
                status, head, body = self.chunked_post("/echo", path)
                self.assertEqual(status, 200)
                self.assertIn("content-type: message/http", head.lower())
                echoed_head, _, echoed_body = body.partition(b"\r\n\r\n")
                self.assertEqual(echoed_body, data)
                self.assertTrue(echoed_head.startswith(b"POST /echo HTTP/1.1\r\n"))
                self.assertIn(b"\r\nContent-Length: %d" % size, echoed_head)
                self.assertIn(b"\r\nContent-Type: application/json", echoed_head)
                for gone in (b"transfer-encoding", b"expect:"):
                    self.assertNotIn(gone, echoed_head.lower())

    def test_chunked_post_to_proxy(self):
        for size in (1, 100_000, 3 << 20):
            with self.subTest(size=size):
                self.rcv.reset()
                data, path = self.payload(size)
                status, _, body = self.chunked_post("/p", path)
                self.assertEqual((status, body), (200, b"POST /in?sig=1"))
                seen = self.rcv.wait_requests(1)[0]
                self.assert_forwarded(seen, "/in?sig=1", data)
                self.assertEqual(seen.header("Content-Type"), "application/json")

    def test_streamed_put_from_stdin(self):
        data, path = self.payload(250_000)
        with open(path, "rb") as f:
            status, _, body = self.curl("/p", "-T", "-", stdin=f)
        self.assertEqual((status, body), (200, b"PUT /in?sig=1"))
        self.assert_forwarded(self.rcv.wait_requests(1)[0], "/in?sig=1", data, method="PUT")


if __name__ == "__main__":
    unittest.main()
