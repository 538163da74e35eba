#!/usr/bin/env python3
"""Queue mode crash safety (SPEC 6, 11; docs/queue-format.md "Recovery").

- SIGKILL: fan-out to two flaky receivers while clients send; the daemon is SIGKILLed at random
  moments and restarted on the same storage.dir and ports. Every acknowledged request must reach
  every target with the body it was sent with; a delivery may repeat only across a kill.
- Torn tail: garbage and a cut-off copy of the last record appended to the newest segment are
  truncated (and logged with their byte count); every acknowledged message is still delivered.
- Damage inside the log: a flipped byte inside one acknowledged body is found, named and counted;
  that message is never delivered (it becomes a dead letter) and the others are.

The random choices of the SIGKILL test come from one seed, printed at the start; set
DECHUNKD_CRASH_SEED=<seed> to replay a red run with the same kill delays, bodies and pacing.
"""
import dataclasses
import glob
import hashlib
import json
import os
import queue
import random
import re
import shutil
import socket
import sys
import tempfile
import threading
import time
import unittest
from typing import Callable, Optional

from harness import (SCALE, WAIT, Client, Daemon, PeerClosed, ProtocolError, Stream,
                     WaitTimeout, build_request, free_port, header_values, pseudo_random,
                     read_request_head, scaled, send_request, to_yaml, wait_until)

DEFAULT_SEED = 20261205
MESSAGE_ID = re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}$")  # Crockford base32, 26 characters
SEG_NAME = re.compile(r"^\d{20}\.seg$")
SEG_HEADER = 40
FRAME = 9  # u32 payload length, u8 type, u32 crc


def now() -> float:
    return time.monotonic()


# --------------------------------------------------------------------------------------------
# A receiver that fails on purpose and records every delivery attempt with its timing
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Arrival:
    """One delivery attempt as a receiver saw it."""
    target: int              # the receiver's target index in the route
    conn: int
    t_first_byte: float      # monotonic time of the first byte of the request
    t_arrived: float         # ... of the last body byte
    method: str
    path: str
    delivery_id: str
    message_id: str
    attempt: int
    length: int
    sha: str
    outcome: str             # "200" | "503" | "drop" (closed without answering)
    t_answer: Optional[float] = None    # just before the answer (or the close) was sent
    t_answered: Optional[float] = None  # after it was sent (None: the send failed)

    @property
    def ok(self) -> bool:
        return self.outcome == "200"


class FlakyReceiver:
    """A strict HTTP/1.1 target on a fixed loopback port that can be stopped and started again.

    `decide(arrival) -> "200" | "503" | "drop"` picks each answer. Strict like harness'
    StrictReceiver (Content-Length framing, no Transfer-Encoding, one Host, the X-Dechunkd-*
    fields of SPEC 11), but a request cut off by the gateway's death is recorded in `cut` with
    its time instead of being a violation: the caller checks it against the kills.
    """

    def __init__(self, target: int, decide: Callable[[Arrival], str], port: int = 0):
        self.target = target
        self.decide = decide
        self.port = port
        self._cv = threading.Condition()
        self.arrivals: list[Arrival] = []
        self.violations: list[str] = []
        self.cut: list[tuple[float, int, str]] = []  # (time, connection, what) of cut requests
        self.connections = 0
        self.accepted_at: dict[int, float] = {}  # connection -> monotonic accept time
        self._socks: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self.listener: Optional[socket.socket] = None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    # -- life cycle -------------------------------------------------------------------------
    def start(self) -> "FlakyReceiver":
        lst = socket.socket()
        lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lst.bind(("127.0.0.1", self.port))
        lst.listen(256)
        self.port = lst.getsockname()[1]
        self.listener = lst
        t = threading.Thread(target=self._accept_loop, args=(lst,), daemon=True)
        t.start()
        self._threads.append(t)
        return self

    def stop(self):
        """Closes the listener and every connection (the port then refuses connections)."""
        lst, self.listener = self.listener, None
        socks = [lst] if lst else []
        with self._cv:
            socks += self._socks
            self._socks = []
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
        end = now() + 2.0
        for t in self._threads:
            t.join(timeout=max(0.0, end - now()))
        self._threads = [t for t in self._threads if t.is_alive()]

    # -- test side --------------------------------------------------------------------------
    def accept_time(self, cid: int) -> float:
        with self._cv:
            return self.accepted_at[cid]

    def snapshot(self) -> list[Arrival]:
        with self._cv:
            return list(self.arrivals)

    def problems(self) -> list[str]:
        with self._cv:
            return list(self.violations)

    # -- server side ------------------------------------------------------------------------
    def _violation(self, cid: int, text: str):
        with self._cv:
            self.violations.append(f"target {self.target} connection {cid}: {text}")

    def _accept_loop(self, lst: socket.socket):
        while True:
            try:
                sock, _ = lst.accept()
            except OSError:
                return
            with self._cv:
                if self.listener is not lst:
                    sock.close()
                    return
                self.connections += 1
                cid = self.connections
                self.accepted_at[cid] = now()
                self._socks.append(sock)
            t = threading.Thread(target=self._serve, args=(sock, cid), daemon=True)
            t.start()
            self._threads.append(t)

    def _serve(self, sock: socket.socket, cid: int):
        stream = Stream(sock, idle=300.0)
        try:
            while self._serve_one(stream, cid):
                pass
        except (WaitTimeout, OSError):
            pass
        finally:
            with self._cv:
                if sock in self._socks:
                    self._socks.remove(sock)
            sock.close()

    def _serve_one(self, stream: Stream, cid: int) -> bool:
        if not stream.buf and not stream.fill(None):
            return False  # closed between requests: fine
        t_first = now()
        try:
            m, fields, raw = read_request_head(stream)
            problem = self._check_head(m, fields, raw)
            if problem:
                self._violation(cid, problem)
                stream.sock.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n"
                                    b"Connection: close\r\n\r\n")
                return False
            length = int(header_values(fields, "Content-Length")[0])
            digest = hashlib.sha256()
            stream.read_exact(length, None, digest.update)
        except PeerClosed as e:
            with self._cv:
                self.cut.append((now(), cid, str(e)[:200]))
            return False
        except ProtocolError as e:
            self._violation(cid, str(e))
            return False
        get = lambda name: header_values(fields, name)[0]  # noqa: E731 (checked in _check_head)
        a = Arrival(self.target, cid, t_first, now(), m.group(1).decode(),
                    m.group(2).decode("latin-1"), get("X-Dechunkd-Delivery-Id"),
                    get("X-Dechunkd-Message-Id"), int(get("X-Dechunkd-Attempt")), length,
                    digest.hexdigest(), "")
        try:
            a.outcome = self.decide(a)
        except Exception as e:  # a broken decide must not hang the gateway
            self._violation(cid, f"decide raised {e!r}")
            a.outcome = "503"
        a.t_answer = now()
        with self._cv:
            self.arrivals.append(a)
        if a.outcome == "drop":
            return False  # _serve closes the connection without an answer
        if a.outcome == "200":
            answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        else:
            answer = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy"
        stream.sock.sendall(answer)
        a.t_answered = now()
        return True

    def _check_head(self, m, fields, raw) -> Optional[str]:
        if m.group(3) != b"HTTP/1.1":
            return f"outbound request not HTTP/1.1: {raw[:200]!r}"
        if header_values(fields, "Transfer-Encoding"):
            return f"Transfer-Encoding sent: {raw[:300]!r}"
        if len(header_values(fields, "Host")) != 1:
            return f"not exactly one Host field: {raw[:300]!r}"
        cl = header_values(fields, "Content-Length")
        if len(cl) != 1 or not cl[0].isdigit():
            return f"bad Content-Length {cl}: {raw[:300]!r}"
        ids = {n: header_values(fields, n) for n in
               ("X-Dechunkd-Message-Id", "X-Dechunkd-Delivery-Id", "X-Dechunkd-Attempt")}
        if any(len(v) != 1 for v in ids.values()):
            return f"X-Dechunkd-* fields missing or repeated: {ids}"
        mid, did, attempt = (v[0] for v in ids.values())
        if not MESSAGE_ID.match(mid) or did != f"{mid}.{self.target}":
            return f"delivery id {did!r} is not '<message id {mid!r}>.{self.target}'"
        if not attempt.isdigit() or int(attempt) < 1:
            return f"bad X-Dechunkd-Attempt {attempt!r}"
        return None


def always_ok(_a: Arrival) -> str:
    return "200"


def stable_port() -> int:
    """A free loopback port outside the kernel's ephemeral range, so that no outgoing connection
    (ours, the daemon's, another test's) can take it while a daemon or receiver that owns it is
    down between a kill and a restart; and a client can never connect to itself on it."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        low = 0
    if low <= 11000:
        return free_port()
    rng = random.Random()
    for _ in range(200):
        port = rng.randint(10000, low - 1)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    return free_port()


# --------------------------------------------------------------------------------------------
# Gateway side helpers
# --------------------------------------------------------------------------------------------

def queue_config(tmp: str, port: int, admin_port: int, targets: list, **route_extra) -> str:
    retry = {"max_attempts": 1000, "initial_backoff": "50ms", "max_backoff": "500ms",
             "max_age": "1h"}
    route = {"name": "q", "path": "/q", "mode": "queue", "targets": targets, "retry": retry}
    route.update(route_extra)
    config = {
        "listen": [{"address": f"127.0.0.1:{port}"}],
        "workers": 2,
        "limits": {"memory_buffer": "64KiB"},  # large bodies go through a spill file too
        "timeouts": {"upstream_response": "10s", "drain": "5s"},
        "storage": {"dir": os.path.join(tmp, "storage"), "fsync": "always"},
        "admin": {"address": f"127.0.0.1:{admin_port}"},
        "log": {"level": "info", "access": "off"},
        "routes": [route],
    }
    return to_yaml(config) + "\n"


def start_daemon(tmp: str, config_text: str) -> Daemon:
    """A daemon on an existing temp dir (kept across restarts); ready when both the listener and
    the admin endpoint logged 'listening on'."""
    d = Daemon(config_text=config_text, tmpdir=tmp)
    d.start(listeners=2)
    return d


def admin(port: int, method: str, path: str, timeout: float = WAIT):
    return send_request(port, build_request(method, path, host=f"127.0.0.1:{port}"), method=method,
                        timeout=timeout)


def metrics(port: int) -> dict:
    resp = admin(port, "GET", "/metrics")
    assert resp.status == 200, f"GET /metrics: {resp}"
    samples = {}
    for line in resp.body.decode().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            samples[key] = float(value)
    return samples


def metric(samples: dict, name: str) -> Optional[float]:
    """The value of an unlabelled sample (or the sum over its label sets)."""
    values = [v for k, v in samples.items() if k == name or k.startswith(name + "{")]
    return sum(values) if values else None


def retried(port: int) -> Optional[float]:
    """dechunkd_deliveries_total{...,result="retried"} summed over targets."""
    return sum(v for k, v in metrics(port).items()
               if k.startswith("dechunkd_deliveries_total{") and 'result="retried"' in k)


def queue_state(port: int) -> list:
    resp = admin(port, "GET", "/queue")
    assert resp.status == 200, f"GET /queue: {resp}"
    return [t for r in resp.json()["routes"] for t in r["targets"]]


def dead_letters(port: int) -> list:
    resp = admin(port, "GET", "/dead-letters?limit=1000")
    assert resp.status == 200, f"GET /dead-letters: {resp}"
    return resp.json()["dead_letters"]


def post_queue(port: int, body: bytes, chunks: Optional[list] = None) -> str:
    """Sends one webhook to /q on a new connection; returns the id of its 202."""
    if chunks is not None:
        raw = build_request("POST", "/q", [("Content-Type", "application/octet-stream")],
                            chunks=chunks)
    else:
        raw = build_request("POST", "/q", [("Content-Type", "application/octet-stream")],
                            body=body)
    resp = send_request(port, raw, timeout=scaled(10))
    return accepted_id(resp)


def accepted_id(resp) -> str:
    """The message id of a queue acknowledgement; AssertionError for anything else."""
    if resp.status != 202:
        raise AssertionError(f"expected 202, got {resp}")
    ctype = (resp.header("Content-Type") or "").split(";")[0].strip()
    body = json.loads(resp.body.decode("utf-8"))
    if ctype != "application/json" or set(body) != {"id"} or not MESSAGE_ID.match(body["id"]):
        raise AssertionError(f"bad acknowledgement: {resp}")
    return body["id"]


def random_chunks(rng: random.Random, body: bytes, max_chunk: int) -> list:
    chunks, i = [], 0
    while i < len(body):
        n = rng.randint(1, max_chunk)
        chunks.append(body[i: i + n])
        i += n
    return chunks


def segments(storage_dir: str) -> list:
    qdir = os.path.join(storage_dir, "queue")
    return sorted(p for p in glob.glob(os.path.join(qdir, "*.seg"))
                  if SEG_NAME.match(os.path.basename(p)))


def frames(data: bytes) -> list:
    """(offset, framed size, type) of each record that fits, from the segment header on; stops at
    the first frame whose length field does not fit the file."""
    out, off = [], SEG_HEADER
    while off + FRAME <= len(data):
        n = int.from_bytes(data[off: off + 4], "little")
        if n < 1 or off + FRAME + n > len(data):
            break
        out.append((off, FRAME + n, data[off + 4]))
        off += FRAME + n
    return out


def wait_truncation_logged(d: Daemon, nbytes: int, what: str) -> str:
    try:
        return wait_until(lambda: truncation_logged(d, nbytes), WAIT,
                          f"a log line about truncating {nbytes} bytes ({what})")
    except WaitTimeout as e:
        raise AssertionError(f"{e}\nlog:\n{d.stderr_text()[-4000:]}") from None


def truncation_logged(d: Daemon, nbytes: int, start: int = 0) -> Optional[str]:
    """A log line that reports a truncation and the number of bytes removed."""
    number = re.compile(r"(?<![0-9])%d(?![0-9])" % nbytes)
    with d._cv:
        lines = list(d.stderr_lines[start:])
    for line in lines:
        if re.search(r"(?i)truncat", line) and number.search(line):
            return line
    return None


# --------------------------------------------------------------------------------------------
# A. SIGKILL at random moments
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Message:
    index: int
    body: bytes
    sha: str
    raw: bytes
    chunked: bool


@dataclasses.dataclass
class Ack:
    id: str
    index: int
    sha: str
    t_send: float  # before the request's first byte was sent
    t_ack: float   # after the 202 was read completely


@dataclasses.dataclass
class Kill:
    number: int
    t_sent: float  # SIGKILL sent
    t_dead: float  # the process was reaped


class SigkillTest(unittest.TestCase):
    MESSAGES = 300
    CLIENTS = 4
    KILLS = 5
    P_503 = 0.15
    P_DROP = 0.07
    DELAY = 0.02  # receivers answer after a random delay up to this

    def setUp(self):
        seed_text = os.environ.get("DECHUNKD_CRASH_SEED", str(DEFAULT_SEED))
        self.seed = int(seed_text)
        print(f"\n[queue-crash] seed {self.seed} (replay: DECHUNKD_CRASH_SEED={self.seed})",
              file=sys.stderr, flush=True)
        self.tmp = tempfile.mkdtemp(prefix="dechunkd-qcrash-")
        self.keep_tmp = False
        self.addCleanup(lambda: None if self.keep_tmp else shutil.rmtree(self.tmp, True))
        self.lives: list[Daemon] = []

    def make_messages(self, rng: random.Random) -> list:
        msgs = []
        for i in range(self.MESSAGES):
            kind = rng.random()
            if kind < 0.05:
                size = 0
            elif kind < 0.40:
                size = rng.randint(1, 1024)
            elif kind < 0.75:
                size = rng.randint(1025, 64 * 1024)
            else:
                size = rng.randint(64 * 1024 + 1, 300 * 1024)
            body = (b"message %05d seed %d|" % (i, self.seed)
                    + pseudo_random(size, b"%d/%d" % (self.seed, i)))[:size]
            chunked = rng.random() < 0.5
            headers = [("Content-Type", "application/octet-stream"), ("X-Test-Index", str(i))]
            if chunked:
                chunks = random_chunks(rng, body, rng.choice((64, 4096, 65536)))
                raw = build_request("POST", "/q", headers, chunks=chunks)
            else:
                raw = build_request("POST", "/q", headers, body=body)
            msgs.append(Message(i, body, hashlib.sha256(body).hexdigest(), raw, chunked))
        return msgs

    def test_sigkill_at_random_moments_loses_no_acknowledged_request(self):
        seed = self.seed
        rng = random.Random(seed)
        started = now()
        msgs = self.make_messages(rng)
        port, admin_port = stable_port(), stable_port()

        outcome_rng = [random.Random(f"{seed}/target/{t}") for t in range(2)]
        outcome_lock = threading.Lock()

        def decider(t):
            def decide(_a: Arrival) -> str:
                with outcome_lock:
                    x, delay = outcome_rng[t].random(), outcome_rng[t].uniform(0.0, self.DELAY)
                time.sleep(delay)  # keeps deliveries in flight, so kills hit some
                if x < self.P_503:
                    return "503"
                return "drop" if x < self.P_503 + self.P_DROP else "200"
            return decide

        rcv = [FlakyReceiver(t, decider(t), port=stable_port()).start() for t in range(2)]
        for r in rcv:
            self.addCleanup(r.stop)
        targets = [{"url": rcv[0].url("/in0"), "max_in_flight": 1}, {"url": rcv[1].url("/in1")}]
        config_text = queue_config(self.tmp, port, admin_port, targets)

        acks: dict[str, Ack] = {}
        sent_shas = {m.sha for m in msgs}
        problems: list[str] = []
        failed_sends = [0]
        finished_at = []  # when each client thread ended
        awaiting = {}  # client -> body size of the request it sent whole and awaits the answer of
        state_lock = threading.Lock()
        todo: "queue.Queue[int]" = queue.Queue()
        for m in msgs:
            todo.put(m.index)
        send_deadline = now() + max(90.0, scaled(60))
        resp_timeout = scaled(20)
        give_up = threading.Event()  # set when the test ends early: the clients stop
        self.addCleanup(give_up.set)

        def connect() -> Optional[Client]:
            while now() < send_deadline and not give_up.is_set():
                try:
                    return Client(port, timeout=resp_timeout)
                except OSError:  # the daemon is down (killed, not yet restarted)
                    time.sleep(0.02)
            return None

        def client(wid: int):
            crng = random.Random(f"{seed}/client/{wid}")
            c = None

            def report(text: str):
                with state_lock:
                    problems.append(f"client {wid}: {text}"[:500])
            try:
                while True:
                    try:
                        i = todo.get_nowait()
                    except queue.Empty:
                        return
                    if give_up.is_set():
                        return
                    m = msgs[i]
                    for _ in range(5):  # a send cut by a kill is sent again (as a new message)
                        with state_lock:
                            awaiting.pop(wid, None)
                        c = c or connect()
                        if c is None:
                            report(f"could not connect before the deadline (message {i})")
                            return
                        t_send = now()
                        try:
                            c.send(m.raw)
                            with state_lock:
                                awaiting[wid] = len(m.body)
                            resp = c.final_response(timeout=resp_timeout)
                        except (OSError, PeerClosed):
                            with state_lock:  # the daemon died under this request: not acked
                                failed_sends[0] += 1
                            c.close()
                            c = None
                            continue
                        except (WaitTimeout, ProtocolError) as e:
                            report(f"message {i}: {e!r}")
                            c.close()
                            c = None
                            continue
                        try:
                            mid = accepted_id(resp)
                        except (AssertionError, ValueError) as e:
                            report(f"message {i}: {e}")
                            c.close()
                            c = None
                            break
                        with state_lock:
                            if mid in acks:
                                problems.append(f"id {mid} acknowledged twice (messages "
                                                f"{acks[mid].index} and {i})")
                            acks[mid] = Ack(mid, i, m.sha, t_send, now())
                        if (resp.header("Connection") or "").lower() == "close":
                            c.close()
                            c = None
                        break
                    with state_lock:
                        awaiting.pop(wid, None)
                    time.sleep(crng.uniform(0.0, 0.12))
            except Exception as e:  # never lose a client failure in a thread
                with state_lock:
                    problems.append(f"client {wid} crashed: {e!r}")
            finally:
                if c:
                    c.close()
                with state_lock:
                    finished_at.append(now())

        def corrupt_count(d: Daemon) -> Optional[float]:
            return metric(metrics(admin_port), "dechunkd_queue_corrupt_records_total")

        corrupt_per_life = []
        d = start_daemon(self.tmp, config_text)
        self.lives.append(d)
        self.addCleanup(lambda: self.lives[-1].close())
        corrupt_per_life.append(corrupt_count(d))

        workers = [threading.Thread(target=client, args=(w,), daemon=True)
                   for w in range(self.CLIENTS)]
        for w in workers:
            w.start()
        # The kills: the first ones when the number of acknowledged requests reaches random
        # thresholds, the last one when target 0 (the slow, ordered one) has delivered a random
        # share; each after a random minimum life and a random extra delay; the restart after a
        # random pause. Kills 2 and 4 aim at the append: once their threshold and minimum life
        # are reached they wait for a client that has sent a body of 32 KiB or more whole and
        # awaits its answer, then kill within a few milliseconds (the daemon is then writing,
        # syncing or acknowledging it; that takes a few milliseconds). Everything is drawn up
        # front from the seed.
        n = self.MESSAGES
        plan = [dict(ack_threshold=rng.randint(n // 20, n * 9 // 10),
                     min_life=rng.uniform(0.05, 0.6), extra=rng.uniform(0.0, 0.25),
                     quick=rng.uniform(0.0, 0.002), pause=rng.uniform(0.0, 0.3))
                for _ in range(self.KILLS)]
        plan.sort(key=lambda p: p["ack_threshold"])
        plan[1]["in_append"] = plan[3]["in_append"] = True
        plan[-1]["delivered_threshold"] = rng.randint(n // 2, n * 19 // 20)

        def sending() -> bool:
            return any(w.is_alive() for w in workers)

        def in_append() -> bool:
            with state_lock:
                if any(size >= 32 * 1024 for size in awaiting.values()):
                    return True
            return not sending()  # sending is over: an ordinary random moment then

        def delivered_ids(t: int) -> set:
            return {a.message_id for a in rcv[t].snapshot() if a.ok}

        def trigger(p: dict) -> bool:
            if "delivered_threshold" in p:
                return len(delivered_ids(0)) >= p["delivered_threshold"] or not sending() \
                    and len(delivered_ids(0)) >= len(acks)
            with state_lock:
                return len(acks) >= p["ack_threshold"] or not sending()

        kills: list[Kill] = []
        for k, p in enumerate(plan, 1):
            life_start = now()
            try:
                wait_until(lambda: trigger(p), scaled(20), "the kill trigger", step=0.01)
            except WaitTimeout:
                print(f"[queue-crash] kill {k}: trigger {p} not reached within {scaled(20):.0f}s, "
                      f"killing anyway", file=sys.stderr, flush=True)
            time.sleep(max(0.0, life_start + p["min_life"] * SCALE - now()))
            if p.get("in_append"):
                try:
                    wait_until(in_append, scaled(10), "a large request awaiting its answer",
                               step=0.0005)
                except WaitTimeout:
                    pass
                time.sleep(p["quick"] * SCALE)
            else:
                time.sleep(p["extra"] * SCALE)
            if d.proc.poll() is not None:
                self.fail(f"seed {seed}: dechunkd (life {len(self.lives) - 1}) exited by itself "
                          f"with {d.proc.returncode} before kill {k}:\n"
                          f"{d.stderr_text()[-4000:]}")
            t_sent = now()
            d.proc.kill()
            d.proc.wait(scaled(10))
            kills.append(Kill(k, t_sent, now()))
            d.wait_exit(scaled(5))
            with state_lock:
                progress = (len(acks), failed_sends[0])
            print(f"[queue-crash] kill {k} at {t_sent - started:.2f}s: {progress[0]} acked, "
                  f"{progress[1]} sends cut so far; deliveries seen "
                  f"{len(rcv[0].snapshot())}/{len(rcv[1].snapshot())}", file=sys.stderr, flush=True)
            time.sleep(p["pause"])
            d = start_daemon(self.tmp, config_text)
            self.lives.append(d)
            corrupt_per_life.append(corrupt_count(d))

        for w in workers:
            w.join(max(0.0, send_deadline - now()) + resp_timeout)
        self.assertFalse(any(w.is_alive() for w in workers), "client threads did not finish")
        t_sent_all = max(finished_at)

        # Every acknowledged message delivered to both targets, and the daemon agrees.
        def all_done():
            if d.proc.poll() is not None:
                self.fail(f"seed {seed}: dechunkd (life {len(self.lives) - 1}) exited by itself "
                          f"with {d.proc.returncode}:\n{d.stderr_text()[-4000:]}")
            with state_lock:
                ids = set(acks)
            if not all(ids <= delivered_ids(t) for t in range(2)):
                return False
            state = queue_state(admin_port)
            return all(s["pending"] == 0 and s["in_flight"] == 0 for s in state)

        finish_timeout = max(120.0, scaled(60))
        try:
            wait_until(all_done, finish_timeout, "every acknowledged message delivered to both "
                       "targets and an empty queue", step=0.2)
            finished = True
        except WaitTimeout:
            finished = False
        t_done = now()
        final_queue = queue_state(admin_port)
        final_dead = dead_letters(admin_port)
        time.sleep(0.2)  # a stray duplicate after the end would still be seen below
        d.stop(timeout=scaled(10))
        # One more (clean) start: what was delivered stays delivered, nothing is sent again.
        seen_before = [len(r.snapshot()) for r in rcv]
        d = start_daemon(self.tmp, config_text)
        self.lives.append(d)
        time.sleep(scaled(1))
        after_restart = [a for r, n in zip(rcv, seen_before) for a in r.snapshot()[n:]]
        restart_queue = queue_state(admin_port)
        d.stop(timeout=scaled(10))

        # ---- evaluation -----------------------------------------------------------------
        arrivals = [a for r in rcv for a in r.snapshot()]
        # A 2xx written after the daemon process that opened the connection was reaped never
        # reached it: that attempt did not succeed (the next process sends it again).
        late = 0
        for a in arrivals:
            accepted = rcv[a.target].accept_time(a.conn)
            owner = next((k for k in kills if k.t_dead >= accepted), None)
            if a.ok and owner and a.t_answer > owner.t_dead:
                a.outcome, late = "late", late + 1
        by_delivery: dict[str, list] = {}
        for a in arrivals:
            by_delivery.setdefault(a.delivery_id, []).append(a)
        for lst in by_delivery.values():
            lst.sort(key=lambda a: a.t_first_byte)

        missing, wrong_body, foreign = [], [], []
        for mid, ack in acks.items():
            for t in range(2):
                got = by_delivery.get(f"{mid}.{t}", [])
                if not any(a.ok and a.sha == ack.sha for a in got):
                    missing.append(f"{mid}.{t} (message {ack.index}, attempts seen "
                                   f"{[(a.attempt, a.outcome) for a in got]})")
                for a in got:
                    if a.sha != ack.sha:
                        wrong_body.append(f"{mid}.{t} attempt {a.attempt}: body sha {a.sha[:16]} "
                                          f"!= sent {ack.sha[:16]} (message {ack.index}, "
                                          f"{a.length} bytes)")
        unacked_delivered = set()
        for a in arrivals:
            if a.message_id not in acks:
                unacked_delivered.add(a.message_id)
                if a.sha not in sent_shas:
                    foreign.append(f"{a.delivery_id} attempt {a.attempt}: a body nobody sent "
                                   f"(sha {a.sha[:16]}, {a.length} bytes)")
        # All attempts of one message carry one body, also for messages whose 202 was lost.
        for mid in unacked_delivered:
            shas = {a.sha for a in arrivals if a.message_id == mid}
            if len(shas) > 1:
                wrong_body.append(f"unacknowledged message {mid} delivered with {len(shas)} "
                                  f"different bodies")

        def kill_between(t_first: float, t_later: float) -> Optional[Kill]:
            for k in kills:
                if k.t_dead >= t_first and k.t_sent <= t_later:
                    return k
            return None

        # A delivery answered 2xx must not arrive again unless a kill came in between.
        # ... and only when it was in flight at that kill (SPEC 6: "a delivery in flight at the
        # crash may be sent again"): answered shortly before it, not finished long ago and
        # forgotten.
        in_flight_window = scaled(2)
        unexplained, dup_per_kill, duplicates = [], {k.number: 0 for k in kills}, 0
        stale, dup_gap = [], 0.0
        for did, lst in by_delivery.items():
            first_ok = next((a for a in lst if a.ok), None)
            if first_ok is None:
                continue
            for a in lst:
                if a is first_ok or a.t_first_byte <= first_ok.t_answer:
                    continue
                duplicates += 1
                k = kill_between(first_ok.t_answer, a.t_first_byte)
                if k:
                    dup_per_kill[k.number] += 1
                    gap = k.t_sent - first_ok.t_answer
                    dup_gap = max(dup_gap, gap)
                    if gap > in_flight_window:
                        stale.append(f"{did}: 2xx answered at {first_ok.t_answer - started:.3f}s "
                                     f"(attempt {first_ok.attempt}), {gap:.3f}s before kill "
                                     f"{k.number}, sent again at {a.t_first_byte - started:.3f}s "
                                     f"(attempt {a.attempt})")
                else:
                    unexplained.append(
                        f"{did}: 2xx answered at {first_ok.t_answer - started:.3f}s "
                        f"(attempt {first_ok.attempt}), sent again at "
                        f"{a.t_first_byte - started:.3f}s (attempt {a.attempt}, {a.outcome}) "
                        f"with no kill in between")

        # max_in_flight per target (requests spanning a kill are left out) and, for the
        # max_in_flight: 1 target, acceptance order: a message acknowledged before another was
        # sent is answered 2xx there before the other's first attempt arrives.
        def max_concurrency(t: int) -> int:
            events = []
            for a in arrivals:
                if a.target != t or a.t_answer is None or kill_between(a.t_first_byte, a.t_answer):
                    continue
                events += [(a.t_first_byte, 1), (a.t_answer, -1)]
            best = cur = 0
            for _, delta in sorted(events, key=lambda e: (e[0], e[1])):
                cur += delta
                best = max(best, cur)
            return best

        concurrency = [max_concurrency(0), max_concurrency(1)]
        order_problems = []
        ok0 = {}
        first0 = {}
        for a in sorted((a for a in arrivals if a.target == 0), key=lambda a: a.t_first_byte):
            first0.setdefault(a.message_id, a.t_first_byte)
            if a.ok:
                ok0.setdefault(a.message_id, a.t_answer)
        ordered = sorted(acks.values(), key=lambda a: a.t_ack)
        for x in ordered:
            for y in ordered:
                if x.t_ack < y.t_send and x.id in ok0 and y.id in first0 \
                        and first0[y.id] < ok0[x.id]:
                    order_problems.append(
                        f"target 0 got {y.id} (message {y.index}) at "
                        f"{first0[y.id] - started:.3f}s before {x.id} (message {x.index}, "
                        f"acknowledged before {y.id} was sent) was delivered at "
                        f"{ok0[x.id] - started:.3f}s")
        # A request cut off mid-way by the gateway must be explained by a kill.
        cut_unexplained = [f"target {r.target} connection {cid} at {t - started:.3f}s: {what}"
                           for r in rcv for (t, cid, what) in r.cut
                           if not any(k.t_sent <= t <= k.t_dead + scaled(2) for k in kills)]
        violations = [v for r in rcv for v in r.problems()]
        violations += [f"target {a.target}: {a.method} {a.path} (expected POST /in{a.target}) for "
                       f"{a.delivery_id}" for a in arrivals
                       if (a.method, a.path) != ("POST", f"/in{a.target}")][:20]

        truncations = [sum(1 for x in life.stderr_lines if re.search("(?i)truncat", x))
                       for life in self.lives]
        outcomes = {o: sum(1 for a in arrivals if a.outcome == o) for o in ("200", "503", "drop")}
        summary = (
            f"[queue-crash] seed {seed}: {len(msgs)} messages, {len(acks)} acked, "
            f"{failed_sends[0]} sends cut by kills, {len(kills)} kills at "
            f"{[round(k.t_sent - started, 2) for k in kills]}s; sending took "
            f"{t_sent_all - started:.1f}s, all delivered after {t_done - started:.1f}s "
            f"(finished={finished})\n"
            f"  attempts {len(arrivals)} (200: {outcomes['200']}, 503: {outcomes['503']}, "
            f"dropped: {outcomes['drop']}, 2xx to a dead process: {late}), delivered ok per target "
            f"{[len(delivered_ids(t)) for t in range(2)]}, unacknowledged but delivered "
            f"{len(unacked_delivered)}\n"
            f"  duplicates after a 2xx: {duplicates} (per kill {dup_per_kill}, longest time from "
            f"the 2xx to the kill {dup_gap:.3f}s), requests cut by "
            f"kills {sum(len(r.cut) for r in rcv)}, max concurrency per target {concurrency}, "
            f"corrupt records per life {corrupt_per_life}, truncation lines per life "
            f"{truncations}")
        print(summary, file=sys.stderr, flush=True)

        failures = []
        for title, items in (
                ("client problems", problems), ("receiver violations", violations),
                ("acknowledged but not delivered with 2xx to every target", missing),
                ("wrong body delivered", wrong_body), ("unknown body delivered", foreign),
                ("duplicate delivery without a kill in between", unexplained),
                (f"duplicate of a delivery answered 2xx more than {in_flight_window:.0f}s before "
                 f"the kill", stale),
                ("max_in_flight 1 target out of acceptance order", order_problems),
                ("request cut mid-way without a kill", cut_unexplained)):
            if items:
                failures.append(f"{title} ({len(items)}):\n    " + "\n    ".join(items[:15]))
        if concurrency[0] > 1 or concurrency[1] > 8:
            failures.append(f"max_in_flight exceeded: concurrency {concurrency} > [1, 8]")
        if any(c != 0 for c in corrupt_per_life):
            failures.append(f"dechunkd_queue_corrupt_records_total after SIGKILL restarts "
                            f"(a kill may only tear the tail): {corrupt_per_life}")
        if not finished:
            failures.append(f"not everything was delivered within {finish_timeout:.0f}s after "
                            f"the last send; GET /queue then: {final_queue}")
        elif any(s["pending"] or s["in_flight"] or s["dead_letters"] for s in final_queue):
            failures.append(f"queue not empty at the end: {final_queue}")
        if final_dead:
            failures.append(f"dead letters: {final_dead[:5]}")
        if after_restart:
            failures.append(f"a start after the graceful stop sent {len(after_restart)} "
                            f"deliveries again: {[a.delivery_id for a in after_restart[:10]]}")
        if any(s["pending"] or s["in_flight"] or s["dead_letters"] for s in restart_queue):
            failures.append(f"queue not empty after a start on the finished store: "
                            f"{restart_queue}")
        if failures:
            self.keep_tmp = True
            for n, life in enumerate(self.lives):
                with open(os.path.join(self.tmp, f"life-{n}.log"), "w") as f:
                    f.write(life.stderr_text() + "\n")
            ids = re.findall(r"[0-9A-HJKMNP-TV-Z]{26}", "\n".join(failures))[:6]
            excerpt = [f"life {n}: {line}" for n, life in enumerate(self.lives)
                       for line in life.stderr_lines if any(i in line for i in ids)][:40]
            self.fail(f"seed {seed} (replay: DECHUNKD_CRASH_SEED={seed}); logs and storage kept "
                      f"in {self.tmp}\n" + "\n".join(failures)
                      + ("\nlog lines of the ids above:\n  " + "\n  ".join(excerpt)
                         if excerpt else ""))


# --------------------------------------------------------------------------------------------
# B and C: damage in the log
# --------------------------------------------------------------------------------------------

class DamagedLogTests(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="dechunkd-qdamage-")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.port, self.admin_port = stable_port(), stable_port()
        self.rng = random.Random(DEFAULT_SEED)

    def start(self, config_text: str) -> Daemon:
        d = start_daemon(self.tmp, config_text)
        self.addCleanup(d.close)
        return d

    def admin_ok(self, method: str, path: str, status: int):
        resp = admin(self.admin_port, method, path)
        self.assertEqual(resp.status, status, f"{method} {path}: {resp}")

    def storage(self) -> str:
        return os.path.join(self.tmp, "storage")

    def send_some(self, n: int, tag: str, sizes=(0, 100 * 1024)) -> dict:
        """n webhooks (every other one chunked) -> {message id: sha256 of its body}."""
        out = {}
        for i in range(n):
            size = self.rng.randint(*sizes)
            body = (f"{tag} {i}|".encode() + pseudo_random(size, f"{tag}/{i}".encode()))[:size]
            chunks = random_chunks(self.rng, body, 4096) if i % 2 else None
            mid = post_queue(self.port, body, chunks)
            self.assertNotIn(mid, out)
            out[mid] = hashlib.sha256(body).hexdigest()
        return out

    def assert_all_delivered(self, rcv: FlakyReceiver, acked: dict, timeout: float):
        def done():
            ok = {a.message_id for a in rcv.snapshot() if a.ok}
            return set(acked) <= ok
        try:
            wait_until(done, timeout, "every acknowledged message delivered", step=0.05)
        except WaitTimeout:
            got = {a.message_id for a in rcv.snapshot() if a.ok}
            self.fail(f"not delivered: {sorted(set(acked) - got)}")
        for a in rcv.snapshot():
            self.assertIn(a.message_id, acked, f"a message nobody sent was delivered: {a}")
            self.assertEqual(a.sha, acked[a.message_id], f"body differs: {a}")
        self.assertEqual(rcv.problems(), [])

    def test_torn_tail_is_truncated_and_logged(self):
        rcv = FlakyReceiver(0, always_ok, port=stable_port()).start()
        self.addCleanup(rcv.stop)
        config = queue_config(self.tmp, self.port, self.admin_port, [{"url": rcv.url("/in")}])

        # 1. Accept while paused, stop, append random garbage.
        d = self.start(config)
        self.admin_ok("POST", "/routes/q/pause", 204)
        acked = self.send_some(12, "first")
        time.sleep(0.3)
        self.assertEqual(rcv.snapshot(), [], "a paused route delivered")
        d.stop()
        seg = segments(self.storage())[-1]
        garbage = self.rng.randbytes(1000)
        with open(seg, "ab") as f:
            f.write(garbage)

        d = self.start(config)
        line = wait_truncation_logged(d, len(garbage), "random garbage")
        print(f"\n[torn tail] garbage: {line}", file=sys.stderr)
        self.assertIsNone(d.proc.poll())
        self.assertEqual(metric(metrics(self.admin_port), "dechunkd_queue_corrupt_records_total"),
                         0, "a torn tail is not a corrupt record")

        # 2. More messages after the truncation; the receiver goes down, the route resumes, so
        #    the newest records are delivery-state updates; stop and append a cut-off copy of
        #    the last record (a valid-looking frame whose payload is missing).
        self.admin_ok("POST", "/routes/q/pause", 204)
        acked.update(self.send_some(8, "second"))
        rcv.stop()
        self.admin_ok("POST", "/routes/q/resume", 204)
        wait_until(lambda: (retried(self.admin_port) or 0) >= 5, scaled(10),
                   "failed delivery attempts to the stopped receiver")
        d.stop()
        seg = segments(self.storage())[-1]
        with open(seg, "rb") as f:
            data = f.read()
        recs = frames(data)
        self.assertTrue(recs, f"no records in {seg}")
        off, size, rtype = recs[-1]
        self.assertEqual(off + size, len(data), "the segment does not end with a whole record")
        cut = FRAME + (size - FRAME) // 2
        with open(seg, "ab") as f:
            f.write(data[off: off + cut])

        d = self.start(config)
        line = wait_truncation_logged(d, cut, f"a cut copy of a type {rtype} record")
        print(f"[torn tail] partial record: {line}", file=sys.stderr)
        self.assertEqual(metric(metrics(self.admin_port), "dechunkd_queue_corrupt_records_total"),
                         0, "a torn tail is not a corrupt record")

        # 3. The receiver comes back: everything acknowledged is delivered, bodies intact.
        rcv.start()
        self.admin_ok("POST", "/routes/q/resume", 204)
        self.assert_all_delivered(rcv, acked, scaled(30))
        wait_until(lambda: all(s["pending"] == 0 and s["in_flight"] == 0
                               for s in queue_state(self.admin_port)), scaled(10), "empty queue")
        self.assertEqual(dead_letters(self.admin_port), [])
        d.stop()

    def test_damaged_body_is_skipped_named_and_counted(self):
        rcv = FlakyReceiver(0, always_ok).start()
        self.addCleanup(rcv.stop)
        config = queue_config(self.tmp, self.port, self.admin_port, [{"url": rcv.url("/in")}])
        d = self.start(config)
        self.admin_ok("POST", "/routes/q/pause", 204)
        acked, markers = {}, {}
        for i in range(10):
            marker = b"@@MARKER-%02d-%08x@@" % (i, self.rng.getrandbits(32))
            body = pseudo_random(1500, b"c%d" % i) + marker + pseudo_random(1500, b"d%d" % i)
            chunks = random_chunks(self.rng, body, 700) if i % 2 else None
            mid = post_queue(self.port, body, chunks)
            acked[mid] = hashlib.sha256(body).hexdigest()
            markers[mid] = marker
        d.stop()

        victim = list(acked)[4]
        hits = []
        for seg in segments(self.storage()):
            with open(seg, "rb") as f:
                data = f.read()
            start = 0
            while (i := data.find(markers[victim], start)) >= 0:
                hits.append((seg, i))
                start = i + 1
        self.assertEqual(len(hits), 1, f"marker of {victim} found {len(hits)} times: {hits}")
        seg, pos = hits[0]
        fd = os.open(seg, os.O_RDWR)
        try:
            flip = pos + 5
            byte = os.pread(fd, 1, flip)
            os.pwrite(fd, bytes([byte[0] ^ 0x20]), flip)
        finally:
            os.close(fd)

        d = self.start(config)
        try:
            line = d.wait_log(r"(?i)(corrupt|damage).*%s|%s.*(corrupt|damage)" % (victim, victim))
        except WaitTimeout as e:
            self.fail(f"no log line names the damaged message {victim}: {e}")
        print(f"\n[damage] {line.group(0)}", file=sys.stderr)
        self.assertIsNone(d.proc.poll(), "the daemon died after recovery")
        self.assertEqual(metric(metrics(self.admin_port), "dechunkd_queue_corrupt_records_total"),
                         1)

        self.admin_ok("POST", "/routes/q/resume", 204)
        others = {mid: sha for mid, sha in acked.items() if mid != victim}
        self.assert_all_delivered(rcv, others, scaled(20))
        time.sleep(0.5)  # the damaged one must not follow
        self.assertNotIn(victim, {a.message_id for a in rcv.snapshot()},
                         "the message with the damaged body was delivered")
        dead = {x["id"]: x for x in dead_letters(self.admin_port)}
        self.assertEqual(set(dead), {f"{victim}.0"}, f"dead letters: {dead}")
        self.assertIn("damaged", dead[f"{victim}.0"]["last_error"])
        self.assertIsNone(d.proc.poll())
        d.stop()


if __name__ == "__main__":
    unittest.main()
