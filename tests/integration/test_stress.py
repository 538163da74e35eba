"""Connection life cycles under load: misbehaving targets and clients at once, and a SIGTERM in
the middle of traffic. The gateway must answer every request it read with the right outcome,
never mix answers between connections, never crash, and exit 0."""
import random
import signal
import threading
import time
import unittest
from urllib.parse import parse_qs, urlsplit

from harness import (SCALE, WAIT, Client, Daemon, GatewayCase, PeerClosed, Reply, StrictReceiver,
                     build_request, send_request)

BODY = b"z" * 3000
# Target behaviour -> what the sender must see: a status, or None for "a truncated answer or 502".
TARGET_BEHAVIOURS = {
    "ok": (Reply(body=BODY), 200),
    "slow": (Reply(body=BODY, delay=0.05), 200),
    "chunked": (Reply(body=BODY, framing="chunked", chunk_size=999), 200),
    "close-delimited": (Reply(body=BODY, framing="close"), 200),
    "drop": (Reply(action="drop"), 502),
    "reset": (Reply(action="reset", cut_at=0), 502),
    "garbage": (Reply(raw=b"HTTP/1.1 ???\r\n\r\n", action="close"), 502),
    "cut": (Reply(body=BODY, action="cut", cut_at=1000), None),
}
CLIENT_BEHAVIOURS = ["normal"] * 6 + ["gone after sending", "gone mid-body"]


def by_behaviour(seen):
    return TARGET_BEHAVIOURS[parse_qs(urlsplit(seen.target).query)["b"][0]][0]


class StressTests(GatewayCase):
    @classmethod
    def gateway(cls):
        return Daemon([{"name": "chaos", "path": "/chaos", "target": cls.rcv.url("/chaos")}],
                      workers=2, timeouts={"upstream_idle": "1s", "upstream_response": "5s"})

    def setUp(self):
        super().setUp()
        self.rcv.handler = by_behaviour

    def client_loop(self, seed: int, rounds: int, problems: list):
        try:
            self.client_rounds(seed, rounds, problems)
        except Exception as e:  # a hang or a protocol error: report it, do not lose it
            problems.append(f"client {seed}: {e!r}")

    def client_rounds(self, seed: int, rounds: int, problems: list):
        rng = random.Random(seed)
        c = None
        for i in range(rounds):
            behaviour = rng.choice(sorted(TARGET_BEHAVIOURS))
            client = rng.choice(CLIENT_BEHAVIOURS)
            raw = build_request("POST", f"/chaos?b={behaviour}&c={seed}&i={i}",
                                chunks=[b"a" * 500, b"b" * 500])
            c = c or Client(self.gw.port, timeout=10 * SCALE)
            if client != "normal":
                c.send(raw if client == "gone after sending" else raw[:-300])
                c.close()
                c = None
                continue
            c.send(raw)
            expected = TARGET_BEHAVIOURS[behaviour][1]
            try:
                resp = c.final_response()
            except PeerClosed:
                if expected is not None:
                    problems.append(f"{behaviour}: connection closed instead of {expected}")
                c.close()
                c = None
                continue
            if resp.status != (expected or 502):
                problems.append(f"{behaviour}: got {resp.status}, expected {expected}")
            elif resp.status == 200 and resp.body != BODY:
                problems.append(f"{behaviour}: wrong body ({len(resp.body)} bytes)")
            closing = (resp.header("Connection") or "").lower() == "close"
            if resp.status != 200 or closing or c.stream.eof:
                c.close()
                c = None
        if c:
            c.close()

    def run_clients(self, count: int, rounds: int) -> list:
        problems = []
        threads = [threading.Thread(target=self.client_loop, args=(seed, rounds, problems),
                                    daemon=True) for seed in range(count)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60 * SCALE)
        self.assertFalse(any(t.is_alive() for t in threads), "clients still running")
        return problems

    def test_misbehaving_targets_and_clients(self):
        problems = self.run_clients(count=24, rounds=25)
        self.assertEqual(problems, [])
        resp = send_request(self.gw.port, build_request("POST", "/chaos?b=ok", body=b"x"))
        self.assertEqual((resp.status, resp.body), (200, BODY))


class SigtermUnderLoadTests(unittest.TestCase):
    def test_sigterm_in_the_middle_of_traffic(self):
        rcv = StrictReceiver()
        self.addCleanup(rcv.close)
        rcv.handler = lambda seen: Reply(body=BODY, delay=0.02)
        d = Daemon([{"name": "p", "path": "/p", "target": rcv.url("/p")}], workers=2)
        self.addCleanup(d.close)
        d.start()
        stop, outcomes = threading.Event(), []

        def sender():
            while not stop.is_set():
                try:
                    resp = send_request(d.port, build_request("POST", "/p", body=b"x"))
                    outcomes.append(resp.status if resp.body == BODY else "bad body")
                except (ConnectionError, PeerClosed):  # refused, reset, broken pipe
                    outcomes.append("refused or closed")
                    time.sleep(0.01)
                except Exception as e:  # a hang or a protocol error
                    outcomes.append(repr(e))
                    return
        threads = [threading.Thread(target=sender, daemon=True) for _ in range(8)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        d.send_signal(signal.SIGTERM)
        self.assertEqual(d.wait_exit(WAIT), 0, d.stderr_text()[-3000:])
        stop.set()
        for t in threads:
            t.join(WAIT)
        self.assertGreater(outcomes.count(200), 10)
        self.assertLessEqual(set(outcomes), {200, "refused or closed"}, set(outcomes))
        rcv.assert_clean()


if __name__ == "__main__":
    unittest.main()
