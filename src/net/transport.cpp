#include "net/transport.hpp"

#include <openssl/err.h>
#include <openssl/x509.h>
#include <unistd.h>

#include <cerrno>

namespace dechunkd {

namespace {
constexpr size_t kTlsRecord = 16 * 1024;  // fill whole TLS records when there is enough to send
}

size_t PlainTransport::read(char* buf, size_t n, IoStatus* st, int* err) {
  for (;;) {
    ssize_t r = ::read(fd_, buf, n);
    if (r > 0) return static_cast<size_t>(r);
    if (r == 0) {
      *st = IoStatus::Closed;
      return 0;
    }
    if (errno == EINTR) continue;
    if (errno == EAGAIN) {
      *st = IoStatus::WouldBlock;
      return 0;
    }
    *err = errno;
    *st = IoStatus::Error;
    return 0;
  }
}

std::string tls_error_string(SSL* ssl) {
  std::string out;
  if (ssl) {
    long v = SSL_get_verify_result(ssl);
    if (v != X509_V_OK) out = std::string("certificate verification failed: ") + X509_verify_cert_error_string(v);
  }
  unsigned long e;
  char buf[256];
  while ((e = ERR_get_error()) != 0) {
    if (out.empty()) {
      ERR_error_string_n(e, buf, sizeof buf);
      out = buf;
    }
  }
  return out.empty() ? "TLS connection failed" : out;
}

TlsTransport::TlsTransport(int fd, SSL_CTX* ctx, bool server) : Transport(fd), ssl_(SSL_new(ctx)) {
  if (!ssl_) return;
  SSL_set_fd(ssl_.get(), fd);
  SSL_set_mode(ssl_.get(), SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                               SSL_MODE_RELEASE_BUFFERS);
  if (server) SSL_set_accept_state(ssl_.get()); else SSL_set_connect_state(ssl_.get());
}

IoStatus TlsTransport::classify(int ret, int* err, bool reading) {
  int e = SSL_get_error(ssl_.get(), ret);
  switch (e) {
    case SSL_ERROR_WANT_READ:
      if (!reading) write_wants_read_ = true;
      return IoStatus::WouldBlock;
    case SSL_ERROR_WANT_WRITE:
      if (reading) read_wants_write_ = true;
      return IoStatus::WouldBlock;
    case SSL_ERROR_ZERO_RETURN:
      return IoStatus::Closed;
    case SSL_ERROR_SYSCALL:
      if (errno == EAGAIN || errno == EINTR) return IoStatus::WouldBlock;
      *err = errno != 0 ? errno : ECONNRESET;
      detail_ = ERR_peek_error() != 0 ? tls_error_string(ssl_.get()) : "connection closed during TLS";
      ERR_clear_error();
      return IoStatus::Error;
    default:
      *err = EPROTO;
      // OpenSSL recognises "GET ", "POST ", "HEAD ", "PUT " and "CONNE" where a ClientHello
      // belongs, and sends no alert for them.
      plain_http_ = ERR_GET_LIB(ERR_peek_error()) == ERR_LIB_SSL &&
                    (ERR_GET_REASON(ERR_peek_error()) == SSL_R_HTTP_REQUEST ||
                     ERR_GET_REASON(ERR_peek_error()) == SSL_R_HTTPS_PROXY_REQUEST);
      detail_ = tls_error_string(ssl_.get());
      return IoStatus::Error;
  }
}

size_t TlsTransport::read(char* buf, size_t n, IoStatus* st, int* err) {
  read_wants_write_ = false;
  ERR_clear_error();
  int r = SSL_read(ssl_.get(), buf, static_cast<int>(n > (1u << 30) ? (1u << 30) : n));
  if (r > 0) return static_cast<size_t>(r);
  *st = classify(r, err, true);
  return 0;
}

bool TlsTransport::has_buffered_input() const { return SSL_pending(ssl_.get()) > 0; }

IoStatus TlsTransport::flush(OutQueue& q, int* err) {
  write_wants_read_ = false;
  for (;;) {
    if (staging_.empty()) {
      if (q.empty()) return IoStatus::Done;
      staging_.resize(kTlsRecord);
      size_t got = q.copy_out(staging_.data(), kTlsRecord, err);
      if (got == 0 && !q.empty()) {
        staging_.clear();
        return IoStatus::Error;  // a spill file could not be read
      }
      staging_.resize(got);
    }
    ERR_clear_error();
    int r = SSL_write(ssl_.get(), staging_.data(), static_cast<int>(staging_.size()));
    if (r > 0) {
      staging_.erase(0, static_cast<size_t>(r));
      continue;
    }
    IoStatus s = classify(r, err, false);
    if (s == IoStatus::Closed) {
      *err = EPIPE;
      return IoStatus::Error;
    }
    return s;
  }
}

void TlsTransport::shutdown_tls() {
  if (ssl_ && handshake_done()) {
    ERR_clear_error();
    SSL_shutdown(ssl_.get());  // one close_notify; the peer's is not waited for
    ERR_clear_error();
  }
}

}  // namespace dechunkd
