// One client connection: reads requests (strict head parser, then llhttp for the body), keeps
// the body as spans of read blocks (or spills it to an unlinked temp file), hands the complete
// request to proxy or echo, and writes responses in request order (pipelining).
#pragma once
#include <sys/socket.h>

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "auth/auth.hpp"
#include "http/codec.hpp"
#include "http/errors.hpp"
#include "http/request_head.hpp"
#include "net/buffer.hpp"
#include "net/deadline.hpp"
#include "net/event.hpp"
#include "net/transport.hpp"
#include "router/router.hpp"
#include "server/worker.hpp"
#include "upstream/upstream.hpp"

namespace dechunkd {

class ProxyCall;
struct QueueAck;

// Links a connection to its pending queue submission: the queue thread's answer is posted
// back to the worker and finds the connection gone (conn == nullptr) if it closed meanwhile.
struct QueueWaiter {
  InboundConnection* conn = nullptr;
};

// The de-chunked request body: spans of read blocks while it fits in memory_buffer, then an
// unlinked temp file in storage.dir.
struct RequestBody {
  std::vector<Span> spans;   // in memory (or not yet written to the spill file)
  uint64_t size = 0;         // total body bytes
  int spill_fd = -1;         // >= 0 once spilled; the file holds bytes [0, spilled)
  uint64_t spilled = 0;
  uint64_t in_memory = 0;    // bytes held in spans
  uint64_t held = 0;         // read-block memory the spans pin (Block::kSize per block)
  const Block* last_block = nullptr;  // the block `held` last counted
  ~RequestBody();
  void clear();
  // Appends the body to q: spans as references, the spill file as a sendfile range.
  void add_to(OutQueue& q) const;
};

// Everything a target call needs to know about the request being served.
struct RequestContext {
  std::shared_ptr<const Runtime> runtime;  // the config this request started with
  RequestHead head;
  const RouteConfig* route = nullptr;
  std::string_view remainder;
  std::string request_id;
  bool request_id_generated = false;
  std::string client_ip;
  bool inbound_tls = false;       // arrived over HTTPS (X-Forwarded-Proto)
  RequestBody body;
  std::vector<std::pair<std::string, std::string>> trailers;
  std::vector<std::string> strip_names;  // fields not forwarded: checked credentials, untrusted XFF
};

class InboundConnection : public BodySink, public ExchangeSink {
 public:
  // tls_ctx: the listener's TLS context, or nullptr for plain HTTP.
  InboundConnection(Worker& worker, int fd, const sockaddr_storage& peer, const ListenerSocket& listener,
                    SSL_CTX* tls_ctx);
  ~InboundConnection() override;
  InboundConnection(const InboundConnection&) = delete;
  InboundConnection& operator=(const InboundConnection&) = delete;

  void start();
  // Over max_connections: answer 503 without reading the request, then close.
  void reject_overloaded();
  // Worker is draining: close if idle, else finish the current request and close.
  void drain();
  // Worker stops now.
  void abort();
  bool idle() const;
  bool has_request_in_progress() const;

  // --- ExchangeSink: called by ProxyCall --------------------------------------------------
  // The target's response head: build and queue the client's response head.
  void relay_head(const ResponseCodec& resp) override;
  void relay_body(const Span& span) override;
  void flush_relayed() override;  // writes what relay_head/relay_body queued (once per target read)
  void relay_end() override;
  // The call failed before any response byte reached the client: answer err. If the head was
  // already relayed, the client connection is cut.
  void upstream_failed(ErrorKind kind, const std::string& reason) override;
  // Upstream read flow control: ProxyCall asks whether the client can take more.
  bool client_backlogged() const override;
  void set_target_status(int status, int64_t target_ms) override;

  bool on_body_bytes(const char* p, size_t n) override;

 private:
  enum class State {
    ReadingHead,  // waiting for or accumulating a request head (idle or header timer)
    ReadingBody,  // head accepted; decoding the body (body timer)
    Handling,     // request complete; proxy or echo produces the response
    Closing,      // final bytes being written, then a lingering drain of input, then close
    Closed,       // handed to the worker's graveyard
  };
  void set_state(State s);

  static void on_read(evutil_socket_t, short, void* arg);
  static void on_write(evutil_socket_t, short, void* arg);
  static void on_timer(void* arg);

  void handle_readable();
  void handle_writable();
  void handle_timeout();
  void process(BlockRef block, const char* p, size_t n);
  bool process_head_bytes(const BlockRef& block, const char* p, size_t n, size_t* used);
  void head_complete(const std::optional<HeadError>& bad);  // bad: the strict parser's verdict
  bool process_body_bytes(const BlockRef& block, const char* p, size_t n, size_t* used);
  void body_complete();
  bool spill(const char** why);
  void dispatch();
  void serve_echo();
  void start_proxy();
  void start_queue();
  void queue_answered(const QueueAck& ack);
  // Appends the outbound request for target (nullptr: echo, Host kept) on request_target to out.
  void outbound_head(const TargetConfig* target, std::string_view request_target, std::string& out) const;
  void finish_response();   // the response is fully queued; finish once written
  void request_done();      // the response is written: log, reset, next request
  void reset_request();

  void send_error(ErrorKind kind, std::string_view message, bool close);
  void append_common_headers(std::string& h, bool close);
  void append_common_headers(StringWriter& h, bool close);
  void flush_output();
  void begin_close();       // write what is queued, then linger and close
  void start_linger();
  void account_request();  // metrics and access log, once per request
  void resolve_client();
  bool client_allowed(const std::vector<Cidr>& allow) const;
  void refuse_unauthorized(const AuthResult& r);
  void close_now();
  void arm_timer(std::chrono::milliseconds d);
  // Registers or removes the read / write event once (read_enabled_ / write_enabled_ say which).
  void want_read(bool on);
  void want_write(bool on);
  const Config& config() const { return *ctx_.runtime->config; }
  bool will_close() const;

  Worker& worker_;
  int fd_;
  std::unique_ptr<Transport> transport_;  // plain or TLS: the only thing that knows
  std::string remote_;           // "ip:port"
  sockaddr_storage peer_{};
  std::string effective_ip_;     // the client as believed (trusted_proxies), for allow_from and logs
  sockaddr_storage effective_addr_{};
  std::string listen_address_;    // listen_key() of the listen entry this connection came in on
  State state_ = State::ReadingHead;
  EventPtr read_ev_, write_ev_;
  std::optional<Deadline> timer_;  // header, body, send, idle or linger: which one the state says
  bool read_enabled_ = false;
  bool write_enabled_ = false;

  // Input
  BlockRef cur_block_;            // the block reads go into
  Span pending_;                  // bytes read past the current request (pipelining)
  std::string head_buf_;          // the head being accumulated (heads are small, copied once)
  bool request_bytes_seen_ = false;  // a byte of the current request arrived (header timer)
  bool first_request_ = true;
  bool header_timer_due_ = false;  // the header timer is to be armed if the head stays incomplete
  bool peer_eof_ = false;
  BlockRef feed_block_;           // the block whose bytes the codec is decoding
  RequestCodec codec_;
  RequestContext ctx_;
  bool chunked_in_ = false;
  bool dispatch_pending_ = false;  // the request is complete; process() dispatches it

  // Output
  OutQueue out_;
  bool response_started_ = false;  // bytes of the final response head are queued
  bool response_complete_ = false; // the whole response is queued
  bool close_after_ = false;       // close once this response is written
  bool chunked_out_ = false;       // relaying a body with chunked framing
  bool closing_shutdown_ = false;  // SHUT_WR done, lingering
  int status_ = 0;
  std::string extra_headers_;      // Allow (405) or WWW-Authenticate (401) lines for an error
  bool logged_ = false;            // the request was counted and logged
  bool in_flight_ = false;         // counted in requests_in_flight
  bool draining_ = false;
  std::unique_ptr<ProxyCall> call_;  // created by the first proxied request, then reused
  std::shared_ptr<QueueWaiter> queue_waiter_;  // while a queue submission is pending
  int retry_after_s_ = 1;          // Retry-After of a 503 overloaded
  std::vector<std::string_view> conn_tokens_;  // relay_head's scratch: the target's Connection tokens
  std::string resp_head_;  // relay_head builds the response head here (queued by reference when out_ is empty)

  // Access log
  int64_t start_wall_ms_ = 0;
  std::chrono::steady_clock::time_point start_;
  int target_status_ = -1;
  int64_t target_ms_ = -1;
};

}  // namespace dechunkd
