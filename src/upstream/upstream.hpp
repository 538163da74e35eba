// Outbound side: connections to targets, the per-worker keep-alive pool, and ProxyCall, which
// sends one de-chunked request to its target and streams the response back to the client.
#pragma once
#include <sys/socket.h>

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "config/config.hpp"
#include "http/codec.hpp"
#include "net/buffer.hpp"
#include "net/deadline.hpp"
#include "net/event.hpp"
#include "net/transport.hpp"
#include "server/worker.hpp"

namespace dechunkd {

class UpstreamConn;
class Runtime;

// Whoever currently owns an upstream connection receives its events.
class UpstreamHandler {
 public:
  virtual ~UpstreamHandler() = default;
  virtual void upstream_readable(UpstreamConn& c) = 0;
  virtual void upstream_writable(UpstreamConn& c) = 0;
  virtual void upstream_idle_timeout(UpstreamConn&) {}
};

class UpstreamConn {
 public:
  UpstreamConn(Worker& w, int fd, std::string key);
  ~UpstreamConn();
  UpstreamConn(const UpstreamConn&) = delete;
  UpstreamConn& operator=(const UpstreamConn&) = delete;

  int fd() const { return fd_; }
  const std::string& key() const { return key_; }
  Transport& transport() { return *transport_; }
  // Switches to TLS once TCP (and a CONNECT tunnel) is up.
  void set_transport(std::unique_ptr<Transport> t) { transport_ = std::move(t); }
  void set_handler(UpstreamHandler* h) { handler_ = h; }
  void want_read(bool on);
  void want_write(bool on);
  void activate_read() { event_active(read_ev_.get(), EV_READ, 0); }  // TLS-buffered input
  bool reused = false;          // taken from the pool (may have been closed by the target)
  void arm_idle_timer(std::chrono::milliseconds d) { idle_timer_->set(d); }
  void disarm_idle_timer() { idle_timer_->clear(); }

 private:
  static void on_read(evutil_socket_t, short, void* arg);
  static void on_write(evutil_socket_t, short, void* arg);
  static void on_idle(void* arg);
  int fd_;
  std::string key_;
  std::unique_ptr<Transport> transport_;
  UpstreamHandler* handler_ = nullptr;
  EventPtr read_ev_, write_ev_;
  std::optional<Deadline> idle_timer_;  // armed while the connection waits in the pool
  bool reading_ = false, writing_ = false;
};

// Idle keep-alive connections per target (host:port), per worker.
class UpstreamPool : public UpstreamHandler {
 public:
  explicit UpstreamPool(Worker& w) : worker_(w) {}
  ~UpstreamPool() override;
  std::unique_ptr<UpstreamConn> take(const std::string& key);
  void give(std::unique_ptr<UpstreamConn> c, std::chrono::milliseconds idle_timeout, size_t max_idle);
  void clear();
  size_t idle_count() const;

  void upstream_readable(UpstreamConn& c) override;  // EOF or stray bytes: the connection goes
  void upstream_writable(UpstreamConn&) override {}
  void upstream_idle_timeout(UpstreamConn& c) override;

 private:
  void remove(UpstreamConn* c);
  Worker& worker_;
  std::unordered_map<std::string, std::vector<std::unique_ptr<UpstreamConn>>> idle_;
};

// Who receives a target's answer: the client connection in proxy mode (relays it); a queue
// delivery records the status at the head (SPEC 6) and drops the body.
class ExchangeSink {
 public:
  virtual ~ExchangeSink() = default;
  virtual void relay_head(const ResponseCodec& resp) = 0;
  virtual void relay_body(const Span& span) = 0;
  virtual void relay_end() = 0;
  virtual void flush_relayed() = 0;  // after each target read
  // The call failed; reason is for the log (route, target and request id are added by the call).
  virtual void upstream_failed(ErrorKind kind, const std::string& reason) = 0;
  virtual bool client_backlogged() const = 0;  // stop reading the target until client_drained()
  virtual void set_target_status(int status, int64_t target_ms) = 0;
};

// Everything a call needs, prepared by its owner: the outbound head is built once (and kept for
// the one safe resend), the body is re-added from its spans/spill file for that resend.
struct ExchangeRequest {
  std::shared_ptr<const Runtime> runtime;  // timeouts, TLS context, pool key, target label
  const TargetConfig* target = nullptr;
  std::string route_name;                  // for log lines
  std::string request_id;                  // for log lines
  bool head_request = false;               // HEAD: the response has no body
  std::string head;                        // the complete outbound head (request line .. CRLF CRLF)
  std::function<void(OutQueue&)> add_body; // appends the body (may be called twice)
  bool log_failures = true;                // false: the owner logs the outcome itself (queue)
};

// One request to one target at a time: resolve, connect (or reuse), send head + body, parse the
// response and hand it to the sink. Owned by its sink's owner and reused for the sink's next
// request (prepare() + start() again once the previous call is done or cancelled): the timer,
// the output queue, the response parser and the outbound head's buffer are then allocated once
// per client connection instead of once per request.
class ProxyCall : public UpstreamHandler, public BodySink, public Deferred {
 public:
  ProxyCall(Worker& w, ExchangeSink& sink);
  ~ProxyCall() override;
  // The request to fill before start(): the previous request's fields, emptied, so their
  // buffers are reused. Only while no call is running (new, done or cancelled).
  ExchangeRequest& prepare();
  void start();
  void cancel();          // the client went away or the worker stops: drop the connection
  // The sink is done with this call: drop what it still holds (the read block, request bytes
  // not sent, the config snapshot), so an idle client connection pins none of it. Safe from
  // inside the call's own callbacks: nothing is freed that the call touches afterwards.
  void release();
  void client_drained();  // the client's output drained: read the target again
  // The target's `timeout`, else timeouts.upstream_response. Only while a call runs.
  std::chrono::milliseconds response_timeout() const;

  void upstream_readable(UpstreamConn& c) override;
  void upstream_writable(UpstreamConn& c) override;
  bool on_body_bytes(const char* p, size_t n) override;

 private:
  enum class State {
    Resolving,   // waiting for evdns
    Connecting,  // non-blocking connect in progress
    Tunneling,   // CONNECT sent to the egress proxy, waiting for its 200
    Sending,     // writing the request (the response may start early)
    Receiving,   // request written, reading the response
    Done,        // finished or failed; no more events
  };
  struct DnsRequest;
  friend struct DnsRequest;
  static void on_timer(void* arg);

  void connect_fresh();
  void resolved(int err, std::vector<sockaddr_storage> addrs);
  void connect_next();
  void connected();
  void tunnel_readable();
  bool start_tls();
  void send_request();
  void flush_request(bool first = false);  // first: the first write of the request
  void read_response();
  bool try_resend(const char* why);
  void fail(ErrorKind kind, const std::string& reason);
  void finish_success();
  // What timer_ bounds now; the timeout fires with that kind's error.
  enum class Timeout { Connect, Handshake, Send, Response, Idle };
  void arm(Timeout kind);
  std::chrono::milliseconds connect_timeout() const;

  Worker& worker_;
  ExchangeSink& in_;
  ExchangeRequest req_;
  const TargetConfig* target_ = nullptr;  // req_.target, set by start()
  std::string key_;
  State state_ = State::Resolving;
  std::unique_ptr<UpstreamConn> conn_;
  DnsRequest* dns_ = nullptr;
  std::optional<Deadline> timer_;
  Timeout timeout_ = Timeout::Connect;  // the kind timer_ was last armed for
  OutQueue out_;
  ResponseCodec resp_;
  BlockRef cur_block_;
  std::string tunnel_buf_;    // the proxy's answer to CONNECT
  std::vector<sockaddr_storage> addrs_;  // resolved addresses, tried in order
  size_t next_addr_ = 0;
  std::string last_connect_error_;
  bool resent_ = false;
  bool head_relayed_ = false;
  bool reading_paused_ = false;
  std::chrono::steady_clock::time_point started_;
};

}  // namespace dechunkd
