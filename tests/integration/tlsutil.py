"""TLS helpers for the integration tests (Python 3 stdlib plus the `openssl` command line).

- CertFactory: makes a throw-away PKI in a temp dir at test time (nothing is committed): a test
  CA, a server certificate for localhost/127.0.0.1, one for another name only, an already expired
  one, a client certificate (clientAuth), and a second CA that nobody trusts. EC P-256 keys.
- TlsReceiver: a small threaded HTTPS upstream. It reads HTTP/1.1 requests framed by
  Content-Length (keep-alive: several per connection), records each with the TLS connection it
  came on and the SNI name, and answers 200 with a body. It can require a client certificate
  signed by the CA. Failed handshakes are recorded too.
- ConnectProxy: a small HTTP CONNECT proxy, one thread per connection. It records every request
  head it gets, connects to the named host:port, answers `200 Connection established` and pipes
  bytes both ways; or it refuses with a scripted status (e.g. 407).

Every wait has a deadline; everything is closed by close().
"""
from __future__ import annotations

import dataclasses
import os
import select
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from typing import Optional

from harness import WAIT, LoopbackServer, WaitTimeout


def openssl(*args: str, cwd: Optional[str] = None, input: Optional[bytes] = None) -> bytes:
    """Runs the openssl CLI; raises with its stderr on failure."""
    proc = subprocess.run(["openssl", *args], cwd=cwd, input=input, capture_output=True,
                          timeout=60)
    if proc.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed ({proc.returncode}):\n"
                           f"{proc.stderr.decode(errors='replace')}")
    return proc.stdout


_REQ_CNF = """\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = {cn}
[v3_ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
"""

_EXT_CNF = """\
[leaf]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = {eku}
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
{san}
"""

_CA_CNF = """\
[ca]
default_ca = CA_default
[CA_default]
dir = {dir}
database = $dir/index.txt
new_certs_dir = $dir/newcerts
certificate = $dir/{ca}.pem
private_key = $dir/{ca}.key
serial = $dir/serial
default_md = sha256
policy = policy_any
unique_subject = no
email_in_dn = no
[policy_any]
commonName = supplied
"""


@dataclasses.dataclass
class Issued:
    cert: str   # PEM path of the certificate
    key: str    # PEM path of its private key
    chain: str  # PEM path of the certificate followed by its issuer (a full chain)


class CertFactory:
    """A temporary PKI. Attributes after creation:

    ca_cert, ca_key      the test CA (trusted via ca_file / the receiver's client CA)
    server               SAN DNS:localhost, IP:127.0.0.1 (serverAuth)
    wrong_name           SAN DNS:other.test only
    localhost_only       SAN DNS:localhost only (no IP SAN)
    expired              valid 2020-01-01 .. 2020-01-02 only (SAN as server)
    client               clientAuth, CN=dechunkd-client
    other_ca_cert        a second CA nobody trusts
    untrusted            like server, but issued by the second CA
    """

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="dechunkd-pki-")
        self._serial = 0x1000
        try:
            self.ca_cert, self.ca_key = self._ca("ca", "dechunkd test CA")
            self.other_ca_cert, self.other_ca_key = self._ca("other-ca", "untrusted test CA")
            server_san = "subjectAltName = DNS:localhost, IP:127.0.0.1"
            self.server = self._leaf("server", "localhost", server_san)
            self.wrong_name = self._leaf("wrong", "other.test",
                                         "subjectAltName = DNS:other.test")
            self.localhost_only = self._leaf("localhost-only", "localhost",
                                             "subjectAltName = DNS:localhost")
            self.client = self._leaf("client", "dechunkd-client", "", eku="clientAuth")
            self.untrusted = self._leaf("untrusted", "localhost", server_san, ca="other-ca")
            self.expired = self._expired_leaf("expired", "localhost", server_san)
        except Exception:
            self.close()
            raise

    def path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def write(self, name: str, data: bytes | str) -> str:
        p = self.path(name)
        with open(p, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        return p

    def _key(self, name: str) -> str:
        key = self.path(name + ".key")
        openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
                "-out", key)
        return key

    def _ca(self, name: str, cn: str) -> tuple[str, str]:
        key = self._key(name)
        cnf = self.write(name + "-req.cnf", _REQ_CNF.format(cn=cn))
        cert = self.path(name + ".pem")
        openssl("req", "-x509", "-new", "-key", key, "-config", cnf, "-extensions", "v3_ca",
                "-days", "3650", "-sha256", "-out", cert)
        return cert, key

    def _csr(self, name: str, cn: str) -> tuple[str, str]:
        key = self._key(name)
        cnf = self.write(name + "-req.cnf", _REQ_CNF.format(cn=cn))
        csr = self.path(name + ".csr")
        openssl("req", "-new", "-key", key, "-config", cnf, "-out", csr)
        return csr, key

    def _ext(self, name: str, san: str, eku: str) -> str:
        return self.write(name + "-ext.cnf", _EXT_CNF.format(san=san, eku=eku))

    def _chain(self, name: str, cert: str, ca: str) -> str:
        with open(cert, "rb") as a, open(self.path(ca + ".pem"), "rb") as b:
            return self.write(name + "-chain.pem", a.read() + b.read())

    def _leaf(self, name: str, cn: str, san: str, eku: str = "serverAuth",
              ca: str = "ca") -> Issued:
        csr, key = self._csr(name, cn)
        ext = self._ext(name, san, eku)
        cert = self.path(name + ".pem")
        self._serial += 1
        openssl("x509", "-req", "-in", csr, "-CA", self.path(ca + ".pem"),
                "-CAkey", self.path(ca + ".key"), "-set_serial", str(self._serial),
                "-days", "30", "-sha256", "-extfile", ext, "-extensions", "leaf", "-out", cert)
        return Issued(cert, key, self._chain(name, cert, ca))

    def _expired_leaf(self, name: str, cn: str, san: str) -> Issued:
        """OpenSSL 3.0's `x509` cannot back-date: `openssl ca` with -startdate/-enddate can."""
        csr, key = self._csr(name, cn)
        ext = self._ext(name, san, "serverAuth")
        cadir = self.path("ca-db")
        os.makedirs(os.path.join(cadir, "newcerts"))
        shutil.copy(self.ca_cert, os.path.join(cadir, "ca.pem"))
        shutil.copy(self.ca_key, os.path.join(cadir, "ca.key"))
        open(os.path.join(cadir, "index.txt"), "w").close()
        with open(os.path.join(cadir, "serial"), "w") as f:
            f.write("2001\n")
        cnf = self.write("ca.cnf", _CA_CNF.format(dir=cadir, ca="ca"))
        cert = self.path(name + ".pem")
        openssl("ca", "-batch", "-config", cnf, "-startdate", "20200101000000Z",
                "-enddate", "20200102000000Z", "-extfile", ext, "-extensions", "leaf",
                "-notext", "-in", csr, "-out", cert)
        return Issued(cert, key, self._chain(name, cert, "ca"))

    def close(self):
        shutil.rmtree(self.dir, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# HTTPS upstream
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass
class TlsSeen:
    conn: int            # TLS connection serial number (1, 2, ...)
    index: int           # position on that connection
    request_line: str
    headers: list        # [(name, value)] as received
    body: bytes
    sni: Optional[str]   # the server name the client sent (None: no SNI)
    peer_cert: Optional[dict]  # the verified client certificate (getpeercert()), if any
    version: str         # negotiated TLS version

    def header(self, name: str) -> Optional[str]:
        values = [v for n, v in self.headers if n.lower() == name.lower()]
        if len(values) > 1:
            raise AssertionError(f"{name} sent {len(values)} times: {values}")
        return values[0] if values else None


class TlsReceiver(LoopbackServer):
    """An HTTPS upstream on 127.0.0.1:0 with the given certificate (see the module doc)."""

    def __init__(self, issued: Issued, client_ca: Optional[str] = None, body: bytes = b"tls-ok",
                 send_chain: bool = True, close_after: bool = False):
        # send_chain: serve the certificate with its issuer (False: the leaf alone)
        # close_after: close each connection shortly after its first answer, without saying so
        # in the answer (a keep-alive target whose idle timeout ran out)
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        self.ctx.load_cert_chain(issued.chain if send_chain else issued.cert, issued.key)
        if client_ca:
            self.ctx.verify_mode = ssl.CERT_REQUIRED
            self.ctx.load_verify_locations(client_ca)
        self._sni_names: dict = {}  # id(SSLSocket) -> the SNI name it sent
        self.ctx.sni_callback = self._on_sni
        self.body = body
        self.close_after = close_after
        self._cv = threading.Condition()
        self.requests: list[TlsSeen] = []
        self.handshake_errors: list[str] = []
        self.connections = 0       # TCP connections accepted
        self.tls_connections = 0   # handshakes completed
        self.violations: list[str] = []
        self._listen(64)

    def url(self, path: str = "/", host: str = "127.0.0.1") -> str:
        return f"https://{host}:{self.port}{path}"

    def _on_sni(self, sslsock, name, ctx):
        # Called during the handshake with the SSLSocket being served; no SNI -> not called
        # (or called with None).
        self._sni_names[id(sslsock)] = name

    def reset(self):
        with self._cv:
            self.requests.clear()
            self.handshake_errors.clear()
            self.violations.clear()

    def wait_requests(self, n: int, timeout: float = WAIT) -> list[TlsSeen]:
        with self._cv:
            if not self._cv.wait_for(lambda: len(self.requests) >= n, timeout):
                raise WaitTimeout(f"TLS receiver got {len(self.requests)} requests, expected {n};"
                                  f" handshake errors {self.handshake_errors}")
            return list(self.requests)

    def wait_handshake_error(self, timeout: float = WAIT) -> list[str]:
        with self._cv:
            if not self._cv.wait_for(lambda: self.handshake_errors, timeout):
                raise WaitTimeout("the TLS receiver saw no failed handshake")
            return list(self.handshake_errors)

    def _accept_loop(self):
        while not self._closing:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            with self._cv:
                self.connections += 1
            self._socks.append(sock)
            t = threading.Thread(target=self._serve, args=(sock,), daemon=True)
            self._threads.append(t)
            t.start()

    def _serve(self, raw: socket.socket):
        raw.settimeout(WAIT * 4)
        try:
            tls = self.ctx.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
            self._socks.append(tls)
            tls.do_handshake()
        except (ssl.SSLError, OSError) as e:
            with self._cv:
                self.handshake_errors.append(str(e))
                self._cv.notify_all()
            raw.close()
            return
        with self._cv:
            self.tls_connections += 1
            cid = self.tls_connections
        sni = self._sni_names.pop(id(tls), None)
        peer = tls.getpeercert() or None
        version = tls.version()
        buf = bytearray()
        index = 0
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    data = tls.recv(65536)
                    if not data:
                        return
                    buf += data
                head, _, rest = bytes(buf).partition(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                fields = []
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    fields.append((name, value.strip(" \t")))
                names = [n.lower() for n, _ in fields]
                if "transfer-encoding" in names:
                    self._violation(f"Transfer-Encoding sent: {head!r}")
                cl = [v for n, v in fields if n.lower() == "content-length"]
                length = int(cl[0]) if cl else 0
                buf = bytearray(rest)
                while len(buf) < length:
                    data = tls.recv(65536)
                    if not data:
                        self._violation("closed mid-body")
                        return
                    buf += data
                body, buf = bytes(buf[:length]), bytearray(buf[length:])
                seen = TlsSeen(cid, index, lines[0], fields, body, sni, peer, version)
                with self._cv:
                    self.requests.append(seen)
                    self._cv.notify_all()
                index += 1
                tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                            b"Content-Length: %d\r\n\r\n%s" % (len(self.body), self.body))
                if self.close_after:
                    time.sleep(0.05)
                    return
        except (ssl.SSLError, OSError, ValueError):
            return
        finally:
            try:
                tls.close()
            except OSError:
                pass

    def _violation(self, text: str):
        with self._cv:
            self.violations.append(text)
            self._cv.notify_all()


# --------------------------------------------------------------------------------------------
# CONNECT proxy
# --------------------------------------------------------------------------------------------

class ConnectProxy(LoopbackServer):
    """An HTTP CONNECT proxy on 127.0.0.1:0 (see the module doc)."""

    def __init__(self, refuse: Optional[bytes] = None):
        # refuse: the full answer to send instead of opening the tunnel (then close)
        self.refuse = refuse
        self._cv = threading.Condition()
        self.heads: list[bytes] = []   # every request head received, raw
        self.errors: list[str] = []
        self._listen(64)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def request_lines(self) -> list[str]:
        with self._cv:
            return [h.split(b"\r\n", 1)[0].decode("latin-1") for h in self.heads]

    def reset(self):
        with self._cv:
            self.heads.clear()
            self.errors.clear()

    def wait_heads(self, n: int, timeout: float = WAIT) -> list[bytes]:
        with self._cv:
            if not self._cv.wait_for(lambda: len(self.heads) >= n, timeout):
                raise WaitTimeout(f"proxy got {len(self.heads)} CONNECT heads, expected {n}")
            return list(self.heads)

    def _accept_loop(self):
        while not self._closing:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            self._socks.append(sock)
            t = threading.Thread(target=self._serve, args=(sock,), daemon=True)
            self._threads.append(t)
            t.start()

    def _serve(self, client: socket.socket):
        client.settimeout(WAIT * 4)
        upstream = None
        try:
            buf = b""
            while b"\r\n\r\n" not in buf:
                data = client.recv(4096)
                if not data:
                    return
                buf += data
                if len(buf) > 65536:
                    return
            head, _, rest = buf.partition(b"\r\n\r\n")
            with self._cv:
                self.heads.append(head + b"\r\n\r\n")
                self._cv.notify_all()
            parts = head.split(b"\r\n", 1)[0].split(b" ")
            if len(parts) != 3 or parts[0] != b"CONNECT" or parts[2] != b"HTTP/1.1":
                client.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                return
            if self.refuse is not None:
                client.sendall(self.refuse)
                return
            host, _, port = parts[1].decode().rpartition(":")
            try:
                upstream = socket.create_connection((host.strip("[]"), int(port)), timeout=WAIT)
            except OSError as e:
                with self._cv:
                    self.errors.append(f"connect {parts[1]!r}: {e}")
                client.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
                return
            self._socks.append(upstream)
            client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            if rest:
                upstream.sendall(rest)
            self._pipe(client, upstream)
        except OSError:
            return
        finally:
            for s in (client, upstream):
                if s is not None:
                    try:
                        s.close()
                    except OSError:
                        pass

    def _pipe(self, a: socket.socket, b: socket.socket):
        socks = [a, b]
        while not self._closing:
            readable, _, _ = select.select(socks, [], [], 1.0)
            for s in readable:
                data = s.recv(65536)
                if not data:
                    return
                (b if s is a else a).sendall(data)
