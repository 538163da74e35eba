#!/usr/bin/env python3
"""Operating dechunkd: the admin endpoint (health, readiness, Prometheus metrics, token),
systemd readiness over NOTIFY_SOCKET, journal level prefixes, access-log reopen on SIGUSR1, and
reloads that switch listeners without dropping connections (SPEC 2, 8, 11; issue 3)."""
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import unittest

from harness import (parse_metrics, BIN, WAIT, Client, Daemon, Reply, StrictReceiver, build_request, free_port,
                     send_request, wait_until)

TOKEN = "s3cr3t-admin-token"


def admin_get(port: int, path: str, method: str = "GET", headers=()):
    raw = build_request(method, path, list(headers))
    return send_request(port, raw, method=method)


class AdminCase(unittest.TestCase):
    def start(self, routes=None, token=True, **sections) -> Daemon:
        self.admin_port = free_port()
        admin = {"address": f"127.0.0.1:{self.admin_port}"}
        d = Daemon(routes if routes is not None else [{"name": "e", "path_prefix": "/e", "mode": "echo"}],
                   **sections)
        if token:
            path = os.path.join(d.tmp, "admin.token")
            with open(path, "w") as f:
                f.write(TOKEN + "\n")  # one trailing newline is trimmed
            admin["token_file"] = path
        d.config["admin"] = admin
        d.config_text = d.config_with()
        self.addCleanup(d.close)
        d.start()
        d.wait_log(r"admin endpoint listening on 127\.0\.0\.1:%d" % self.admin_port)
        return d

    def metrics(self) -> tuple[str, dict]:
        resp = admin_get(self.admin_port, "/metrics")
        self.assertEqual(resp.status, 200)
        self.assertTrue(resp.header("Content-Type").startswith("text/plain; version=0.0.4"))
        text = resp.body.decode()
        return text, parse_metrics(text)


class AdminEndpointTests(AdminCase):
    def test_health_readiness_and_errors(self):
        self.start()
        for path, body in (("/healthz", b"ok"), ("/readyz", b"ready")):
            resp = admin_get(self.admin_port, path)
            self.assertEqual((resp.status, resp.body), (200, body), path)
            self.assertTrue(resp.header("Content-Type").startswith("text/plain"))
        resp = admin_get(self.admin_port, "/nope")
        self.assertEqual(resp.status, 404)
        self.assertEqual(resp.json()["error"], "not_found")
        self.assertTrue(resp.json()["request_id"])
        self.assertEqual(resp.header("X-Request-Id"), resp.json()["request_id"])
        resp = admin_get(self.admin_port, "/healthz", method="POST")
        self.assertEqual(resp.status, 405)
        self.assertEqual(resp.header("Allow"), "GET, HEAD")

    def test_head_is_get_without_the_body(self):
        # Monitors probe health with HEAD; a HEAD answer never has content (RFC 9110 9.3.2).
        self.start()
        for path in ("/healthz", "/readyz", "/metrics", "/queue", "/nope"):
            with self.subTest(path):
                got = admin_get(self.admin_port, path)
                resp = admin_get(self.admin_port, path, method="HEAD")
                self.assertEqual((resp.status, resp.body), (got.status, b""))
                self.assertEqual(resp.header("Content-Type"), got.header("Content-Type"))
                if path != "/metrics":  # the metrics text changes between the two requests
                    self.assertEqual(resp.header("Content-Length"), got.header("Content-Length"))
        resp = admin_get(self.admin_port, "/reload", method="HEAD")
        self.assertEqual((resp.status, resp.body, resp.header("Allow")), (405, b"", "POST"))

    def test_every_answer_carries_the_request_id(self):
        self.start()
        resp = admin_get(self.admin_port, "/nope", headers=[("X-Request-Id", "probe-7")])
        self.assertEqual((resp.header("X-Request-Id"), resp.json()["request_id"]), ("probe-7", "probe-7"))
        resp = admin_get(self.admin_port, "/healthz", headers=[("X-Request-Id", "bad\x7fid")])
        self.assertRegex(resp.header("X-Request-Id"), r"^[0-9a-f]{32}$")
        resp = admin_get(self.admin_port, "/routes/none/pause", "POST",
                         [("Authorization", "Bearer " + TOKEN), ("X-Request-Id", "probe-8")])
        self.assertEqual(resp.header("X-Request-Id"), "probe-8")

    def test_mutating_endpoint_needs_the_token(self):
        d = self.start()
        resp = admin_get(self.admin_port, "/reload", method="POST")
        self.assertEqual(resp.status, 401)
        self.assertEqual(resp.json()["error"], "unauthorized")
        self.assertTrue(resp.header("WWW-Authenticate").startswith("Bearer"))
        wrong = admin_get(self.admin_port, "/reload", "POST", [("Authorization", "Bearer " + TOKEN + "x")])
        self.assertEqual(wrong.status, 401)
        ok = admin_get(self.admin_port, "/reload", "POST", [("Authorization", "Bearer " + TOKEN)])
        self.assertEqual((ok.status, ok.json()), (200, {"reloaded": True}))
        # As for routes: the scheme in any case, then one or more spaces (RFC 9110 11.4).
        ok = admin_get(self.admin_port, "/reload", "POST", [("Authorization", "bearer   " + TOKEN)])
        self.assertEqual(ok.status, 200)

        d.rewrite_config(d.config_text + "bogus_key: 1\n")
        bad = admin_get(self.admin_port, "/reload", "POST", [("Authorization", "Bearer " + TOKEN)])
        self.assertEqual(bad.status, 400)
        d.wait_log(re.escape(d.config_path) + r":\d+:\d+: .*bogus_key")
        _, m = self.metrics()
        self.assertEqual(m['dechunkd_config_reloads_total{result="success"}'], 2)
        self.assertEqual(m['dechunkd_config_reloads_total{result="failure"}'], 1)
        self.assertEqual(TOKEN in d.stderr_text(), False, "the token must never be logged")

    def test_metrics_are_valid_and_exact_with_two_workers(self):
        d = self.start(workers=2)
        per_thread, threads = 40, 6
        errors = []

        def client(n):
            try:
                c = Client(d.port)
                for i in range(per_thread):
                    c.send(build_request("POST", f"/e/{n}/{i}", chunks=[b"ab", b"cde"]))
                    if c.final_response().status != 200:
                        errors.append("status")
                c.close()
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(repr(e))

        workers = [threading.Thread(target=client, args=(n,)) for n in range(threads)]
        for t in workers:
            t.start()
        for t in workers:
            t.join(timeout=60)
        self.assertEqual(errors, [])
        for i in range(7):
            self.assertEqual(send_request(d.port, build_request("GET", f"/missing/{i}")).status, 404)

        text, m = self.metrics()
        total = per_thread * threads
        self.assertEqual(m['dechunkd_requests_total{route="e",mode="echo",status="200"}'], total)
        self.assertEqual(m['dechunkd_requests_total{route="_unmatched",mode="none",status="404"}'], 7)
        self.assertEqual(m['dechunkd_received_bytes_total{route="e"}'], 5 * total)
        self.assertEqual(m['dechunkd_chunked_requests_total{route="e"}'], total)
        self.assertEqual(m['dechunkd_request_duration_seconds_count{route="e"}'], total)
        self.assertEqual(m['dechunkd_request_duration_seconds_bucket{route="e",le="+Inf"}'], total)
        self.assertEqual(m['dechunkd_requests_in_flight'], 0)
        self.assertIn('dechunkd_build_info{version="', text)
        self.assertIn("dechunkd_connections_active ", text)
        self.assert_promtool_accepts(text)

    def test_upstream_metrics_name_the_target_without_query(self):
        rcv = StrictReceiver()
        self.addCleanup(rcv.close)
        d = self.start([{"name": "p", "path": "/p", "target": rcv.url("/in?sig=SECRET")}])
        self.assertEqual(send_request(d.port, build_request("POST", "/p", body=b"x")).status, 200)
        text, m = self.metrics()
        key = 'dechunkd_upstream_duration_seconds_count{route="p",target="%s"}' % rcv.url("/in")
        self.assertEqual(m.get(key), 1, text)
        self.assertNotIn("SECRET", text)
        self.assert_promtool_accepts(text)

    def test_readyz_is_503_while_draining(self):
        rcv = StrictReceiver()
        self.addCleanup(rcv.close)
        rcv.reply_with(Reply(delay=1.5))
        d = self.start([{"name": "p", "path": "/p", "target": rcv.url("/")}])
        slow = Client(d.port)
        self.addCleanup(slow.close)
        slow.send(build_request("POST", "/p", body=b"x"))
        rcv.wait_requests(1)
        d.send_signal(signal.SIGTERM)
        d.wait_log("draining")
        resp = admin_get(self.admin_port, "/readyz")
        self.assertEqual((resp.status, resp.body), (503, b"not ready: draining"))
        self.assertEqual(slow.final_response().status, 200)
        self.assertEqual(d.wait_exit(), 0)

    def test_readyz_is_503_while_storage_dir_is_full(self):
        # Writable but full is not writable either: the next spilled body would fail. Needs a
        # small filesystem of its own: a tmpfs, where the test may mount one (root).
        mnt = tempfile.mkdtemp(prefix="dechunkd-full-")
        self.addCleanup(os.rmdir, mnt)
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", mnt],
                          capture_output=True).returncode != 0:
            self.skipTest("cannot mount a tmpfs here")
        self.addCleanup(subprocess.run, ["umount", mnt], check=True)  # after the daemon is gone
        self.start(storage={"dir": os.path.join(mnt, "state")})
        self.assertEqual(admin_get(self.admin_port, "/readyz").status, 200)
        fill = os.path.join(mnt, "fill")
        fd = os.open(fill, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            while True:
                os.write(fd, b"\0" * 65536)
        except OSError:
            pass  # ENOSPC: the filesystem is full
        finally:
            os.close(fd)
        resp = admin_get(self.admin_port, "/readyz")
        self.assertEqual(resp.status, 503)
        self.assertRegex(resp.body.decode(), r"^not ready: storage\.dir .*/state is full \(\d+ bytes free, "
                                             r"at least 1048576 needed\)$")
        os.unlink(fill)
        self.assertEqual(admin_get(self.admin_port, "/readyz").status, 200)

    def assert_promtool_accepts(self, text: str):
        promtool = shutil.which("promtool")
        if not promtool:
            self.fail("promtool not found: install Debian's prometheus package (tests/deps.sh does)")
        r = subprocess.run([promtool, "check", "metrics"], input=text.encode(), capture_output=True,
                           timeout=30)
        # promtool exits 1 for lint warnings too; only a parse error is "error while linting".
        self.assertNotIn(b"error while linting", r.stdout + r.stderr, (r.stdout + r.stderr).decode())
        lint = [l for l in (r.stdout + r.stderr).decode().splitlines() if l.strip()]
        self.assertEqual(lint, [], "promtool lint findings")


class LifecycleOpsTests(unittest.TestCase):
    def test_systemd_notify_ready_reloading_stopping(self):
        tmp = tempfile.mkdtemp(prefix="dechunkd-notify-")
        self.addCleanup(shutil.rmtree, tmp, True)
        path = os.path.join(tmp, "notify.sock")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.addCleanup(sock.close)
        sock.bind(path)
        sock.settimeout(WAIT)
        d = Daemon([{"name": "e", "path": "/e", "mode": "echo"}], env={"NOTIFY_SOCKET": path})
        self.addCleanup(d.close)
        d.start()
        self.assertIn(b"READY=1", sock.recv(4096))
        d.send_signal(signal.SIGHUP)
        self.assertIn(b"RELOADING=1", sock.recv(4096))
        self.assertIn(b"READY=1", sock.recv(4096))
        d.send_signal(signal.SIGTERM)
        self.assertIn(b"STOPPING=1", sock.recv(4096))
        self.assertEqual(d.wait_exit(), 0)

    def test_journal_stream_gets_level_prefixes(self):
        tmp = tempfile.mkdtemp(prefix="dechunkd-journal-")
        self.addCleanup(shutil.rmtree, tmp, True)
        cfg = os.path.join(tmp, "c.yaml")
        with open(cfg, "w") as f:
            f.write('listen: [{address: "127.0.0.1:0"}]\nworkers: 1\n'
                    f'storage: {{dir: "{tmp}/s"}}\nlog: {{access: "off"}}\n'
                    'routes: [{name: e, path: /e, mode: echo}]\n')
        r, w = os.pipe()
        st = os.fstat(w)
        env = dict(os.environ, JOURNAL_STREAM=f"{st.st_dev}:{st.st_ino}")
        proc = subprocess.Popen([BIN, "-c", cfg], stderr=w, stdout=subprocess.DEVNULL,
                                stdin=subprocess.DEVNULL, env=env)
        os.close(w)
        self.addCleanup(lambda: proc.poll() is None and proc.kill())
        reader = os.fdopen(r, "rb")
        self.addCleanup(reader.close)
        line = reader.readline().decode()
        self.assertRegex(line, r"^<6>listening on 127\.0\.0\.1:\d+\n$")
        proc.send_signal(signal.SIGTERM)
        self.assertEqual(proc.wait(timeout=WAIT), 0)

    def test_sigusr1_reopens_the_access_log(self):
        d = Daemon([{"name": "e", "path": "/e", "mode": "echo"}])
        self.addCleanup(d.close)
        d.start()
        self.assertEqual(send_request(d.port, build_request("POST", "/e", body=b"1")).status, 200)
        d.access_log_entries(1)
        rotated = d.access_log + ".1"
        os.rename(d.access_log, rotated)
        d.send_signal(signal.SIGUSR1)
        d.wait_log("access log reopened")
        self.assertEqual(send_request(d.port, build_request("POST", "/e", body=b"2")).status, 200)
        entries = d.access_log_entries(1)
        self.assertEqual(len(entries), 1, "the new file holds only the new line")
        with open(rotated) as f:
            self.assertEqual(len(f.read().splitlines()), 1)

    def test_reload_switches_listeners_without_dropping_connections(self):
        rcv = StrictReceiver()
        self.addCleanup(rcv.close)
        rcv.reply_with(Reply(delay=1.0), Reply())
        d = Daemon([{"name": "p", "path": "/p", "target": rcv.url("/")}], workers=2)
        self.addCleanup(d.close)
        d.start()
        old_port = d.port
        keep = Client(old_port)
        self.addCleanup(keep.close)
        keep.send(build_request("POST", "/p", body=b"in flight"))
        rcv.wait_requests(1)

        new_port = free_port()
        d.rewrite_config(d.config_with(listen=[{"address": f"127.0.0.1:{new_port}"}]))
        d.send_signal(signal.SIGHUP)
        d.wait_log(r"listening on 127\.0\.0\.1:%d" % new_port)
        d.wait_log("configuration reloaded")
        # The in-flight request finishes, and its keep-alive connection still serves.
        self.assertEqual(keep.final_response().status, 200)
        keep.send(build_request("POST", "/p", body=b"again"))
        self.assertEqual(keep.final_response().status, 200)
        self.assertEqual(send_request(new_port, build_request("POST", "/p", body=b"new")).status, 200)

        def refused():
            try:
                socket.create_connection(("127.0.0.1", old_port), timeout=0.5).close()
                return False
            except OSError:
                return True
        wait_until(refused, WAIT, "the removed listener to close")


if __name__ == "__main__":
    unittest.main()
