#include "upstream/upstream.hpp"

#include <arpa/inet.h>
#include <event2/dns.h>
#include <event2/util.h>
#include <netinet/in.h>
#include <openssl/x509v3.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "log/log.hpp"
#include "net/socket.hpp"
#include "server/runtime.hpp"

namespace dechunkd {

using std::chrono::milliseconds;

// ---------------------------------------------------------------------------------------------
// UpstreamConn

UpstreamConn::UpstreamConn(Worker& w, int fd, std::string key)
    : fd_(fd), key_(std::move(key)), transport_(std::make_unique<PlainTransport>(fd)) {
  read_ev_.reset(event_new(w.base(), fd_, EV_READ | EV_PERSIST, on_read, this));
  write_ev_.reset(event_new(w.base(), fd_, EV_WRITE | EV_PERSIST, on_write, this));
  idle_timer_.emplace(w.base(), on_idle, this);
}

UpstreamConn::~UpstreamConn() {
  read_ev_.reset();
  write_ev_.reset();
  idle_timer_.reset();
  transport_.reset();
  if (fd_ >= 0) ::close(fd_);
}

void UpstreamConn::want_read(bool on) {
  if (on == reading_) return;
  reading_ = on;
  if (on) event_add(read_ev_.get(), nullptr); else event_del(read_ev_.get());
}

void UpstreamConn::want_write(bool on) {
  if (on == writing_) return;
  writing_ = on;
  if (on) event_add(write_ev_.get(), nullptr); else event_del(write_ev_.get());
}

void UpstreamConn::on_read(evutil_socket_t, short, void* arg) {
  auto* c = static_cast<UpstreamConn*>(arg);
  if (c->handler_) c->handler_->upstream_readable(*c);
}

void UpstreamConn::on_write(evutil_socket_t, short, void* arg) {
  auto* c = static_cast<UpstreamConn*>(arg);
  if (c->handler_) c->handler_->upstream_writable(*c);
}

void UpstreamConn::on_idle(void* arg) {
  auto* c = static_cast<UpstreamConn*>(arg);
  if (c->handler_) c->handler_->upstream_idle_timeout(*c);
}

// ---------------------------------------------------------------------------------------------
// UpstreamPool

UpstreamPool::~UpstreamPool() { clear(); }

void UpstreamPool::clear() { idle_.clear(); }

size_t UpstreamPool::idle_count() const {
  size_t n = 0;
  for (auto& kv : idle_) n += kv.second.size();
  return n;
}

std::unique_ptr<UpstreamConn> UpstreamPool::take(const std::string& key) {
  auto it = idle_.find(key);
  if (it == idle_.end() || it->second.empty()) return nullptr;
  // Most recently used first: the least likely to have been closed by the target meanwhile.
  std::unique_ptr<UpstreamConn> c = std::move(it->second.back());
  it->second.pop_back();
  c->disarm_idle_timer();
  // Reading stays enabled: the call reads this connection next, and not toggling it saves two
  // epoll_ctl calls per request (PERF-NOTES).
  c->set_handler(nullptr);
  c->reused = true;
  return c;
}

void UpstreamPool::give(std::unique_ptr<UpstreamConn> c, milliseconds idle_timeout, size_t max_idle) {
  if (max_idle == 0 || worker_.draining()) return;  // closes it
  auto& list = idle_[c->key()];
  if (list.size() >= max_idle) list.erase(list.begin());  // drop the oldest
  c->set_handler(this);
  c->want_write(false);
  c->want_read(true);  // notices the target closing it while idle
  c->arm_idle_timer(idle_timeout);
  list.push_back(std::move(c));
}

void UpstreamPool::upstream_readable(UpstreamConn& c) {
  // An idle connection must stay silent: EOF, an error or stray bytes all end it.
  remove(&c);
}

void UpstreamPool::upstream_idle_timeout(UpstreamConn& c) { remove(&c); }

void UpstreamPool::remove(UpstreamConn* c) {
  auto it = idle_.find(c->key());
  if (it == idle_.end()) return;
  auto& list = it->second;
  for (size_t i = 0; i < list.size(); ++i) {
    if (list[i].get() == c) {
      // Freeing from inside its own callback is safe here: libevent is done with the event
      // once the callback runs, and nothing touches the connection afterwards.
      list.erase(list.begin() + static_cast<long>(i));
      break;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// ProxyCall

// evdns may answer after the call is gone: the request context outlives the call and is freed
// by the callback; cancel() only clears the back pointer.
struct ProxyCall::DnsRequest {
  ProxyCall* call;
  evdns_getaddrinfo_request* req = nullptr;
  static void callback(int err, evutil_addrinfo* res, void* arg) {
    auto* self = static_cast<DnsRequest*>(arg);
    if (self->call) {
      ProxyCall* call = self->call;
      call->dns_ = nullptr;
      std::vector<sockaddr_storage> addrs;
      for (evutil_addrinfo* ai = err == 0 ? res : nullptr; ai; ai = ai->ai_next) {
        if (ai->ai_addrlen > sizeof(sockaddr_storage)) continue;
        sockaddr_storage ss{};
        std::memcpy(&ss, ai->ai_addr, ai->ai_addrlen);
        addrs.push_back(ss);
      }
      int status = err == 0 && addrs.empty() ? EVUTIL_EAI_FAIL : err;  // before addrs is moved
      call->resolved(status, std::move(addrs));
    }
    if (res) evutil_freeaddrinfo(res);
    delete self;
  }
};

ProxyCall::ProxyCall(Worker& w, ExchangeSink& sink) : worker_(w), in_(sink) {
  timer_.emplace(w.base(), on_timer, this);
}

ProxyCall::~ProxyCall() { cancel(); }

ExchangeRequest& ProxyCall::prepare() {
  release();
  out_.clear();  // before req_.head changes: the queue may still point into it
  req_.target = nullptr;
  req_.route_name.clear();
  req_.request_id.clear();
  req_.head_request = false;
  req_.log_failures = true;
  req_.head.clear();
  target_ = nullptr;
  tunnel_buf_.clear();
  addrs_.clear();
  next_addr_ = 0;
  last_connect_error_.clear();
  resent_ = head_relayed_ = reading_paused_ = false;
  return req_;
}

void ProxyCall::release() {
  cancel();
  out_.clear();
  cur_block_.reset();
  req_.runtime.reset();
  req_.add_body = nullptr;
}

void ProxyCall::cancel() {
  if (dns_) {
    dns_->call = nullptr;
    // The callback still runs (with a cancel error) and frees the request context.
    evdns_getaddrinfo_cancel(dns_->req);
    dns_ = nullptr;
  }
  timer_->clear();
  conn_.reset();
  state_ = State::Done;
}

milliseconds ProxyCall::connect_timeout() const {
  return target_->connect_timeout ? *target_->connect_timeout : req_.runtime->config->timeouts.upstream_connect;
}

milliseconds ProxyCall::response_timeout() const {
  return target_->timeout ? *target_->timeout : req_.runtime->config->timeouts.upstream_response;
}

void ProxyCall::arm(Timeout kind) {
  timeout_ = kind;
  const Timeouts& t = req_.runtime->config->timeouts;
  switch (kind) {
    case Timeout::Connect:
    case Timeout::Handshake: timer_->set(connect_timeout()); break;
    case Timeout::Send: timer_->set(t.send); break;
    case Timeout::Response: timer_->set(response_timeout()); break;
    case Timeout::Idle: timer_->set(t.upstream_idle); break;
  }
}

void ProxyCall::start() {
  target_ = req_.target;
  key_.assign(req_.runtime->pool_key(*target_));  // keeps the buffer of the previous call
  state_ = State::Resolving;
  started_ = std::chrono::steady_clock::now();
  conn_ = worker_.upstreams().take(key_);
  if (conn_) {
    conn_->set_handler(this);
    send_request();
    return;
  }
  connect_fresh();
}

void ProxyCall::connect_fresh() {
  state_ = State::Resolving;
  arm(Timeout::Connect);
  // With an egress proxy, TCP goes to the proxy; the target is named in CONNECT.
  const Url& hop = target_->proxy ? *target_->proxy : target_->url;
  // Address literals skip DNS; names are resolved again for each new connection (SPEC 4).
  sockaddr_storage ss{};
  socklen_t len = 0;
  auto* s4 = reinterpret_cast<sockaddr_in*>(&ss);
  auto* s6 = reinterpret_cast<sockaddr_in6*>(&ss);
  if (inet_pton(AF_INET, hop.host.c_str(), &s4->sin_addr) == 1) {
    s4->sin_family = AF_INET;
    s4->sin_port = htons(hop.port);
    len = sizeof *s4;
  } else if (inet_pton(AF_INET6, hop.host.c_str(), &s6->sin6_addr) == 1) {
    s6->sin6_family = AF_INET6;
    s6->sin6_port = htons(hop.port);
    len = sizeof *s6;
  }
  if (len) {
    addrs_.assign(1, ss);
    next_addr_ = 0;
    connect_next();
    return;
  }
  auto* req = new DnsRequest{this};
  dns_ = req;
  evutil_addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_protocol = IPPROTO_TCP;
  hints.ai_flags = EVUTIL_AI_ADDRCONFIG;
  std::string port = std::to_string(hop.port);
  evdns_getaddrinfo_request* r =
      evdns_getaddrinfo(worker_.dns(), hop.host.c_str(), port.c_str(), &hints, DnsRequest::callback, req);
  // The callback may already have run (hosts file, cache): then req is gone.
  if (dns_ == req) req->req = r;
}

void ProxyCall::resolved(int err, std::vector<sockaddr_storage> addrs) {
  if (state_ != State::Resolving) return;
  if (err != 0 || addrs.empty()) {
    const Url& hop = target_->proxy ? *target_->proxy : target_->url;
    fail(ErrorKind::BadGateway, std::string("cannot resolve ") + hop.host + ": " + evutil_gai_strerror(err));
    return;
  }
  addrs_ = std::move(addrs);
  next_addr_ = 0;
  connect_next();
}

namespace {
socklen_t sockaddr_len(const sockaddr_storage& ss) {
  return ss.ss_family == AF_INET6 ? sizeof(sockaddr_in6) : sizeof(sockaddr_in);
}
}  // namespace

// Tries the resolved addresses in order ("localhost" may give ::1 first while the target only
// listens on 127.0.0.1); the first failure that is not "refused/unreachable" is final.
void ProxyCall::connect_next() {
  while (next_addr_ < addrs_.size()) {
    const sockaddr_storage& ss = addrs_[next_addr_++];
    const auto* addr = reinterpret_cast<const sockaddr*>(&ss);
    conn_.reset();
    int fd = ::socket(addr->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
      last_connect_error_ = std::string("cannot create a socket: ") + std::strerror(errno);
      continue;
    }
    set_nodelay(fd);
    conn_ = std::make_unique<UpstreamConn>(worker_, fd, key_);
    conn_->set_handler(this);
    state_ = State::Connecting;
    if (::connect(fd, addr, sockaddr_len(ss)) == 0) {
      connected();
      return;
    }
    if (errno == EINPROGRESS) {
      conn_->want_write(true);
      return;
    }
    last_connect_error_ = "connect to " + format_sockaddr(addr) + " failed: " + std::strerror(errno);
  }
  fail(ErrorKind::BadGateway, last_connect_error_.empty() ? "no address to connect to" : last_connect_error_);
}

void ProxyCall::connected() {
  if (target_->proxy) {
    // HTTP CONNECT tunnel through the egress proxy, then TLS (or plain HTTP) inside it.
    state_ = State::Tunneling;
    std::string authority = target_->url.host.find(':') != std::string::npos
                                ? "[" + target_->url.host + "]:" + std::to_string(target_->url.port)
                                : target_->url.host + ":" + std::to_string(target_->url.port);
    out_.clear();
    out_.add("CONNECT " + authority + " HTTP/1.1\r\nHost: " + authority + "\r\n\r\n");
    int err = 0;
    if (out_.flush(conn_->fd(), &err) == IoStatus::Error) {
      fail(ErrorKind::BadGateway, std::string("sending CONNECT to the proxy failed: ") + std::strerror(err));
      return;
    }
    conn_->want_write(!out_.empty());
    conn_->want_read(true);
    return;
  }
  if (!start_tls()) return;
  send_request();
}

void ProxyCall::tunnel_readable() {
  char buf[4096];
  for (;;) {
    ssize_t n = ::read(conn_->fd(), buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) return;
    if (n <= 0) {
      fail(ErrorKind::BadGateway, "the proxy closed the connection before answering CONNECT");
      return;
    }
    tunnel_buf_.append(buf, static_cast<size_t>(n));
    size_t end = tunnel_buf_.find("\r\n\r\n");
    if (end == std::string::npos) {
      if (tunnel_buf_.size() > 16 * 1024) {
        fail(ErrorKind::BadGateway, "the proxy's answer to CONNECT is too long");
        return;
      }
      continue;
    }
    // "HTTP/1.x 200 ..." opens the tunnel; anything else is the proxy's refusal.
    std::string line = tunnel_buf_.substr(0, tunnel_buf_.find("\r\n"));
    bool ok = line.size() >= 12 && line.compare(0, 7, "HTTP/1.") == 0 && line.compare(8, 5, " 200 ") == 0;
    ok = ok || line == "HTTP/1.1 200" || line == "HTTP/1.0 200";
    if (!ok) {
      fail(ErrorKind::BadGateway, "the proxy refused CONNECT: " + line);
      return;
    }
    if (end + 4 != tunnel_buf_.size()) {
      fail(ErrorKind::BadGateway, "the proxy sent bytes after its CONNECT answer");
      return;
    }
    tunnel_buf_.clear();
    if (!start_tls()) return;
    send_request();
    return;
  }
}

bool ProxyCall::start_tls() {
  SSL_CTX* ctx = req_.runtime->client_ctx(*target_);
  if (!target_->url.tls) return true;
  if (!ctx) {
    fail(ErrorKind::BadGateway, "no TLS context for this target");
    return false;
  }
  auto tls = std::make_unique<TlsTransport>(conn_->fd(), ctx, false);
  if (!tls->ok()) {
    fail(ErrorKind::BadGateway, "cannot create a TLS session: " + tls_error_string(nullptr));
    return false;
  }
  const std::string& name = target_->tls.server_name.empty() ? target_->url.host : target_->tls.server_name;
  in6_addr a6;
  in_addr a4;
  bool literal = inet_pton(AF_INET, name.c_str(), &a4) == 1 || inet_pton(AF_INET6, name.c_str(), &a6) == 1;
  if (!literal) SSL_set_tlsext_host_name(tls->ssl(), name.c_str());  // SNI is for names only
  if (target_->tls.verify) {
    // The certificate must name the host (or the address for IP literals).
    if (literal) {
      X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(tls->ssl()), name.c_str());
    } else {
      SSL_set1_host(tls->ssl(), name.c_str());
    }
  }
  conn_->set_transport(std::move(tls));
  return true;
}

void ProxyCall::send_request() {
  state_ = State::Sending;
  out_.clear();
  // req_.head is kept for a resend and does not change while out_ refers to it (prepare()
  // clears out_ first): it is queued by reference, not copied.
  out_.add_borrowed(req_.head.data(), req_.head.size());
  if (req_.add_body) req_.add_body(out_);
  resp_.reset(req_.head_request, this);
  conn_->want_read(true);
  // timeouts.send is armed by flush_request only if the target does not take the request at
  // once; a small request usually goes out whole and the timer moves straight to the response
  // timeout (one timer update per request fewer).
  flush_request(true);
}

void ProxyCall::flush_request(bool first) {
  int err = 0;
  size_t before = out_.pending();
  IoStatus st = conn_->transport().flush(out_, &err);
  if (st == IoStatus::Error) {
    if ((err == EPIPE || err == ECONNRESET) && try_resend(std::strerror(err))) return;
    if (conn_->transport().is_tls()) {
      fail(ErrorKind::BadGateway, "TLS with the target failed: " + conn_->transport().error_detail());
    } else {
      fail(ErrorKind::BadGateway, std::string("sending the request failed: ") + std::strerror(err));
    }
    return;
  }
  if (st == IoStatus::WouldBlock) {
    Transport& tr = conn_->transport();
    // TLS: a write that waits for the target's bytes (the handshake) waits on the read event,
    // which upstream_readable turns back into flush_request; the socket is writable, so waiting
    // on writable would spin.
    conn_->want_write(!tr.write_wants_read());
    if (tr.handshaking()) {
      // The TLS handshake is part of connecting: upstream_connect bounds it.
      if (first || timeout_ != Timeout::Handshake) arm(Timeout::Handshake);
    } else if (first || timeout_ == Timeout::Handshake || out_.pending() != before) {
      arm(Timeout::Send);
    }
    return;
  }
  conn_->want_write(false);
  state_ = State::Receiving;
  arm(Timeout::Response);
}

void ProxyCall::upstream_writable(UpstreamConn& c) {
  if (state_ == State::Tunneling) {
    int err = 0;
    if (out_.flush(c.fd(), &err) == IoStatus::Error) {
      fail(ErrorKind::BadGateway, std::string("sending CONNECT to the proxy failed: ") + std::strerror(err));
      return;
    }
    c.want_write(!out_.empty());
    return;
  }
  if ((state_ == State::Sending || state_ == State::Receiving) && c.transport().read_wants_write()) {
    read_response();  // TLS: a read waited for the socket to be writable
    if (state_ == State::Done) return;
  }
  if (state_ == State::Connecting) {
    int soerr = 0;
    socklen_t l = sizeof soerr;
    getsockopt(c.fd(), SOL_SOCKET, SO_ERROR, &soerr, &l);
    c.want_write(false);
    if (soerr != 0) {
      const sockaddr_storage& ss = addrs_[next_addr_ - 1];
      last_connect_error_ = "connect to " + format_sockaddr(reinterpret_cast<const sockaddr*>(&ss)) +
                            " failed: " + std::strerror(soerr);
      connect_next();  // the next address, or the final 502
      return;
    }
    connected();
    return;
  }
  if (state_ == State::Sending) flush_request();
}

bool ProxyCall::try_resend(const char* why) {
  // Only a reused pooled connection that died before any byte of a response may be retried,
  // once, on a fresh connection: the target cannot have acted on the request (SPEC 4).
  if (!conn_ || !conn_->reused || resent_ || resp_.any_byte_seen()) return false;
  resent_ = true;
  log_debug(std::string("route=") + req_.route_name + " target=" + req_.runtime->target_label(*target_) +
            " request_id=" + req_.request_id + ": pooled connection was closed (" + why + "), resending on a new one");
  conn_.reset();
  connect_fresh();
  return true;
}

void ProxyCall::upstream_readable(UpstreamConn& c) {
  if (state_ == State::Tunneling) {
    tunnel_readable();
    return;
  }
  if (state_ != State::Sending && state_ != State::Receiving) return;
  if (state_ == State::Sending && c.transport().write_wants_read()) {
    flush_request();  // TLS: a write waited for input (the handshake)
    if (state_ == State::Done || !conn_) return;
  }
  read_response();
}

void ProxyCall::read_response() {
  for (int rounds = 0; rounds < 16; ++rounds) {
    if (!cur_block_ || cur_block_->free_space() < 2048) cur_block_ = worker_.blocks().acquire();
    Block* b = cur_block_.get();
    IoStatus st = IoStatus::Done;
    int e = 0;
    Transport& tr = conn_->transport();
    size_t n = tr.read(b->data + b->used, b->free_space(), &st, &e);
    if (n == 0 && st == IoStatus::WouldBlock) {
      if (tr.read_wants_write()) conn_->want_write(true);
      if (!tr.has_buffered_input()) return;
      continue;
    }
    if (n == 0 && st == IoStatus::Error) {
      if (e == ECONNRESET && try_resend("connection reset")) return;
      if (tr.is_tls() && e == EPROTO) {
        fail(ErrorKind::BadGateway, "TLS with the target failed: " + tr.error_detail());
      } else {
        fail(ErrorKind::BadGateway, std::string(head_relayed_ ? "the target reset the connection mid-response: "
                                                              : "reading the response failed: ") + std::strerror(e));
      }
      return;
    }
    if (n == 0) {
      if (!resp_.any_byte_seen() && try_resend("closed by the target")) return;
      if (resp_.finish() == ResponseCodec::Status::Complete) {
        if (!head_relayed_) {
          head_relayed_ = true;
          in_.relay_head(resp_);
          if (state_ == State::Done) return;  // the sink refused the head
        }
        finish_success();
      } else {
        fail(ErrorKind::BadGateway, resp_.error_message());
      }
      return;
    }
    const char* p = b->data + b->used;
    b->used += n;
    size_t left = n;
    for (;;) {
      size_t consumed = 0;
      ResponseCodec::Status st = resp_.feed(p, left, &consumed);
      p += consumed;
      left -= consumed;
      if (state_ == State::Done) return;  // the client went away while we relayed
      if (st == ResponseCodec::Status::Error) {
        fail(ErrorKind::BadGateway, resp_.error_message());
        return;
      }
      if (st == ResponseCodec::Status::NeedMore) break;
      if (!head_relayed_) {
        timer_->clear();
        head_relayed_ = true;
        in_.set_target_status(resp_.status(), std::chrono::duration_cast<milliseconds>(
                                                  std::chrono::steady_clock::now() - started_).count());
        in_.relay_head(resp_);
        if (state_ == State::Done) return;
      }
      if (st == ResponseCodec::Status::Complete) {
        // Bytes after a complete response: the connection cannot be reused.
        if (left > 0) state_ = State::Sending;
        finish_success();
        return;
      }
      // HeadComplete: go on, also with no bytes left, so a body-less response completes.
    }
    in_.flush_relayed();
    if (state_ == State::Done) return;
    if (in_.client_backlogged()) {
      // The client is the slow one now: upstream_idle waits until reading resumes, and
      // timeouts.send guards the client meanwhile.
      timer_->clear();
      reading_paused_ = true;
      conn_->want_read(false);
      return;
    }
    if (head_relayed_) arm(Timeout::Idle);
  }
  if (conn_ && conn_->transport().has_buffered_input()) conn_->activate_read();
}

void ProxyCall::client_drained() {
  if (!reading_paused_ || state_ == State::Done || !conn_) return;
  reading_paused_ = false;
  arm(head_relayed_ ? Timeout::Idle : Timeout::Response);
  conn_->want_read(true);
  if (conn_->transport().has_buffered_input()) conn_->activate_read();
}

bool ProxyCall::on_body_bytes(const char* p, size_t n) {
  if (state_ == State::Done) return false;
  in_.relay_body(Span{cur_block_, p, n});
  return state_ != State::Done;
}

void ProxyCall::finish_success() {
  timer_->clear();
  bool reusable = conn_ && state_ == State::Receiving && resp_.keep_alive();
  state_ = State::Done;
  if (reusable) {
    conn_->reused = false;
    worker_.upstreams().give(std::move(conn_), target_->idle_timeout, target_->max_idle);
  }
  conn_.reset();
  in_.relay_end();
}

void ProxyCall::fail(ErrorKind kind, const std::string& reason) {
  if (state_ == State::Done) return;
  state_ = State::Done;
  timer_->clear();
  conn_.reset();
  // After the head went out the client gets a cut response, not an error status.
  if (req_.log_failures) log_warn(std::string("route=") + req_.route_name + " target=" + req_.runtime->target_label(*target_) +
           " request_id=" + req_.request_id + ": " + reason +
           (head_relayed_ ? std::string(" (the response to the client is cut off)")
                          : " (" + std::to_string(error_status(kind)) + " " + std::string(error_word(kind)) + ")"));
  in_.upstream_failed(kind, reason);
}

void ProxyCall::on_timer(void* arg) {
  auto* self = static_cast<ProxyCall*>(arg);
  switch (self->timeout_) {  // fail() does nothing once the call is done
    case Timeout::Connect:
      self->fail(ErrorKind::BadGateway, "connecting to the target timed out (upstream_connect)");
      break;
    case Timeout::Handshake:
      self->fail(ErrorKind::BadGateway, "the TLS handshake with the target did not finish in time (upstream_connect)");
      break;
    case Timeout::Send:
      self->fail(ErrorKind::BadGateway, "the target stopped reading the request (timeouts.send)");
      break;
    case Timeout::Response:
      self->fail(ErrorKind::GatewayTimeout,
                 "no response head within " + std::to_string(self->response_timeout().count()) + " ms (" +
                     (self->target_->timeout ? "the target's timeout" : "timeouts.upstream_response") + ")");
      break;
    case Timeout::Idle:
      self->fail(ErrorKind::BadGateway, "the target stopped sending the response body (upstream_idle)");
      break;
  }
}

}  // namespace dechunkd
