// The one place that knows whether a socket is TLS (STYLE 2). Connections read and write
// through a Transport: PlainTransport is a thin read()/sendmsg()/sendfile() layer (the fast
// path of PERF-NOTES); TlsTransport runs OpenSSL on the same non-blocking socket (SSL_set_fd,
// handshake done implicitly by the first SSL_read/SSL_write).
#pragma once
#include <openssl/ssl.h>

#include <cstddef>
#include <memory>
#include <string>

#include "net/buffer.hpp"

namespace dechunkd {

struct SslCtxDeleter {
  void operator()(SSL_CTX* c) const { SSL_CTX_free(c); }
};
struct SslDeleter {
  void operator()(SSL* s) const { SSL_free(s); }
};
using SslCtxPtr = std::unique_ptr<SSL_CTX, SslCtxDeleter>;
using SslPtr = std::unique_ptr<SSL, SslDeleter>;

class Transport {
 public:
  virtual ~Transport() = default;
  // Reads up to n bytes: returns the count (> 0), or 0 with *st = Closed (orderly EOF),
  // WouldBlock or Error (*err = errno, or EPROTO for a TLS failure: see error_detail()).
  virtual size_t read(char* buf, size_t n, IoStatus* st, int* err) = 0;
  // Writes as much of q as the socket takes.
  virtual IoStatus flush(OutQueue& q, int* err) = 0;
  // Bytes decrypted but not yet returned by read(): the socket will not signal them.
  virtual bool has_buffered_input() const { return false; }
  // TLS: the last read or write could not proceed until the socket is writable / readable.
  virtual bool read_wants_write() const { return false; }
  virtual bool write_wants_read() const { return false; }
  virtual bool is_tls() const { return false; }
  // TLS: the handshake has not finished yet.
  virtual bool handshaking() const { return false; }
  // Sends close_notify (TLS) before the caller shuts the socket down.
  virtual void shutdown_tls() {}
  // The TLS failure reason (OpenSSL error queue, certificate verification result).
  virtual std::string error_detail() const { return ""; }
  // TLS server: the failure was a plain HTTP request where a handshake was expected.
  virtual bool plain_http_seen() const { return false; }
  int fd() const { return fd_; }

 protected:
  explicit Transport(int fd) : fd_(fd) {}
  int fd_;
};

class PlainTransport final : public Transport {
 public:
  explicit PlainTransport(int fd) : Transport(fd) {}
  size_t read(char* buf, size_t n, IoStatus* st, int* err) override;
  IoStatus flush(OutQueue& q, int* err) override { return q.flush(fd_, err); }
};

class TlsTransport final : public Transport {
 public:
  // server: accept side (inbound); otherwise connect side. The SSL object is configured by the
  // caller (SNI, host check, session) before the first read/flush.
  TlsTransport(int fd, SSL_CTX* ctx, bool server);
  SSL* ssl() const { return ssl_.get(); }
  bool ok() const { return ssl_ != nullptr; }
  size_t read(char* buf, size_t n, IoStatus* st, int* err) override;
  IoStatus flush(OutQueue& q, int* err) override;
  bool has_buffered_input() const override;
  bool read_wants_write() const override { return read_wants_write_; }
  bool write_wants_read() const override { return write_wants_read_; }
  bool is_tls() const override { return true; }
  bool handshaking() const override { return !handshake_done(); }
  void shutdown_tls() override;
  std::string error_detail() const override { return detail_; }
  bool plain_http_seen() const override { return plain_http_; }
  bool handshake_done() const { return SSL_is_init_finished(ssl_.get()) == 1; }

 private:
  IoStatus classify(int ret, int* err, bool reading);
  SslPtr ssl_;
  std::string staging_;      // plaintext handed to SSL_write and not yet accepted by it
  bool read_wants_write_ = false;
  bool write_wants_read_ = false;
  bool plain_http_ = false;
  std::string detail_;
};

// "certificate has expired", "unable to get local issuer certificate", ... or the top of the
// OpenSSL error queue; clears the queue.
std::string tls_error_string(SSL* ssl);

}  // namespace dechunkd
