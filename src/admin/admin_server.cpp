#include "admin/admin_server.hpp"

#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "auth/auth.hpp"
#include "http/errors.hpp"
#include "http/request_head.hpp"
#include "log/log.hpp"
#include "net/buffer.hpp"
#include "net/socket.hpp"
#include "version.hpp"

namespace dechunkd {

namespace {
constexpr std::chrono::milliseconds kAdminTimeout{10'000};
constexpr HeadLimits kAdminLimits{16 * 1024, 100, 8 * 1024};

// Constant-time comparison for the bearer token (SPEC 7: secrets compared in constant time).
bool token_matches(std::string_view got, const std::string& want) {
  if (got.size() != want.size()) return false;
  return CRYPTO_memcmp(got.data(), want.data(), want.size()) == 0;
}
}  // namespace

// One admin client connection: read one request, answer, close.
class AdminConnection {
 public:
  AdminConnection(AdminServer& server, int fd) : server_(server), fd_(fd) {
    read_ev_.reset(event_new(server_.base_, fd_, EV_READ | EV_PERSIST, on_read, this));
    write_ev_.reset(event_new(server_.base_, fd_, EV_WRITE | EV_PERSIST, on_write, this));
    timer_.reset(event_new(server_.base_, -1, 0, on_timeout, this));
    event_add(read_ev_.get(), nullptr);
    arm_timer(timer_.get(), kAdminTimeout);
  }
  ~AdminConnection() {
    read_ev_.reset();
    write_ev_.reset();
    timer_.reset();
    if (fd_ >= 0) ::close(fd_);
  }
 private:
  static void on_read(evutil_socket_t, short, void* arg) { static_cast<AdminConnection*>(arg)->readable(); }
  static void on_write(evutil_socket_t, short, void* arg) { static_cast<AdminConnection*>(arg)->flush(); }
  static void on_timeout(evutil_socket_t, short, void* arg) { static_cast<AdminConnection*>(arg)->close(); }

  void readable() {
    char buf[4096];
    for (;;) {
      ssize_t n = ::read(fd_, buf, sizeof buf);
      if (n > 0) {
        if (answered_) continue;  // ignore anything after the request
        buf_.append(buf, static_cast<size_t>(n));
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && errno == EAGAIN) break;
      close();  // EOF or error
      return;
    }
    if (answered_) return;
    size_t head_len = 0;
    HeadError err{ErrorKind::BadRequest, ""};
    HeadProgress p = scan_request_head(buf_, kAdminLimits, &head_len, &err);
    if (p == HeadProgress::NeedMore) return;
    answered_ = true;
    event_del(read_ev_.get());
    if (p == HeadProgress::Error) {
      send_error(err.kind, err.message);
      return;
    }
    buf_.resize(head_len);
    RequestHead head;
    if (auto bad = parse_request_head(buf_, kAdminLimits, &head)) {
      send_error(bad->kind, bad->message);
      return;
    }
    handle(head);
  }

  void handle(const RequestHead& head) {
    keep_request_id(head);
    std::string_view path = head.path;
    // HEAD is GET without the body (monitors probe /healthz with it).
    head_only_ = head.method == "HEAD";
    std::string_view method = head_only_ ? std::string_view("GET") : head.method;
    AdminBackend& backend = server_.backend_;
    if (path == "/healthz") {
      if (method != "GET") return not_allowed("GET, HEAD");
      return send(200, "text/plain; charset=utf-8", "ok");
    }
    if (path == "/readyz") {
      if (method != "GET") return not_allowed("GET, HEAD");
      std::string reason = backend.not_ready_reason();
      if (reason.empty()) return send(200, "text/plain; charset=utf-8", "ready");
      return send(503, "text/plain; charset=utf-8", "not ready: " + reason);
    }
    if (path == "/metrics") {
      if (method != "GET") return not_allowed("GET, HEAD");
      AdminServer* server = &server_;
      AdminConnection* self = this;
      backend.gather_stats([server, self](WorkerStats total, ProcessStats process) {
        if (!server->conns_.count(self)) return;  // the client went away meanwhile
        self->send(200, "text/plain; version=0.0.4; charset=utf-8", render_metrics(total, process, DECHUNKD_VERSION));
      });
      return;
    }
    if (path == "/reload") {
      if (method != "POST") return not_allowed("POST");
      if (!authorized(head)) return;
      size_t errors = backend.reload_now();
      if (errors == 0) return send(200, "application/json", "{\"reloaded\":true}");
      return send_error(ErrorKind::BadRequest, "the configuration has " + std::to_string(errors) +
                                                   " error(s) and was not applied; the log lists them");
    }
    if (path == "/queue" || path.substr(0, 13) == "/dead-letters" || path.substr(0, 8) == "/routes/") {
      if ((method == "POST" || method == "DELETE") && !authorized(head)) return;
      QueueAdminRequest req{std::string(method), std::string(path), std::string(head.query)};
      AdminServer* server = &server_;
      AdminConnection* self = this;
      bool asked = backend.queue_admin(std::move(req), [server, self](QueueAdminReply r) {
        if (!server->conns_.count(self)) return;  // the client went away meanwhile
        self->queue_answer(r);
      });
      if (!asked) send_error(ErrorKind::Overloaded, "dechunkd is stopping");
      return;
    }
    send_error(ErrorKind::NotFound, "no such admin endpoint");
  }

  void queue_answer(const QueueAdminReply& r) {
    if (r.error) {
      if (!r.allow.empty()) extra_headers_ = "Allow: " + r.allow + "\r\n";
      return send_error(r.kind, r.message);
    }
    if (r.status == 204) {
      out_.add("HTTP/1.1 204 No Content\r\nX-Request-Id: " + request_id() +
               "\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n");
      return flush();
    }
    send(r.status, "application/json", r.body);
  }

  // Mutating endpoints need the bearer token when admin.token_file is set (SPEC 8).
  bool authorized(const RequestHead& head) {
    const std::string& token = server_.backend_.config()->admin.token;
    if (token.empty()) return true;
    for (const HeaderField& f : head.fields) {
      if (!iequals(f.name, "authorization")) continue;
      std::string_view scheme, credentials;
      split_authorization(f.value, &scheme, &credentials);  // as routes do: 1*SP after the scheme
      if (iequals(scheme, "bearer") && token_matches(credentials, token)) return true;
    }
    extra_headers_ = "WWW-Authenticate: Bearer realm=\"dechunkd-admin\"\r\n";
    send_error(ErrorKind::Unauthorized, "this admin endpoint needs 'Authorization: Bearer <token>' (admin.token_file)");
    return false;
  }

  void not_allowed(const char* allow) {
    extra_headers_ = std::string("Allow: ") + allow + "\r\n";
    send_error(ErrorKind::MethodNotAllowed, "this admin endpoint does not accept this method");
  }

  void send_error(ErrorKind kind, std::string_view message) {
    send(error_status(kind), "application/json", error_body(kind, message, request_id()));
  }

  // Like the listeners (SPEC 4, 11): the sender's X-Request-Id when it is usable, else a new one.
  void keep_request_id(const RequestHead& head) {
    for (const HeaderField& f : head.fields) {
      if (iequals(f.name, "x-request-id") && usable_request_id(f.value)) {
        request_id_.assign(f.value);
        return;
      }
    }
  }

  const std::string& request_id() {
    if (!request_id_.empty()) return request_id_;
    static constexpr char kHex[] = "0123456789abcdef";
    unsigned char raw[16];
    if (RAND_bytes(raw, sizeof raw) != 1) std::memset(raw, 0, sizeof raw);
    for (unsigned char c : raw) {
      request_id_ += kHex[c >> 4];
      request_id_ += kHex[c & 15];
    }
    return request_id_;
  }

  void send(int status, std::string_view content_type, std::string_view body) {
    std::string h = "HTTP/1.1 " + std::to_string(status) + " " + std::string(status_reason(status)) +
                    "\r\nContent-Type: " + std::string(content_type) +
                    "\r\nContent-Length: " + std::to_string(body.size()) + "\r\n" + extra_headers_ +
                    "X-Request-Id: " + request_id() + "\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n";
    if (!head_only_) h.append(body);  // a HEAD answer has no content (RFC 9110 9.3.2)
    out_.add(std::move(h));
    flush();
  }

  void flush() {
    int err = 0;
    IoStatus st = out_.flush(fd_, &err);
    if (st == IoStatus::WouldBlock) {
      event_add(write_ev_.get(), nullptr);
      return;
    }
    close();
  }

  void close() {
    if (closed_) return;
    closed_ = true;
    event_del(read_ev_.get());
    event_del(write_ev_.get());
    event_del(timer_.get());
    server_.closed(this);
  }

  AdminServer& server_;
  int fd_;
  EventPtr read_ev_, write_ev_, timer_;
  std::string buf_;
  std::string extra_headers_;
  std::string request_id_;
  OutQueue out_;
  bool head_only_ = false;
  bool answered_ = false;
  bool closed_ = false;
};

AdminServer::AdminServer(event_base* base, AdminBackend& backend) : base_(base), backend_(backend) {
  reaper_.reset(event_new(base_, -1, 0, [](evutil_socket_t, short, void* arg) {
    static_cast<AdminServer*>(arg)->graveyard_.clear();
  }, this));
  accept_pause_.reset(event_new(base_, -1, 0, [](evutil_socket_t, short, void* arg) {
    auto* s = static_cast<AdminServer*>(arg);
    if (s->accept_ev_) event_add(s->accept_ev_.get(), nullptr);
  }, this));
}

AdminServer::~AdminServer() { stop(); }

bool AdminServer::start(const std::string& host, uint16_t port, std::string* error) {
  sockaddr_storage bound{};
  fd_ = open_listener(host, port, false, error, &bound);
  if (fd_ < 0) {
    *error = "admin endpoint: " + *error;
    return false;
  }
  address_ = format_sockaddr(reinterpret_cast<sockaddr*>(&bound));
  accept_ev_.reset(event_new(base_, fd_, EV_READ | EV_PERSIST, on_accept, this));
  event_add(accept_ev_.get(), nullptr);
  log_info("admin endpoint listening on " + address_);
  return true;
}

void AdminServer::stop() {
  accept_ev_.reset();
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
  conns_.clear();
  graveyard_.clear();
}

void AdminServer::on_accept(evutil_socket_t fd, short, void* arg) {
  auto* s = static_cast<AdminServer*>(arg);
  for (int i = 0; i < 16; ++i) {
    int c = ::accept4(fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (c < 0 && accept_must_pause(errno)) {
      event_del(s->accept_ev_.get());
      arm_timer(s->accept_pause_.get(), kAcceptPause);
      const int64_t now = wall_clock_ms();
      if (now - s->accept_failure_logged_ms_ >= 1000) {
        s->accept_failure_logged_ms_ = now;
        log_warn("admin endpoint: accept failed: " + std::string(std::strerror(errno)) +
                 "; not accepting for 100 ms: raise LimitNOFILE= (systemd) or lower limits.max_connections");
      }
      return;
    }
    if (c < 0) return;
    set_nodelay(c);
    auto conn = std::make_unique<AdminConnection>(*s, c);
    AdminConnection* raw = conn.get();
    s->conns_.emplace(raw, std::move(conn));
  }
}

void AdminServer::closed(AdminConnection* c) {
  auto it = conns_.find(c);
  if (it == conns_.end()) return;
  graveyard_.push_back(std::move(it->second));
  conns_.erase(it);
  event_active(reaper_.get(), EV_TIMEOUT, 0);
}

}  // namespace dechunkd
