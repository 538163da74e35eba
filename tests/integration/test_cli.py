"""The command line (SPEC 2, 3, 11): --version, --help, --check with FILE:LINE:COL errors, exit
codes, start-up failures (missing file, port in use, storage.dir lock) and signals."""
import os
import shutil
import signal
import socket
import tempfile
import unittest

from harness import WAIT, Daemon, run_cli

TEMPLATE = """listen:
  - address: "127.0.0.1:0"
storage:
  dir: "{storage}"
routes:
  - name: a
    path: /a
    target: "http://127.0.0.1:1/x"
{extra}"""

# Lines appended at line 9 of TEMPLATE -> the (line, column) the error must point at, or None
# where the SPEC leaves the position open.
INVALID = {
    "unknown top-level key": ("bogus_top: 1", (9, 1)),
    "unknown route key": ("    trailer: merge", (9, 5)),
    "key of another mode (retry on proxy)": ("    retry: {max_attempts: 3}", (9, 5)),
    "duplicate key": ("    path: /dup", (9, 5)),
    "bad mode": ("    mode: bogus", (9, 11)),
    "size 0": ("    max_body_size: 0", (9, 20)),
    "size with a lower-case unit": ("    max_body_size: 10mib", (9, 20)),
    "negative size": ("    max_body_size: -5", (9, 20)),
    "size with a space": ("    max_body_size: 10 MiB", (9, 20)),
    "bad trailers mode": ("    trailers: keep", (9, 15)),
    "duration without unit": ("timeouts:\n  header: 10", (10, 11)),
    "duration with a bad unit": ("timeouts:\n  body: 5sec", (10, 9)),
    "bad size unit": ("limits:\n  memory_buffer: 1XB", (10, 18)),
    "bad log level": ("log:\n  level: loud", (10, 10)),
    "workers 0": ("workers: 0", (9, 10)),
    "bad route name": ("  - name: \"-bad\"\n    path: /b\n    mode: echo", (9, 11)),
    "target scheme": ("  - name: b\n    path: /b\n    target: \"ftp://127.0.0.1/x\"", (11, 13)),
    "proxy route without target": ("  - name: b\n    path: /b", (9, 5)),
    "unset env var": ("    request_headers:\n      set: {X-K: \"${env:DECHUNKD_IT_UNSET}\"}", None),
    "unreadable file": ("    request_headers:\n      set: {X-K: \"${file:/nonexistent/k}\"}", None),
    "two targets on a proxy route": ("  - name: b\n    path: /b\n    targets:\n"
                                     "      - url: \"http://127.0.0.1:1/a\"\n"
                                     "      - url: \"http://127.0.0.1:1/b\"", None),
    "duplicate route name": ("  - name: a\n    path: /b\n    mode: echo", None),
    "same path and overlapping methods": ("  - name: b\n    path: /a\n    mode: echo", None),
    "path and path_prefix": ("  - name: b\n    path: /b\n    path_prefix: /c\n    mode: echo",
                             None),
    "neither path nor path_prefix": ("  - name: b\n    mode: echo", None),
}

VALID = {
    "minimal": "",
    "access off unquoted": "log:\n  access: off",
    "sizes and durations": ("limits:\n  max_body_size: 512KiB\n  memory_buffer: 10MB\n"
                            "  max_header_size: 8192\n"
                            "timeouts:\n  header: 250ms\n  body: 2h\n  idle: 5m\n  drain: 1s"),
    "workers auto": "workers: auto",
    "literal ${ escape": "    request_headers:\n      set: {X-Lit: \"$${env:NOPE}\"}",
    "same path with disjoint methods": ("    methods: [POST]\n  - name: b\n    path: /a\n"
                                        "    methods: [GET]\n    mode: echo"),
    "echo and prefix routes": "  - name: b\n    path_prefix: /b/\n    mode: echo",
}


class CliTests(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="dechunkd-cli-")
        self.addCleanup(shutil.rmtree, self.tmp, True)

    def write(self, text: str, name: str = "dechunkd.yaml") -> str:
        path = os.path.join(self.tmp, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def config(self, extra: str = "") -> str:
        return TEMPLATE.format(storage=os.path.join(self.tmp, "storage"), extra=extra) + "\n"

    def check(self, text: str, *flags):
        self.write(text)
        return run_cli(*flags, "-c", "dechunkd.yaml", "--check", cwd=self.tmp)

    # -- informational flags and usage ------------------------------------------------------
    def test_version(self):
        r = run_cli("--version")
        self.assertEqual(r.returncode, 0)
        self.assertRegex(r.stdout, r"^dechunkd \d+\.\d+\.\d+\S*\n$")

    def test_help(self):
        r = run_cli("--help")
        self.assertEqual(r.returncode, 0)
        for word in ("--config", "--check", "--version", "--help"):
            self.assertIn(word, r.stdout)

    def test_bad_usage_exits_2(self):
        for args in (["--bogus"], ["-x"], ["-c"], ["--config"], ["--config="], ["stray-argument"],
                     ["--check", "extra"]):
            with self.subTest(args):
                r = run_cli(*args)
                self.assertEqual(r.returncode, 2, f"stdout {r.stdout!r} stderr {r.stderr!r}")
                self.assertTrue(r.stderr.strip(), "bad usage should say why on stderr")

    # -- --check ----------------------------------------------------------------------------
    def test_check_valid_configs(self):
        for name, extra in VALID.items():
            with self.subTest(name):
                r = self.check(self.config(extra))
                self.assertEqual((r.returncode, r.stdout), (0, "ok\n"), r.stderr)

    def test_check_config_equals_form(self):
        path = self.write(self.config())
        r = run_cli(f"--config={path}", "--check")
        self.assertEqual((r.returncode, r.stdout), (0, "ok\n"), r.stderr)

    def test_check_invalid_configs_point_at_line_and_column(self):
        for name, (extra, position) in INVALID.items():
            with self.subTest(name):
                r = self.check(self.config(extra))
                self.assertEqual(r.returncode, 1, f"accepted: {extra!r}")
                self.assertNotIn("ok", r.stdout)
                lines = r.stderr.strip().splitlines()
                self.assertTrue(lines, "no error printed")
                for line in lines:
                    self.assertRegex(line, r"^dechunkd\.yaml:\d+:\d+: \S")
                if position:
                    self.assertIn("dechunkd.yaml:%d:%d: " % position, r.stderr)

    def test_check_reports_every_error(self):
        text = self.config("    trailer: merge").replace(
            "routes:", "limits:\n  max_body_sise: 10MiB\n  max_headers: lots\nroutes:")
        r = self.check(text)
        self.assertEqual(r.returncode, 1)
        for position in ((6, 3), (7, 16), (12, 5)):
            self.assertIn("dechunkd.yaml:%d:%d: " % position, r.stderr)

    def test_check_names_the_path_as_given(self):
        path = self.write(self.config("bogus_top: 1"))
        r = run_cli("-c", path, "--check")
        self.assertEqual(r.returncode, 1)
        self.assertTrue(r.stderr.startswith(f"{path}:9:1: "), r.stderr)

    def test_check_does_not_bind(self):
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen(1)
            text = self.config().replace("127.0.0.1:0", "127.0.0.1:%d" % busy.getsockname()[1])
            r = self.check(text)
        self.assertEqual((r.returncode, r.stdout), (0, "ok\n"), r.stderr)

    def test_yaml_syntax_error(self):
        r = self.check(self.config("  - name: [unclosed"))
        self.assertEqual(r.returncode, 1)
        self.assertRegex(r.stderr, r"^dechunkd\.yaml:\d+:\d+: ")

    def test_missing_listen_and_routes(self):
        r = self.check(f'storage:\n  dir: "{self.tmp}/s"\n')
        self.assertEqual(r.returncode, 1)
        self.assertRegex(r.stderr, r"^dechunkd\.yaml:\d+:\d+: ")

    def test_missing_config_file_names_the_path(self):
        missing = os.path.join(self.tmp, "no", "such.yaml")
        for flags in ([], ["--check"]):
            with self.subTest(flags):
                r = run_cli("-c", missing, *flags)
                self.assertEqual(r.returncode, 1)
                self.assertIn(missing, r.stderr)

    def test_default_config_path(self):
        default = "/etc/dechunkd/dechunkd.yaml"
        if os.path.exists(default):
            self.skipTest(f"{default} exists on this machine")
        r = run_cli("--check")
        self.assertEqual(r.returncode, 1)
        self.assertIn(default, r.stderr)

    # -- start-up failures and signals ------------------------------------------------------
    def test_port_in_use_exits_1_with_a_clear_message(self):
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen(1)
            port = busy.getsockname()[1]
            d = Daemon(listen=[{"address": f"127.0.0.1:{port}"}],
                       routes=[{"name": "e", "path": "/e", "mode": "echo"}])
            self.addCleanup(d.close)
            d.start(wait_ready=False)
            self.assertEqual(d.wait_exit(WAIT), 1)
        log = d.stderr_text()
        self.assertIn(str(port), log)
        self.assertIn("in use", log.lower())

    def test_storage_dir_lock_names_the_holder(self):
        routes = [{"name": "e", "path": "/e", "mode": "echo"}]
        first = Daemon(routes)
        self.addCleanup(first.close)
        first.start()
        second = Daemon(routes, tmpdir=self.tmp, storage={"dir": first.storage_dir})
        self.addCleanup(second.close)
        second.start(wait_ready=False)
        self.assertEqual(second.wait_exit(WAIT), 1)
        self.assertRegex(second.stderr_text(), rf"\b{first.pid}\b")
        first.stop()

    def test_storage_dir_created(self):
        nested = os.path.join(self.tmp, "a", "b", "storage")
        d = Daemon([{"name": "e", "path": "/e", "mode": "echo"}], storage={"dir": nested})
        self.addCleanup(d.close)
        d.start()
        self.assertTrue(os.path.isdir(nested))
        d.stop()

    def test_signals_stop_gracefully(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            with self.subTest(sig.name):
                with Daemon([{"name": "e", "path": "/e", "mode": "echo"}]) as d:
                    d.stop(sig)


if __name__ == "__main__":
    unittest.main()
