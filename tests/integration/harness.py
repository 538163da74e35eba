"""Shared harness for dechunkd's integration tests (Python 3 stdlib only).

- Daemon: writes a YAML config into a temp dir, starts the real binary on port 0, waits for the
  `listening on HOST:PORT` log line, keeps every stderr line, stops it and checks the exit code.
- StrictReceiver: a fake legacy upstream. It refuses `Transfer-Encoding` (411, recorded as a
  violation), needs `Content-Length` on POST/PUT/PATCH, reads exactly that many body bytes and
  records the exact head, request line, header list and body of every request. Anything else
  that arrives on a connection is a violation. Its answers are scripted per request (Reply).
- Client: a raw socket client that sends exact bytes (optionally in pieces) and reads responses
  strictly, and tells whether the server closed the connection.
- GatewayCase: a unittest base class with one daemon and its receivers per test class.

Every wait has a deadline; an unexpected close raises PeerClosed (an AssertionError).
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import re
import resource
import select
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
import unittest
from typing import Callable, Iterable, Optional

BIN = os.environ.get("DECHUNKD_BIN", "/work/main/build/dechunkd")
SANITIZED = os.environ.get("DECHUNKD_SANITIZED", "0") == "1"
# Sanitized builds are several times slower: stretch every wait, never the daemon's own timers.
SCALE = 4.0 if SANITIZED else 1.0
WAIT = 5.0 * SCALE          # default deadline for one response or one log line
START_WAIT = 10.0 * SCALE   # daemon start-up (readiness probe)

_TOKEN = re.compile(rb"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_REQUEST_LINE = re.compile(rb"^([A-Z]+) (/[\x21-\x7e]*) (HTTP/1\.[01])$")
_STATUS_LINE = re.compile(rb"^(HTTP/1\.[01]) ([0-9]{3}) ([\t\x20-\x7e\x80-\xff]*)$")
_LISTENING = re.compile(r"listening on (\S+):(\d+)\s*$")


class PeerClosed(AssertionError):
    """The peer closed (or reset) the connection before what we waited for arrived."""


class WaitTimeout(AssertionError):
    """A deadline passed."""


class ProtocolError(AssertionError):
    """Bytes that a strict HTTP/1.1 peer must not send."""


class _Any:
    """Matches any value in expected header lists (e.g. a generated X-Request-Id)."""

    def __eq__(self, other):
        return True

    def __repr__(self):
        return "ANY"


ANY = _Any()


def scaled(seconds: float) -> float:
    return seconds * SCALE


def deadline_in(seconds: float) -> float:
    return time.monotonic() + seconds


def wait_until(predicate: Callable[[], object], timeout: float, what: str, step: float = 0.02):
    """Polls predicate until it returns a true value; returns it, or raises WaitTimeout."""
    end = deadline_in(timeout)
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= end:
            raise WaitTimeout(f"timed out after {timeout:.1f}s waiting for {what}")
        time.sleep(step)


_PORT_LOW, _PORT_HIGH = 20000, 32767  # below Linux's ephemeral range (32768-60999)
_port_lock = threading.Lock()
_ports_given: set[int] = set()
_port_cursor = _PORT_LOW + (os.getpid() * 7919) % (_PORT_HIGH - _PORT_LOW)


def free_port() -> int:
    """A loopback port for a daemon to listen on, never the same one twice in this process.

    The kernel's own choice (bind to port 0) may hand the same port out twice in a row, and
    every client connect may take an ephemeral port in the meantime; so ports come from below
    the ephemeral range, starting at a point derived from the pid (test processes that run in
    parallel start far apart), and each is checked free by binding it once.
    """
    global _port_cursor
    with _port_lock:
        for _ in range(_PORT_HIGH - _PORT_LOW):
            port = _port_cursor
            _port_cursor = _PORT_LOW if port >= _PORT_HIGH else port + 1
            if port in _ports_given:
                continue
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
            _ports_given.add(port)
            return port
    raise RuntimeError("no free loopback port left for tests")


# --------------------------------------------------------------------------------------------
# Bytes on the wire
# --------------------------------------------------------------------------------------------

class Stream:
    """A socket with a read buffer. Reads stop at a deadline (absolute, time.monotonic())."""

    def __init__(self, sock: socket.socket, idle: float = 30.0):
        self.sock = sock
        self.buf = bytearray()
        self.eof = False
        self.was_reset = False
        self.idle = idle  # per-recv timeout when no deadline is given

    def fill(self, deadline: Optional[float]) -> bool:
        """Reads once; False on EOF or reset."""
        if self.eof:
            return False
        timeout = self.idle if deadline is None else deadline - time.monotonic()
        if timeout <= 0:
            raise WaitTimeout("deadline passed while reading")
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(1 << 16)
        except socket.timeout:
            raise WaitTimeout(f"no bytes within {timeout:.1f}s (have {bytes(self.buf[:200])!r})")
        except (ConnectionResetError, BrokenPipeError):
            self.was_reset, data = True, b""
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    def read_until(self, delim: bytes, deadline: Optional[float], limit: int = 1 << 20) -> bytes:
        start = 0
        while True:
            i = self.buf.find(delim, start)
            if i >= 0:
                out = bytes(self.buf[: i + len(delim)])
                del self.buf[: i + len(delim)]
                return out
            if len(self.buf) > limit:
                raise ProtocolError(f"no {delim!r} within {limit} bytes: {bytes(self.buf[:200])!r}")
            start = max(0, len(self.buf) - len(delim) + 1)
            if not self.fill(deadline):
                raise PeerClosed(f"connection closed while waiting for {delim!r}; "
                                 f"had {bytes(self.buf[:300])!r}")

    def read_exact(self, n: int, deadline: Optional[float],
                   sink: Optional[Callable[[bytes], None]] = None) -> bytes:
        """Reads n bytes; with a sink they are handed over piecewise and b"" is returned."""
        out = bytearray()
        while n > 0:
            if not self.buf and not self.fill(deadline):
                raise PeerClosed(f"connection closed with {n} body bytes still expected")
            piece = bytes(self.buf[:n])
            del self.buf[: len(piece)]
            n -= len(piece)
            if sink:
                sink(piece)
            else:
                out += piece
        return bytes(out)

    def read_to_eof(self, deadline: Optional[float]) -> bytes:
        while self.fill(deadline):
            pass
        out = bytes(self.buf)
        self.buf.clear()
        return out


def parse_fields(lines: list[bytes]) -> list[tuple[str, str]]:
    """Strict header field lines -> [(name, value)] with OWS trimmed; ProtocolError otherwise."""
    fields = []
    for line in lines:
        name, sep, value = line.partition(b":")
        if not sep or not _TOKEN.match(name):
            raise ProtocolError(f"malformed field line {line!r}")
        value = value.strip(b" \t")
        if any(b < 0x20 and b != 0x09 or b == 0x7F for b in value):
            raise ProtocolError(f"control byte in field value {line!r}")
        fields.append((name.decode("latin-1"), value.decode("latin-1")))
    return fields


def split_head(raw: bytes) -> tuple[bytes, list[bytes]]:
    """A head ending in CRLF CRLF -> (start line, field lines). Bare CR or LF is an error."""
    assert raw.endswith(b"\r\n\r\n")
    lines = raw[:-4].split(b"\r\n")
    for line in lines:
        if b"\r" in line or b"\n" in line:
            raise ProtocolError(f"bare CR or LF in head line {line!r}")
    return lines[0], lines[1:]


def header_values(fields: list[tuple[str, str]], name: str) -> list[str]:
    return [v for n, v in fields if n.lower() == name.lower()]


def single_header(fields: list[tuple[str, str]], name: str) -> Optional[str]:
    values = header_values(fields, name)
    if len(values) > 1:
        raise AssertionError(f"{name} sent {len(values)} times: {values}")
    return values[0] if values else None


def read_chunked(stream: Stream, deadline: Optional[float],
                 sink: Optional[Callable[[bytes], None]] = None) -> tuple[bytes, list]:
    """Decodes a chunked body strictly; returns (body, trailer fields)."""
    body = bytearray()
    while True:
        line = stream.read_until(b"\r\n", deadline, limit=8192)[:-2]
        size_text = line.split(b";", 1)[0]
        if not re.fullmatch(rb"[0-9A-Fa-f]{1,16}", size_text):
            raise ProtocolError(f"bad chunk size line {line!r}")
        size = int(size_text, 16)
        if size == 0:
            break
        body += stream.read_exact(size, deadline, sink)
        if stream.read_exact(2, deadline) != b"\r\n":
            raise ProtocolError("chunk data not followed by CRLF")
    trailer_lines = []
    while True:
        line = stream.read_until(b"\r\n", deadline, limit=1 << 16)[:-2]
        if not line:
            return bytes(body), parse_fields(trailer_lines)
        trailer_lines.append(line)


# --------------------------------------------------------------------------------------------
# Building requests
# --------------------------------------------------------------------------------------------

def _b(text) -> bytes:
    return text if isinstance(text, bytes) else str(text).encode("latin-1")


def chunked_body(chunks: Iterable[bytes], trailers: Iterable = (), ext: bytes = b"") -> bytes:
    """Chunked framing of `chunks` (empty chunks are skipped: they would end the body)."""
    out = bytearray()
    for c in chunks:
        if c:
            out += b"%x%s\r\n%s\r\n" % (len(c), ext, c)
    out += b"0\r\n"
    for name, value in trailers:
        out += _b(name) + b": " + _b(value) + b"\r\n"
    return bytes(out + b"\r\n")


def build_request(method: str = "POST", target: str = "/", headers: Iterable = (), *,
                  host: Optional[str] = "gw.example", body: Optional[bytes] = None,
                  chunks: Optional[Iterable[bytes]] = None, trailers: Iterable = (),
                  version: str = "HTTP/1.1") -> bytes:
    """A request with Host first, then `headers`, then the framing field for body or chunks."""
    lines = [_b(f"{method} {target} {version}")]
    if host is not None:
        lines.append(b"Host: " + _b(host))
    lines += [_b(n) + b": " + _b(v) for n, v in headers]
    payload = b""
    if chunks is not None:
        lines.append(b"Transfer-Encoding: chunked")
        payload = chunked_body(chunks, trailers)
    elif body is not None:
        lines.append(b"Content-Length: %d" % len(body))
        payload = body
    return b"\r\n".join(lines) + b"\r\n\r\n" + payload


def exact_request(method: str, target: str, fields: Iterable, body: bytes = b"") -> bytes:
    """The bytes of an HTTP/1.1 request with exactly these fields, written `Name: value`."""
    return (f"{method} {target} HTTP/1.1\r\n".encode("latin-1")
            + b"".join(_b(n) + b": " + _b(v) + b"\r\n" for n, v in fields) + b"\r\n" + body)


def pseudo_random(n: int, seed: bytes = b"dechunkd") -> bytes:
    """n deterministic bytes that look random (all byte values, CRLFs included)."""
    out = bytearray()
    counter = 0
    while len(out) < n:
        out += hashlib.sha256(seed + counter.to_bytes(8, "big")).digest() * 64
        counter += 1
    return bytes(out[:n])


# --------------------------------------------------------------------------------------------
# Client
# --------------------------------------------------------------------------------------------

def parse_metrics(text: str) -> dict:
    """{'name{labels}': value} for every sample line."""
    samples = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        samples[key] = float(value)
    return samples


@dataclasses.dataclass
class Response:
    version: str
    status: int
    reason: str
    headers: list
    body: bytes
    raw_head: bytes
    trailers: list = dataclasses.field(default_factory=list)
    interim: list = dataclasses.field(default_factory=list)  # 1xx responses seen before it
    chunked: bool = False

    def header(self, name: str) -> Optional[str]:
        return single_header(self.headers, name)

    def header_all(self, name: str) -> list:
        return header_values(self.headers, name)

    def json(self):
        return json.loads(self.body.decode("utf-8"))

    def __str__(self):
        return f"{self.status} {self.reason} {self.headers} {self.body[:300]!r}"


def read_request_head(stream: Stream, deadline: Optional[float] = None):
    """One request head as a receiver reads it: (request-line match, fields, raw head bytes)."""
    raw = stream.read_until(b"\r\n\r\n", deadline, limit=1 << 20)
    start, lines = split_head(raw)
    m = _REQUEST_LINE.match(start)
    if not m:
        raise ProtocolError(f"bad request line {start!r}")
    return m, parse_fields(lines), raw


def read_response(stream: Stream, deadline: float, method: str = "POST") -> Response:
    """One response (a 1xx too), framed by the rules a client applies; strict syntax."""
    raw = stream.read_until(b"\r\n\r\n", deadline, limit=1 << 16)
    start, lines = split_head(raw)
    m = _STATUS_LINE.match(start)
    if not m:
        raise ProtocolError(f"bad status line {start!r}")
    fields = parse_fields(lines)
    resp = Response(m.group(1).decode(), int(m.group(2)), m.group(3).decode("latin-1"), fields,
                    b"", raw)
    te, cl = header_values(fields, "Transfer-Encoding"), header_values(fields, "Content-Length")
    if te and cl:
        raise ProtocolError(f"response with both Transfer-Encoding and Content-Length: {raw!r}")
    if resp.status < 200 or resp.status in (204, 304) or method == "HEAD":
        return resp
    if te:
        if te != ["chunked"]:
            raise ProtocolError(f"unexpected response Transfer-Encoding {te}")
        resp.chunked = True
        resp.body, resp.trailers = read_chunked(stream, deadline)
    elif cl:
        if len(cl) != 1 or not cl[0].isdigit():
            raise ProtocolError(f"bad response Content-Length {cl}")
        resp.body = stream.read_exact(int(cl[0]), deadline)
    else:
        resp.body = stream.read_to_eof(deadline)
    return resp


class Client:
    """A raw HTTP client connection to the gateway."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = WAIT):
        self.timeout = timeout
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.stream = Stream(self.sock)

    @property
    def local_port(self) -> int:
        return self.sock.getsockname()[1]

    def send(self, data: bytes, piece: Optional[int] = None, delay: float = 0.0):
        """Sends data whole, or in pieces of `piece` bytes with `delay` seconds between them."""
        if piece is None:
            self.sock.sendall(data)
            return
        for i in range(0, len(data), piece):
            self.sock.sendall(data[i: i + piece])
            if delay:
                time.sleep(delay)

    def response(self, method: str = "POST", timeout: Optional[float] = None) -> Response:
        """The next response, 1xx included."""
        return read_response(self.stream, deadline_in(timeout or self.timeout), method)

    def final_response(self, method: str = "POST", timeout: Optional[float] = None) -> Response:
        """The next final response; the 1xx responses before it are kept in .interim."""
        interim = []
        while True:
            resp = self.response(method, timeout)
            if resp.status >= 200:
                resp.interim = interim
                return resp
            interim.append(resp)

    def state_after(self, timeout: float = 0.5) -> str:
        """'closed' (EOF or reset), 'open' (nothing within timeout) or 'data' (more bytes)."""
        if self.stream.buf:
            return "data"
        try:
            got = self.stream.fill(deadline_in(timeout))
        except WaitTimeout:
            return "open"
        return "data" if got else "closed"

    def is_closed(self, timeout: float = WAIT) -> bool:
        """True when the server closes within timeout; False if it stays open. Extra bytes fail."""
        state = self.state_after(timeout)
        if state == "data":
            raise ProtocolError(f"unexpected bytes after the response: {bytes(self.stream.buf)!r}")
        return state == "closed"

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def send_request(port: int, raw: bytes, method: str = "POST", timeout: float = WAIT) -> Response:
    """Opens a connection, sends raw, returns the final response and closes."""
    c = Client(port, timeout=timeout)
    try:
        c.send(raw)
        return c.final_response(method)
    finally:
        c.close()


# --------------------------------------------------------------------------------------------
# Strict fake upstream
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Reply:
    """How the receiver answers one request."""
    status: int = 200
    reason: str = "OK"
    headers: list = dataclasses.field(default_factory=list)
    body: bytes = b""
    framing: str = "length"      # length | chunked | close (EOF-delimited) | none (no framing)
    chunk_size: int = 7          # chunked framing: size of each chunk
    delay: float = 0.0           # seconds before answering
    interim: list = dataclasses.field(default_factory=list)  # raw 1xx responses sent first
    raw: Optional[bytes] = None  # sent verbatim instead of an encoded response
    # keep | close (after the answer) | drop (close without answering) | cut (send cut_at bytes
    # of the answer, then close) | reset (the same, then RST) | stall (the same, then hold the
    # connection open for `stall` seconds before closing)
    action: str = "keep"
    cut_at: int = 0
    stall: float = 0.0
    idle_close: Optional[float] = None  # close the connection when idle this long after answering
    trickle: float = 0.0         # > 0: the head at once, then the body one byte every `trickle` s

    def encode(self) -> bytes:
        if self.raw is not None:
            return self.raw
        head = [f"HTTP/1.1 {self.status} {self.reason}".encode()]
        head += [_b(n) + b": " + _b(v) for n, v in self.headers]
        body = self.body
        if self.framing == "length":
            head.append(b"Content-Length: %d" % len(body))
        elif self.framing == "chunked":
            head.append(b"Transfer-Encoding: chunked")
            body = chunked_body(body[i: i + self.chunk_size]
                                for i in range(0, len(body), self.chunk_size))
        elif self.framing == "close":
            head.append(b"Connection: close")
        return b"\r\n".join(head) + b"\r\n\r\n" + body


@dataclasses.dataclass
class Seen:
    """One request as the receiver got it."""
    conn: int                # connection serial number (1, 2, ...)
    index: int               # position on that connection (0, 1, ...)
    raw_head: bytes
    method: str
    target: str
    version: str
    headers: list            # [(name, value)] in received order, exact case
    body: bytes              # b"" when the receiver only hashes bodies
    body_len: int
    body_sha256: str

    def header(self, name: str) -> Optional[str]:
        return single_header(self.headers, name)

    def names(self) -> list:
        return [n for n, _ in self.headers]


class LoopbackServer:
    """A listening socket on 127.0.0.1:0 served by an accept thread (the subclass's
    _accept_loop, which records every accepted socket in self._socks and every thread in
    self._threads). close() shuts them all and gives the threads 2 s."""

    def _listen(self, backlog: int):
        """Call last in __init__: the accept thread may use every attribute."""
        self._socks: list[socket.socket] = []
        self._closing = False
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(backlog)
        self.port = self.listener.getsockname()[1]
        self._threads = [threading.Thread(target=self._accept_loop, daemon=True)]
        self._threads[0].start()

    def close(self):
        self._closing = True
        for s in [self.listener] + self._socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            try:
                s.close()
            except OSError:
                pass
        end = deadline_in(2.0)  # handler threads may sleep (a Reply.delay): do not wait for them
        for t in self._threads:
            t.join(timeout=max(0.0, end - time.monotonic()))


def default_reply(seen: Seen) -> Reply:
    return Reply(body=f"{seen.method} {seen.target}".encode(), headers=[("X-Receiver", "1")])


class StrictReceiver(LoopbackServer):
    """A legacy HTTP/1.1 upstream on 127.0.0.1:0 (see the module doc)."""

    def __init__(self, keep_bodies: bool = True):
        self.keep_bodies = keep_bodies
        self._cv = threading.Condition()
        self._requests: list[Seen] = []
        self.violations: list[str] = []
        self.connections = 0
        self.closed_by_peer: set = set()  # connection ids the gateway closed between requests
        # One (head sent, ended, how) per trickled answer: how is "done" (the whole body went),
        # "closed" (the gateway closed the connection first) or "bytes" (it sent something).
        self.trickles: list = []
        self.handler: Callable[[Seen], Reply] = default_reply
        self._listen(256)

    @property
    def authority(self) -> str:
        return f"127.0.0.1:{self.port}"

    def url(self, path: str = "/") -> str:
        return f"http://{self.authority}{path}"

    # -- test side --------------------------------------------------------------------------
    def reset(self):
        """Forgets what was seen and restores the default answer (between tests)."""
        with self._cv:
            self._requests.clear()
            self.violations.clear()
            self.handler = default_reply

    def clear_requests(self):
        """Forgets the requests seen so far (violations are kept for assert_clean)."""
        with self._cv:
            self._requests.clear()

    def reply_with(self, *replies: Reply):
        """Answers the next requests with these replies in order, then repeats the last one."""
        queue = list(replies)

        def handler(seen):
            return queue.pop(0) if len(queue) > 1 else queue[0]
        self.handler = handler

    @property
    def requests(self) -> list[Seen]:
        with self._cv:
            return list(self._requests)

    def wait_requests(self, n: int, timeout: float = WAIT) -> list[Seen]:
        with self._cv:
            if not self._cv.wait_for(lambda: len(self._requests) >= n, timeout):
                raise WaitTimeout(f"receiver got {len(self._requests)} requests, expected {n}: "
                                  f"{[s.method + ' ' + s.target for s in self._requests]}; "
                                  f"violations {self.violations}")
            return list(self._requests)

    def wait_closed_by_peer(self, cid: int, timeout: float = WAIT):
        with self._cv:
            if not self._cv.wait_for(lambda: cid in self.closed_by_peer, timeout):
                raise WaitTimeout(f"the gateway did not close upstream connection {cid}")

    def wait_trickles(self, n: int, timeout: float = WAIT) -> list:
        """The first n trickled answers, once each has ended."""
        with self._cv:
            if not self._cv.wait_for(lambda: len(self.trickles) >= n, timeout):
                raise WaitTimeout(f"{len(self.trickles)} trickled answers ended, expected {n}")
            return list(self.trickles)

    def assert_clean(self):
        with self._cv:
            if self.violations:
                raise AssertionError("receiver saw protocol violations:\n  "
                                     + "\n  ".join(self.violations))

    def assert_nothing(self, settle: float = 0.3):
        """Nothing reached the receiver (waits `settle` seconds for stragglers)."""
        time.sleep(settle)
        with self._cv:
            if self._requests or self.violations:
                got = [(s.method, s.target, s.body[:80]) for s in self._requests]
                raise AssertionError(f"receiver should have seen nothing, got {got}, "
                                     f"violations {self.violations}")

    # -- server side ------------------------------------------------------------------------
    def _violation(self, cid: int, text: str):
        with self._cv:
            self.violations.append(f"connection {cid}: {text}")
            self._cv.notify_all()

    def _accept_loop(self):
        while not self._closing:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            with self._cv:
                self.connections += 1
                cid = self.connections
            self._socks.append(sock)
            t = threading.Thread(target=self._serve, args=(sock, cid), daemon=True)
            self._threads.append(t)
            t.start()

    def _serve(self, sock: socket.socket, cid: int):
        stream = Stream(sock, idle=60.0)
        try:
            index = 0
            while self._serve_one(stream, cid, index):
                index += 1
        except (WaitTimeout, OSError):
            pass
        except PeerClosed as e:
            self._violation(cid, f"closed mid-request: {e}")
        except ProtocolError as e:
            self._violation(cid, str(e))
            self._answer(sock, Reply(400, "Bad Request", action="close"))
        finally:
            sock.close()

    def _serve_one(self, stream: Stream, cid: int, index: int) -> bool:
        """Reads and answers one request; False when the connection is done."""
        if not stream.buf and not stream.fill(None):
            with self._cv:
                self.closed_by_peer.add(cid)  # clean close between requests
                self._cv.notify_all()
            return False
        m, fields, raw = read_request_head(stream)
        method = m.group(1).decode()
        cl = header_values(fields, "Content-Length")
        problem = None
        if header_values(fields, "Transfer-Encoding"):
            problem = f"Transfer-Encoding sent: {raw!r}"
        elif m.group(3) != b"HTTP/1.1":
            problem = f"outbound request not HTTP/1.1: {m.group(0)!r}"
        elif len(header_values(fields, "Host")) != 1:
            problem = f"not exactly one Host field: {raw!r}"
        elif len(cl) > 1 or (cl and not cl[0].isdigit()):
            problem = f"bad Content-Length {cl}"
        elif not cl and method in ("POST", "PUT", "PATCH"):
            problem = f"{method} without Content-Length: {raw!r}"
        if problem:
            self._violation(cid, problem)
            self._answer(stream.sock, Reply(411, "Length Required", action="close"))
            return False
        digest = hashlib.sha256()
        kept = bytearray()

        def sink(piece):
            digest.update(piece)
            if self.keep_bodies:
                kept.extend(piece)
        length = int(cl[0]) if cl else 0
        stream.read_exact(length, None, sink)
        seen = Seen(cid, index, raw, method, m.group(2).decode("latin-1"), m.group(3).decode(),
                    fields, bytes(kept), length, digest.hexdigest())
        with self._cv:
            self._requests.append(seen)
            self._cv.notify_all()
        try:
            reply = self.handler(seen)
        except Exception as e:  # a broken test handler must not hang the gateway
            self._violation(cid, f"handler raised {e!r}")
            reply = Reply(500, "Internal Server Error", action="close")
        if not self._answer(stream.sock, reply):
            return False
        if reply.idle_close is not None and not stream.buf:
            stream.sock.settimeout(reply.idle_close)
            try:
                data = stream.sock.recv(1 << 16)
            except socket.timeout:
                return False  # idle long enough: close it under the gateway's pooled connection
            if not data:
                return False
            stream.buf += data
        return True

    def _answer(self, sock: socket.socket, reply: Reply) -> bool:
        """Sends the reply; False when the connection must end afterwards."""
        try:
            if reply.delay:
                time.sleep(reply.delay)
            for interim in reply.interim:
                sock.sendall(interim)
            if reply.action == "drop":
                return False
            data = reply.encode()
            if reply.trickle:
                return self._trickle(sock, data, reply.trickle) and reply.action == "keep"
            if reply.action in ("cut", "reset", "stall"):
                sock.sendall(data[: reply.cut_at])
                time.sleep(0.05 + (reply.stall if reply.action == "stall" else 0))
                if reply.action == "reset":
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                return False
            sock.sendall(data)
        except OSError:
            return False
        return reply.action == "keep" and reply.framing != "close"

    def _trickle(self, sock: socket.socket, data: bytes, gap: float) -> bool:
        """Sends the head, then the body a byte at a time `gap` seconds apart, watching for the
        gateway closing the connection meanwhile; notes how it went in self.trickles."""
        body_at = data.index(b"\r\n\r\n") + 4
        began = time.monotonic()
        how = "done"
        try:
            sock.sendall(data[:body_at])
            for i in range(body_at, len(data)):
                if select.select([sock], [], [], gap)[0]:
                    how = "bytes" if sock.recv(1 << 16) else "closed"
                    break
                sock.sendall(data[i: i + 1])
        except OSError:
            how = "closed"
        with self._cv:
            self.trickles.append((began, time.monotonic(), how))
            self._cv.notify_all()
        return how == "done"


# --------------------------------------------------------------------------------------------
# Daemon
# --------------------------------------------------------------------------------------------

def yaml_scalar(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, int):
        return str(value)
    return json.dumps(str(value))  # a JSON string is a valid YAML double-quoted scalar


def to_yaml(value, indent: int = 0) -> str:
    """Block-style YAML for dicts, lists and scalars; strings always double-quoted."""
    pad = "  " * indent
    if isinstance(value, dict):
        lines = []
        for key, item in value.items():
            if isinstance(item, (dict, list)) and item:
                lines.append(f"{pad}{key}:\n{to_yaml(item, indent + 1)}")
            else:
                lines.append(f"{pad}{key}: {to_yaml(item)}")
        return "\n".join(lines) if lines else "{}"
    if isinstance(value, list):
        if not value:
            return "[]"
        lines = []
        for item in value:
            if isinstance(item, (dict, list)) and item:
                inner = to_yaml(item, indent + 1)
                lines.append(f"{pad}- {inner[len(pad) + 2:]}")
            else:
                lines.append(f"{pad}- {to_yaml(item)}")
        return "\n".join(lines)
    return yaml_scalar(value)


def _merge(base: dict, extra: dict) -> dict:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
    return base


class Daemon:
    """The real dechunkd on a generated config in its own temp dir.

    `Daemon(routes, limits={...}, timeouts={...})` starts from a test default (one listener on
    127.0.0.1:0, workers 1, storage and access log in the temp dir) and merges the sections given.
    `config_text=` writes that YAML verbatim instead.
    """

    def __init__(self, routes: Optional[list] = None, *, config_text: Optional[str] = None,
                 args: Iterable[str] = (), env: Optional[dict] = None, tmpdir: Optional[str] = None,
                 rlimits: Optional[dict] = None, **sections):
        self.tmp = tmpdir or tempfile.mkdtemp(prefix="dechunkd-it-")
        self._own_tmp = tmpdir is None
        self.storage_dir = os.path.join(self.tmp, "storage")
        self.access_log = os.path.join(self.tmp, "access.log")
        self.config_path = os.path.join(self.tmp, "dechunkd.yaml")
        if config_text is None:
            config = {
                "listen": [{"address": "127.0.0.1:0"}],
                "workers": 1,
                "storage": {"dir": self.storage_dir},
                "log": {"level": "info", "access": self.access_log},
                "routes": routes or [],
            }
            config_text = to_yaml(_merge(config, sections)) + "\n"
            self.config = config
        else:
            self.config = None
        self.config_text = config_text
        self.args = list(args)
        self.env = dict(os.environ, **(env or {}))
        self.rlimits = dict(rlimits or {})  # resource.RLIMIT_* -> (soft, hard), set in the child
        self.proc: Optional[subprocess.Popen] = None
        self.stderr_lines: list[str] = []
        self.stdout_lines: list[str] = []
        self._cv = threading.Condition()
        self._readers: list[threading.Thread] = []
        self.ports: list[int] = []

    # -- life cycle -------------------------------------------------------------------------
    def start(self, wait_ready: bool = True, listeners: int = 1) -> "Daemon":
        if not os.access(BIN, os.X_OK):
            raise AssertionError(f"dechunkd binary not found at {BIN} (set DECHUNKD_BIN)")
        with open(self.config_path, "w") as f:
            f.write(self.config_text)
        limits = self.rlimits

        def set_limits():
            for which, value in limits.items():
                resource.setrlimit(which, value)
        self.proc = subprocess.Popen([BIN, "-c", self.config_path, *self.args],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=self.env, cwd=self.tmp,
                                     preexec_fn=set_limits if limits else None)
        for pipe, lines in ((self.proc.stderr, self.stderr_lines),
                            (self.proc.stdout, self.stdout_lines)):
            t = threading.Thread(target=self._read_lines, args=(pipe, lines), daemon=True)
            t.start()
            self._readers.append(t)
        if wait_ready:
            self.wait_listening(listeners)
        return self

    def __enter__(self):
        return self.start()

    def config_with(self, **sections) -> str:
        """The YAML of this daemon's config with some sections replaced (for reloads)."""
        return to_yaml(_merge(copy.deepcopy(self.config), sections)) + "\n"

    def rewrite_config(self, text: str):
        self.config_text = text
        with open(self.config_path, "w") as f:
            f.write(text)

    def __exit__(self, *exc):
        self.close()

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def port(self) -> int:
        return self.ports[0]

    def _read_lines(self, pipe, lines):
        for raw in iter(pipe.readline, b""):
            with self._cv:
                lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
                self._cv.notify_all()
        pipe.close()
        with self._cv:
            self._cv.notify_all()

    def wait_listening(self, count: int = 1):
        found = []

        def ready():
            with self._cv:
                found[:] = [m for m in map(_LISTENING.search, self.stderr_lines) if m]
            if self.proc.poll() is not None and len(found) < count:
                raise AssertionError(f"dechunkd exited with {self.proc.returncode} before it was "
                                     f"ready:\n{self.stderr_text()}")
            return len(found) >= count
        wait_until(ready, START_WAIT, "the 'listening on' log line")
        self.ports = [int(m.group(2)) for m in found]

    def wait_log(self, pattern: str, timeout: float = WAIT, start: int = 0) -> re.Match:
        """Waits for a stderr line (from index `start` on) matching the regex."""
        rx = re.compile(pattern)

        def find():
            with self._cv:
                for line in self.stderr_lines[start:]:
                    m = rx.search(line)
                    if m:
                        return m
            return None
        try:
            return wait_until(find, timeout, f"a log line matching {pattern!r}")
        except WaitTimeout as e:
            raise WaitTimeout(f"{e}\nlog:\n{self.stderr_text()}") from None

    def log_mark(self) -> int:
        with self._cv:
            return len(self.stderr_lines)

    def stderr_text(self, start: int = 0) -> str:
        with self._cv:
            return "\n".join(self.stderr_lines[start:])

    def send_signal(self, sig: int):
        self.proc.send_signal(sig)

    def wait_exit(self, timeout: float = WAIT) -> int:
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise WaitTimeout(f"dechunkd did not exit within {timeout:.1f}s") from None
        for t in self._readers:
            t.join(timeout=2)
        return rc

    def stop(self, sig: int = signal.SIGTERM, timeout: float = WAIT) -> int:
        """Graceful stop; the exit status must be 0."""
        if self.proc.poll() is None:
            self.send_signal(sig)
        rc = self.wait_exit(timeout)
        if rc != 0:
            raise AssertionError(f"dechunkd exited with {rc} after "
                                 f"{signal.Signals(sig).name}:\n{self.stderr_text()[-4000:]}")
        return rc

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def close(self):
        """Always safe: kills a still running daemon and removes the temp dir."""
        try:
            if self.proc and self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(scaled(5))
                except subprocess.TimeoutExpired:
                    self.kill()
        finally:
            if self._own_tmp:
                shutil.rmtree(self.tmp, ignore_errors=True)

    # -- observations -----------------------------------------------------------------------
    def access_log_entries(self, count: int, timeout: float = WAIT) -> list[dict]:
        """Waits until the access log has at least `count` JSON lines; returns them parsed."""
        def read():
            try:
                with open(self.access_log, "rb") as f:
                    lines = [l for l in f.read().split(b"\n") if l.strip()]
            except FileNotFoundError:
                return None
            return lines if len(lines) >= count else None
        lines = wait_until(read, timeout, f"{count} access log lines")
        return [json.loads(l) for l in lines]

    def memory_kib(self, field: str = "VmHWM") -> int:
        """A /proc/PID/status memory figure: VmHWM (peak RSS) or VmRSS."""
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
        raise AssertionError(f"no {field} in /proc/{self.pid}/status")


def run_cli(*args: str, timeout: float = WAIT, cwd: Optional[str] = None,
            env: Optional[dict] = None) -> subprocess.CompletedProcess:
    """Runs the binary to completion (for --version, --check, ...)."""
    if not os.access(BIN, os.X_OK):
        raise AssertionError(f"dechunkd binary not found at {BIN} (set DECHUNKD_BIN)")
    return subprocess.run([BIN, *args], capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          stdin=subprocess.DEVNULL, env=dict(os.environ, **(env or {})))


# --------------------------------------------------------------------------------------------
# unittest base
# --------------------------------------------------------------------------------------------

ERROR_WORDS = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "no_route",
    405: "method_not_allowed", 408: "request_timeout", 413: "body_too_large",
    414: "uri_too_long", 417: "expectation_failed", 431: "headers_too_large",
    500: "internal_error", 501: "not_implemented", 502: "bad_gateway", 503: "overloaded",
    504: "gateway_timeout", 505: "http_version_not_supported",
}


class GatewayCase(unittest.TestCase):
    """One daemon per test class, in front of named StrictReceivers.

    Subclasses implement `gateway(cls) -> Daemon`; routes point at cls.r[name].url(...), and
    cls.rcv is the first one. Each test starts with fresh receiver records and must leave no
    receiver violations.
    """

    receiver_names: tuple = ("main",)
    keep_bodies = True
    reject_settle = 0.3  # seconds a rejection waits for a wrongly forwarded request

    @classmethod
    def gateway(cls) -> Daemon:
        raise NotImplementedError

    @classmethod
    def setUpClass(cls):
        cls.r = {name: StrictReceiver(cls.keep_bodies) for name in cls.receiver_names}
        for r in cls.r.values():
            cls.addClassCleanup(r.close)
        cls.rcv = cls.r[cls.receiver_names[0]] if cls.receiver_names else None
        cls.gw = cls.gateway()
        cls.addClassCleanup(cls.gw.close)
        cls.gw.start()

    @classmethod
    def tearDownClass(cls):
        cls.gw.stop()  # graceful stop must exit 0 (and under ASan: without leaks)
        time.sleep(0.1)  # the receivers see the pooled connections close
        for r in cls.r.values():
            r.assert_clean()  # e.g. stray bytes after a body, seen only at the close

    def setUp(self):
        for r in self.r.values():
            r.reset()

    def tearDown(self):
        for r in self.r.values():
            r.assert_clean()

    # -- helpers ----------------------------------------------------------------------------
    def connect(self, port: Optional[int] = None) -> Client:
        c = Client(port or self.gw.port)
        self.addCleanup(c.close)
        return c

    def exchange(self, raw: bytes, method: str = "POST", client: Optional[Client] = None,
                 **send_kw) -> tuple[Response, Client]:
        """Sends raw (on a new connection unless given one) and reads the final response."""
        c = client or self.connect()
        c.send(raw, **send_kw)
        return c.final_response(method), c

    def forward(self, raw: bytes, receiver: Optional[StrictReceiver] = None, status: int = 200,
                method: str = "POST", **send_kw) -> tuple[Seen, Response]:
        """raw must reach the receiver exactly once and its answer come back."""
        rcv = receiver or self.rcv
        resp, _ = self.exchange(raw, method, **send_kw)
        self.assertEqual(resp.status, status, f"response: {resp}\nreceiver: {rcv.requests}")
        seen = rcv.wait_requests(1)
        self.assertEqual(len(seen), 1, f"receiver got {len(seen)} requests")
        self.assert_request_id(resp)
        return seen[0], resp

    def assert_request_id(self, resp: Response):
        rid = resp.header("X-Request-Id")
        self.assertTrue(rid, f"response without X-Request-Id: {resp}")
        return rid

    def assert_error(self, resp: Response, status: int, word: Optional[str] = None):
        """A gateway error answer: status, JSON body with error/message/request_id."""
        self.assertEqual(resp.status, status, f"response: {resp}")
        ctype = resp.header("Content-Type") or ""
        self.assertEqual(ctype.split(";")[0].strip(), "application/json", f"response: {resp}")
        body = resp.json()
        self.assertEqual(set(body), {"error", "message", "request_id"}, f"body: {body}")
        self.assertEqual(body["error"], word or ERROR_WORDS[status])
        self.assertIsInstance(body["message"], str)
        self.assertTrue(body["message"].strip(), "empty error message")
        self.assertEqual(body["request_id"], self.assert_request_id(resp))
        return body

    def assert_rejected(self, raw: bytes, status: int, word: Optional[str] = None,
                        closed: Optional[bool] = True, receiver: Optional[StrictReceiver] = None,
                        method: str = "POST", **send_kw) -> Response:
        """The gateway answers an error itself; the receiver sees nothing; the connection is
        closed (closed=True), kept (False) or not checked (None)."""
        watched = [receiver] if receiver else list(self.r.values())
        for r in watched:
            r.clear_requests()
        resp, c = self.exchange(raw, method, **send_kw)
        self.assert_error(resp, status, word)
        if closed is not None:
            self.assertEqual(c.is_closed(WAIT if closed else 0.5), closed,
                             "connection should be " + ("closed" if closed else "kept open"))
        time.sleep(self.reject_settle)  # let a wrongly forwarded request arrive before looking
        for r in watched:
            r.assert_nothing(settle=0)
        return resp

    def assert_headers(self, actual: list, expected: list):
        """Exact field list (order, case, values); ANY matches any value."""
        self.assertEqual(len(actual), len(expected),
                         f"\nactual:   {actual}\nexpected: {expected}")
        for a, e in zip(actual, expected):
            self.assertEqual(a, e, f"\nactual:   {actual}\nexpected: {expected}")

    def assert_forwarded(self, seen: Seen, target: str, body: bytes, method: str = "POST"):
        """Request line, Content-Length, no TE/Expect, and the exact body."""
        self.assertEqual((seen.method, seen.target, seen.version), (method, target, "HTTP/1.1"))
        self.assertIsNone(seen.header("Transfer-Encoding"))
        self.assertIsNone(seen.header("Expect"))
        self.assertEqual(seen.header("Content-Length"), str(len(body)))
        self.assertEqual(seen.body_len, len(body))
        self.assertEqual(seen.body_sha256, hashlib.sha256(body).hexdigest(), "body differs")
