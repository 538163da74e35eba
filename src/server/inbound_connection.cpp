#include "server/inbound_connection.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>

#include "core/append.hpp"
#include "log/log.hpp"
#include "net/socket.hpp"
#include "proxy/outbound.hpp"
#include "queue/queue_service.hpp"
#include "upstream/upstream.hpp"

namespace dechunkd {

using std::chrono::milliseconds;

namespace {
constexpr size_t kHighWatermark = 1024 * 1024;  // stop reading the target above this
constexpr size_t kLowWatermark = 256 * 1024;    // read it again below this
constexpr size_t kSpillBatch = 256 * 1024;      // spilled bodies are written in batches
constexpr milliseconds kLinger{2000};           // drain input this long before the final close
constexpr int kMaxReadsPerEvent = 16;           // fairness between connections

// Response fields a gateway never relays (hop-by-hop), plus those it writes itself.
bool skip_response_field(std::string_view name, const std::vector<std::string_view>& connection_tokens) {
  static constexpr std::string_view kSkip[] = {"connection", "keep-alive", "proxy-connection", "te",
                                               "trailer", "transfer-encoding", "upgrade", "content-length",
                                               "x-request-id"};
  for (auto s : kSkip) {
    if (iequals(name, s)) return true;
  }
  for (auto t : connection_tokens) {
    if (iequals(name, t)) return true;
  }
  return false;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// RequestBody

RequestBody::~RequestBody() {
  if (spill_fd >= 0) ::close(spill_fd);
}

void RequestBody::clear() {
  spans.clear();
  size = spilled = in_memory = held = 0;
  last_block = nullptr;
  if (spill_fd >= 0) ::close(spill_fd);
  spill_fd = -1;
}

void RequestBody::add_to(OutQueue& q) const {
  if (spill_fd >= 0) q.add_file(spill_fd, 0, spilled);
  for (const Span& s : spans) q.add_span(s);
}

// ---------------------------------------------------------------------------------------------
// Life cycle

InboundConnection::InboundConnection(Worker& worker, int fd, const sockaddr_storage& peer,
                                     const ListenerSocket& listener, SSL_CTX* tls_ctx)
    : worker_(worker), fd_(fd), listen_address_(listener.config_address) {
  if (tls_ctx) {
    transport_ = std::make_unique<TlsTransport>(fd_, tls_ctx, true);
    ctx_.inbound_tls = true;
  } else {
    transport_ = std::make_unique<PlainTransport>(fd_);
  }
  const auto* sa = reinterpret_cast<const sockaddr*>(&peer);
  remote_ = format_sockaddr(sa);
  peer_ = peer;
  ctx_.client_ip = format_ip(sa);
  ctx_.runtime = worker_.runtime();
  read_ev_.reset(event_new(worker_.base(), fd_, EV_READ | EV_PERSIST, on_read, this));
  write_ev_.reset(event_new(worker_.base(), fd_, EV_WRITE | EV_PERSIST, on_write, this));
  timer_.emplace(worker_.base(), on_timer, this);
}

InboundConnection::~InboundConnection() {
  if (queue_waiter_) queue_waiter_->conn = nullptr;
  call_.reset();
  read_ev_.reset();
  write_ev_.reset();
  timer_.reset();
  transport_.reset();
  if (fd_ >= 0) ::close(fd_);
}

void InboundConnection::set_state(State s) {
  // Legal moves: ReadingHead -> ReadingBody -> Handling -> ReadingHead (next request);
  // any -> Closing -> Closed; any -> Closed.
  state_ = s;
}

void InboundConnection::start() {
  set_state(State::ReadingHead);
  arm_timer(config().timeouts.header);  // for the first request the header timer starts at accept
  want_read(true);
}

void InboundConnection::reject_overloaded() {
  worker_.new_request_id(ctx_.request_id);
  worker_.note_overloaded();
  close_after_ = true;
  send_error(ErrorKind::Overloaded, "the gateway has reached limits.max_connections; retry shortly", true);
}

bool InboundConnection::idle() const { return state_ == State::ReadingHead && !request_bytes_seen_ && pending_.len == 0; }

bool InboundConnection::has_request_in_progress() const {
  return state_ == State::ReadingBody || state_ == State::Handling || (state_ == State::ReadingHead && request_bytes_seen_);
}

void InboundConnection::drain() {
  draining_ = true;
  close_after_ = true;
  if (idle()) close_now();
}

void InboundConnection::abort() { close_now(); }

void InboundConnection::arm_timer(milliseconds d) { timer_->set(d); }

void InboundConnection::want_read(bool on) {
  if (on == read_enabled_) return;
  read_enabled_ = on;
  if (on) event_add(read_ev_.get(), nullptr); else event_del(read_ev_.get());
}

void InboundConnection::want_write(bool on) {
  if (on == write_enabled_) return;
  write_enabled_ = on;
  if (on) event_add(write_ev_.get(), nullptr); else event_del(write_ev_.get());
}

bool InboundConnection::will_close() const { return close_after_ || draining_; }

void InboundConnection::close_now() {
  if (state_ == State::Closed) return;
  account_request();
  set_state(State::Closed);
  if (call_) call_->cancel();
  event_del(read_ev_.get());
  event_del(write_ev_.get());
  timer_->stop();
  if (fd_ >= 0) {
    ::close(fd_);
    fd_ = -1;
  }
  worker_.connection_closed(this);
}

void InboundConnection::begin_close() {
  if (state_ == State::Closing || state_ == State::Closed) return;
  set_state(State::Closing);
  if (call_) call_->cancel();
  if (!out_.empty()) {
    // Finish writing the answer first (bounded by timeouts.send), then linger.
    arm_timer(config().timeouts.send);
    flush_output();
    return;
  }
  start_linger();
}

void InboundConnection::start_linger() {
  // Lingering close: stop sending, read and drop what the client still sends for a short while,
  // so it reads our answer instead of a reset.
  closing_shutdown_ = true;
  transport_->shutdown_tls();
  ::shutdown(fd_, SHUT_WR);
  want_read(true);
  arm_timer(kLinger);
}

// ---------------------------------------------------------------------------------------------
// Events

void InboundConnection::on_read(evutil_socket_t, short, void* arg) {
  static_cast<InboundConnection*>(arg)->handle_readable();
}

void InboundConnection::on_write(evutil_socket_t, short, void* arg) {
  static_cast<InboundConnection*>(arg)->handle_writable();
}

void InboundConnection::on_timer(void* arg) {
  static_cast<InboundConnection*>(arg)->handle_timeout();
}

void InboundConnection::handle_timeout() {
  switch (state_) {
    case State::ReadingHead:
      if (!request_bytes_seen_) {
        close_now();  // idle keep-alive or a connection that never sent a byte: silently
      } else {
        send_error(ErrorKind::RequestTimeout, "the request head did not arrive within timeouts.header", true);
      }
      break;
    case State::ReadingBody:
      send_error(ErrorKind::RequestTimeout, "the request body did not arrive within timeouts.body", true);
      break;
    case State::Handling:
      log_info("remote=" + remote_ + " request_id=" + ctx_.request_id +
               ": the client stopped reading the response (timeouts.send); closing");
      close_now();
      break;
    case State::Closing:
    case State::Closed:
      close_now();
      break;
  }
}

void InboundConnection::handle_readable() {
  if (transport_->write_wants_read()) {
    // TLS: a write waited for the client's bytes (the handshake). Its bytes may sit in the
    // transport with out_ empty. While it still waits, nothing else may read the socket.
    flush_output();
    if (state_ == State::Closed || transport_->write_wants_read()) return;
  }
  if (state_ == State::Closed) return;
  for (int i = 0; i < kMaxReadsPerEvent; ++i) {
    if (state_ == State::Closed) return;
    if (pending_.len > 0 && (state_ == State::ReadingHead || state_ == State::ReadingBody)) {
      // Bytes read past the previous request come before anything read now. A response that
      // completes while its read is processed (echo, a 401 after the body) leaves them here in
      // the middle of this loop, not only between events.
      Span s = std::move(pending_);
      pending_ = Span{};
      process(s.block, s.ptr, s.len);
      continue;
    }
    if (state_ == State::Closing) {
      char scratch[16384];
      ssize_t n = ::read(fd_, scratch, sizeof scratch);
      if (n > 0) continue;
      if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
      if (closing_shutdown_) close_now();
      else want_read(false);  // still writing the answer; the peer stopped sending
      return;
    }
    if (state_ == State::Handling) {
      // Pipelined bytes wait in the kernel until this response is written.
      want_read(false);
      return;
    }
    if (!cur_block_ || cur_block_->free_space() < 1024) cur_block_ = worker_.blocks().acquire();
    Block* b = cur_block_.get();
    IoStatus st = IoStatus::Done;
    int err = 0;
    size_t n = transport_->read(b->data + b->used, b->free_space(), &st, &err);
    if (n == 0 && st == IoStatus::WouldBlock) {
      if (transport_->read_wants_write()) want_write(true);  // TLS: the handshake must send before it reads
      break;
    }
    if (n == 0 && st == IoStatus::Error) {
      if (transport_->is_tls()) {
        log_debug("remote=" + remote_ + ": TLS: " + transport_->error_detail());
        if (transport_->plain_http_seen() && state_ == State::ReadingHead) {
          // A sender configured with http:// for this https:// listener: say so in the
          // protocol it speaks instead of a bare reset. The rest of its request is dropped.
          transport_ = std::make_unique<PlainTransport>(fd_);
          request_bytes_seen_ = true;
          send_error(ErrorKind::BadRequest,
                     "this listener expects TLS: the request was sent as plain HTTP (use https://)", true);
          return;
        }
      }
      close_now();  // reset by the client, or a failed TLS handshake
      return;
    }
    if (n == 0) {
      peer_eof_ = true;
      if (state_ == State::ReadingHead && !request_bytes_seen_) {
        close_now();
      } else {
        // The client closed in the middle of a request: nobody is left to answer.
        if (has_request_in_progress()) {
          log_debug("remote=" + remote_ + ": the client closed the connection before the request was complete");
        }
        close_now();
      }
      return;
    }
    const char* p = b->data + b->used;
    b->used += n;
    process(cur_block_, p, n);
    if (state_ != State::ReadingHead && state_ != State::ReadingBody) break;
  }
  // TLS may hold decrypted bytes the socket will not announce again.
  if (transport_->has_buffered_input() && (state_ == State::ReadingHead || state_ == State::ReadingBody)) {
    event_active(read_ev_.get(), EV_READ, 0);
  }
  // Between requests nothing needs the read block: give it back (idle connections hold none).
  if (state_ == State::ReadingHead && pending_.len == 0) cur_block_.reset();
}

void InboundConnection::process(BlockRef block, const char* p, size_t n) {
  while (n > 0) {
    size_t used = 0;
    if (state_ == State::ReadingHead) {
      if (!process_head_bytes(block, p, n, &used)) break;
    } else if (state_ == State::ReadingBody) {
      if (!process_body_bytes(block, p, n, &used)) break;
    } else if (state_ == State::Handling) {
      pending_ = Span{block, p, n};  // the next pipelined request waits for this response
      break;
    } else {
      break;  // Closing: dropped
    }
    p += used;
    n -= used;
  }
  // Dispatch only now, with the pipelined rest stashed: a response that completes at once
  // (echo, an immediate 502) then finds the next request where it expects it.
  if (dispatch_pending_ && state_ == State::Handling) {
    dispatch_pending_ = false;
    dispatch();
  }
}

// ---------------------------------------------------------------------------------------------
// Request side

bool InboundConnection::process_head_bytes(const BlockRef&, const char* p, size_t n, size_t* used) {
  if (!request_bytes_seen_) {
    request_bytes_seen_ = true;
    in_flight_ = true;
    ++worker_.stats().requests_in_flight;
    start_ = std::chrono::steady_clock::now();
    start_wall_ms_ = wall_clock_ms();
    // The header timer starts with the request's first byte (the first request's at accept). It
    // is armed below only if this read leaves the head incomplete: every other outcome re-arms
    // or stops the timer in this same callback, so arming it first would be a wasted update.
    header_timer_due_ = !first_request_;
  }
  // Usually the whole head is in this read: parse it where it lies, then copy only the head's
  // bytes (not the body that follows it in the block). A head split over reads accumulates.
  size_t old = head_buf_.size();
  std::string_view buf(p, n);
  if (old > 0) {
    head_buf_.append(p, n);
    buf = head_buf_;
  }
  size_t head_len = 0;
  HeadError err{ErrorKind::BadRequest, ""};
  std::optional<HeadError> bad;
  // One walk: the scan and, once the head is complete, the strict parse into ctx_.head.
  HeadProgress prog = read_request_head(buf, ctx_.runtime->head_limits, &head_len, &err, &ctx_.head, &bad);
  if (prog == HeadProgress::NeedMore) {
    if (old == 0) head_buf_.assign(p, n);
    if (header_timer_due_) {
      header_timer_due_ = false;
      arm_timer(config().timeouts.header);
    }
    *used = n;
    return true;
  }
  header_timer_due_ = false;
  if (prog == HeadProgress::Error) {
    worker_.new_request_id(ctx_.request_id);
    send_error(err.kind, err.message, true);
    return false;
  }
  // Bytes past the head belong to the body (or the next request): leave them in the block.
  *used = head_len - old;
  if (old == 0) {
    head_buf_.assign(p, head_len);
    rebase_request_head(ctx_.head, p, head_len, head_buf_.data());
  } else {
    // Shrinking a string never reallocates: the views in ctx_.head stay valid.
    head_buf_.resize(head_len);
  }
  head_complete(bad);
  return state_ != State::Closing && state_ != State::Closed;
}

void InboundConnection::head_complete(const std::optional<HeadError>& bad) {
  RequestHead& head = ctx_.head;
  // A request id is needed for any answer, so settle it first.
  ctx_.request_id_generated = true;
  if (!bad) {
    // The sender's X-Request-Id is kept, unless its Connection header makes it hop-by-hop:
    // the target must get the id the sender is told.
    std::vector<std::string_view> conn_tokens;
    for (const HeaderField& f : head.fields) {
      if (iequals(f.name, "connection")) split_tokens(f.value, conn_tokens);
    }
    bool listed = false;
    for (auto t : conn_tokens) listed = listed || iequals(t, "x-request-id");
    // Only a usable id (printable ASCII) is kept; anything else gets a generated id.
    for (const HeaderField& f : head.fields) {
      if (!listed && iequals(f.name, "x-request-id") && usable_request_id(f.value)) {
        ctx_.request_id.assign(f.value);
        ctx_.request_id_generated = false;
        break;
      }
    }
  }
  if (ctx_.request_id_generated) worker_.new_request_id(ctx_.request_id);
  if (bad) {
    send_error(bad->kind, bad->message, true);
    return;
  }
  if (!head.keep_alive) close_after_ = true;
  chunked_in_ = head.framing == Framing::Chunked;

  // Route-dependent checks, in SPEC 11 order: 404, 403, 405, 401, 417, 413.
  RouteMatch m = ctx_.runtime->router.match(head.host, head.path, head.method);
  if (!m.route) {
    // 403 comes before 405: a client that allow_from excludes does not learn the methods.
    bool forbidden = !m.refused.empty();
    if (forbidden) resolve_client();
    for (const RouteConfig* r : m.refused) {
      forbidden = forbidden && !r->allow_from.empty() && !client_allowed(r->allow_from);
    }
    if (forbidden) {
      send_error(ErrorKind::Forbidden, "the client address is not allowed on this route", true);
      return;
    }
    if (!m.allow.empty()) {
      extra_headers_ = "Allow: " + m.allow + "\r\n";
      send_error(ErrorKind::MethodNotAllowed, "the route does not accept this method", true);
    } else {
      send_error(ErrorKind::NoRoute, "no route matches this request", true);
    }
    return;
  }
  ctx_.route = m.route;
  ctx_.remainder = m.remainder;
  resolve_client();
  if (!m.route->allow_from.empty() && !client_allowed(m.route->allow_from)) {
    log_info("route=" + m.route->name + " request_id=" + ctx_.request_id + ": client " + effective_ip_ +
             " is not in allow_from (403)");
    send_error(ErrorKind::Forbidden, "the client address is not allowed on this route", true);
    return;
  }
  if (const Authenticator* auth = ctx_.runtime->authenticator(*m.route)) {
    for (const std::string& n : auth->strip_names()) ctx_.strip_names.push_back(n);
    // Header-based credentials are decided now (before 100 Continue); signatures after the body.
    if (!auth->needs_body()) {
      AuthResult r = auth->check_head(head, wall_clock_ms() / 1000);
      if (!r.ok) {
        refuse_unauthorized(r);
        return;
      }
    }
  }
  if (head.expect_other) {
    send_error(ErrorKind::ExpectationFailed, "only 'Expect: 100-continue' is supported", true);
    return;
  }
  uint64_t limit = m.route->body_limit(config());
  if (head.framing == Framing::ContentLength && head.content_length > limit) {
    send_error(ErrorKind::BodyTooLarge, "the request body exceeds the route's max_body_size", true);
    return;
  }

  CodecLimits lim;
  lim.max_body_size = limit;
  lim.head_bytes_used = head.raw.size();
  lim.max_header_size = config().limits.max_header_size;
  lim.header_fields_used = head.fields.size();
  lim.max_headers = config().limits.max_headers;
  lim.keep_trailers = m.route->trailers == TrailerMode::Merge;
  if (codec_.begin(head, lim, this) == RequestCodec::Status::Error) {
    send_error(codec_.error_kind(), codec_.error_message(), true);
    return;
  }
  if (head.expect_continue && head.version_minor == 1 && head.framing != Framing::None && !codec_.complete()) {
    // Every response carries the request id (SPEC 4), the interim one too.
    std::string h = "HTTP/1.1 100 Continue\r\nX-Request-Id: ";
    h += ctx_.request_id;
    h += "\r\n\r\n";
    out_.add(std::move(h));
    flush_output();
    if (state_ == State::Closed) return;
  }
  if (codec_.complete()) {
    body_complete();
    return;
  }
  set_state(State::ReadingBody);
  arm_timer(config().timeouts.body);
}

bool InboundConnection::process_body_bytes(const BlockRef& block, const char* p, size_t n, size_t* used) {
  feed_block_ = block;
  size_t consumed = 0;
  RequestCodec::Status st = codec_.feed(p, n, &consumed);
  feed_block_.reset();
  *used = consumed;
  if (st == RequestCodec::Status::Error) {
    send_error(codec_.error_kind(), codec_.error_message(), true);
    return false;
  }
  if (st == RequestCodec::Status::Complete) body_complete();
  return state_ != State::Closing && state_ != State::Closed;
}

bool InboundConnection::on_body_bytes(const char* p, size_t n) {
  RequestBody& body = ctx_.body;
  body.spans.push_back(Span{feed_block_, p, n});
  body.size += n;
  body.in_memory += n;
  // memory_buffer bounds the memory a body pins, not just its bytes: a body sent in 1-byte
  // chunks pins about six times its size in read blocks.
  if (feed_block_.get() != body.last_block) {
    body.last_block = feed_block_.get();
    body.held += Block::kSize;
  }
  const char* why = nullptr;
  // A body may pin one block more than memory_buffer: the block the connection reads into
  // exists whether or not the body spills, and a body that crosses a block boundary pins both.
  // So a memory_buffer below Block::kSize still keeps small bodies in memory.
  // The span list counts too (a Span per chunk: 32 bytes for a 1-byte chunk), and the bound
  // holds after the first spill as well, so a body in tiny chunks cannot pin ~100x the limit.
  const uint64_t limit = config().limits.memory_buffer;
  const uint64_t pinned = body.held + body.spans.size() * sizeof(Span);
  const bool pins_too_much = pinned > Block::kSize && pinned - Block::kSize > limit;  // no overflow
  if ((body.spill_fd < 0 && (body.in_memory > limit || pins_too_much)) ||
      (body.spill_fd >= 0 && (body.in_memory >= kSpillBatch || pins_too_much))) {
    if (!spill(&why)) {
      codec_.fail(ErrorKind::InternalError, why);
      return false;
    }
  }
  return true;
}

// Moves the in-memory spans to the request's temp file in storage.dir (unlinked: nothing is
// left behind if the process dies).
bool InboundConnection::spill(const char** why) {
  RequestBody& body = ctx_.body;
  if (body.spill_fd < 0) {
    const std::string& dir = config().storage.dir;
    body.spill_fd = ::open(dir.c_str(), O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
    if (body.spill_fd < 0) {
      std::string tmpl = dir + "/.spill-XXXXXX";
      body.spill_fd = ::mkostemp(tmpl.data(), O_CLOEXEC);
      if (body.spill_fd >= 0) ::unlink(tmpl.c_str());
    }
    if (body.spill_fd < 0) {
      const int e = errno;
      log_error("route=" + ctx_.route->name + " request_id=" + ctx_.request_id +
                ": cannot create a temp file in storage.dir " + dir + ": " + std::strerror(e) +
                (e == EMFILE || e == ENFILE
                     ? " (out of file descriptors: raise LimitNOFILE= or lower limits.max_connections)"
                     : e == ENOSPC ? " (the disk is full)"
                                   : " (check that the directory exists and is writable by the dechunkd user)"));
      *why = "the gateway could not store the request body";
      return false;
    }
  }
  size_t i = 0;
  while (i < body.spans.size()) {
    iovec iov[64];
    int cnt = 0;
    for (size_t j = i; j < body.spans.size() && cnt < 64; ++j, ++cnt) {
      iov[cnt].iov_base = const_cast<char*>(body.spans[j].ptr);
      iov[cnt].iov_len = body.spans[j].len;
    }
    ssize_t w = ::pwritev(body.spill_fd, iov, cnt, static_cast<off_t>(body.spilled));
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) {
      const int e = w < 0 ? errno : ENOSPC;
      log_error("route=" + ctx_.route->name + " request_id=" + ctx_.request_id + ": writing the request body to storage.dir " +
                config().storage.dir + " failed: " + std::strerror(e) +
                (e == EFBIG ? " (a file size limit: LimitFSIZE= / ulimit -f)" : " (is the disk full?)"));
      *why = "the gateway could not store the request body";
      return false;
    }
    body.spilled += static_cast<uint64_t>(w);
    size_t left = static_cast<size_t>(w);
    while (left > 0 && i < body.spans.size()) {
      Span& s = body.spans[i];
      if (left >= s.len) {
        left -= s.len;
        s.block.reset();
        ++i;
      } else {
        s.ptr += left;
        s.len -= left;
        left = 0;
      }
    }
  }
  body.spans.clear();
  body.in_memory = 0;
  body.held = 0;
  body.last_block = nullptr;
  return true;
}

void InboundConnection::body_complete() {
  const char* why = nullptr;
  if (ctx_.body.spill_fd >= 0 && !ctx_.body.spans.empty() && !spill(&why)) {
    send_error(ErrorKind::InternalError, why, true);
    return;
  }
  ctx_.trailers = codec_.trailers();
  set_state(State::Handling);
  timer_->clear();
  dispatch_pending_ = true;  // process() dispatches once the rest of the read is stashed
}

namespace {
// The body as the authenticator sees it: the spilled part first, then the spans in memory.
class RequestBodyBytes : public BodyBytes {
 public:
  explicit RequestBodyBytes(const RequestBody& b) : b_(b) {}
  bool visit(const std::function<bool(const char*, size_t)>& fn) const override {
    if (b_.spill_fd >= 0) {
      std::string buf(64 * 1024, '\0');
      uint64_t off = 0;
      while (off < b_.spilled) {
        size_t want = static_cast<size_t>(std::min<uint64_t>(buf.size(), b_.spilled - off));
        ssize_t n = ::pread(b_.spill_fd, buf.data(), want, static_cast<off_t>(off));
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return false;
        if (!fn(buf.data(), static_cast<size_t>(n))) return true;
        off += static_cast<uint64_t>(n);
      }
    }
    for (const Span& s : b_.spans) {
      if (!fn(s.ptr, s.len)) return true;
    }
    return true;
  }

 private:
  const RequestBody& b_;
};
}  // namespace

void InboundConnection::refuse_unauthorized(const AuthResult& r) {
  log_info("route=" + ctx_.route->name + " request_id=" + ctx_.request_id + " client=" + effective_ip_ +
           ": unauthorized (401): " + r.reason);
  if (!r.www_authenticate.empty()) extra_headers_ = "WWW-Authenticate: " + r.www_authenticate + "\r\n";
  // Refused from the head: the body is never read, so the connection closes (SPEC 11); after
  // the body it stays open.
  send_error(ErrorKind::Unauthorized, "missing or invalid credentials", state_ != State::Handling);
}

// The client address the gateway believes: the peer, or with trusted_proxies and a trusted
// peer, the rightmost X-Forwarded-For entry that is not itself a trusted proxy.
void InboundConnection::resolve_client() {
  const auto* peer = reinterpret_cast<const sockaddr*>(&peer_);
  effective_ip_ = ctx_.client_ip;
  effective_addr_ = peer_;
  const ListenConfig* lc = ctx_.runtime->listen_config(listen_address_);
  if (!lc || lc->trusted_proxies.empty()) return;
  auto trusted = [&](const sockaddr* sa) {
    for (const Cidr& c : lc->trusted_proxies) {
      if (c.contains(sa)) return true;
    }
    return false;
  };
  if (!trusted(peer)) {
    // Not from a trusted proxy: its X-Forwarded-For is not believed and not passed on.
    ctx_.strip_names.push_back("X-Forwarded-For");
    return;
  }
  std::vector<std::string_view> hops;
  for (const HeaderField& f : ctx_.head.fields) {
    if (iequals(f.name, "x-forwarded-for")) split_tokens(f.value, hops);
  }
  for (size_t i = hops.size(); i-- > 0;) {
    std::string ip(hops[i]);
    sockaddr_storage ss{};
    auto* s4 = reinterpret_cast<sockaddr_in*>(&ss);
    auto* s6 = reinterpret_cast<sockaddr_in6*>(&ss);
    if (inet_pton(AF_INET, ip.c_str(), &s4->sin_addr) == 1) {
      s4->sin_family = AF_INET;
    } else if (inet_pton(AF_INET6, ip.c_str(), &s6->sin6_addr) == 1) {
      s6->sin6_family = AF_INET6;
    } else {
      break;  // garbage: believe nothing further left
    }
    effective_ip_ = ip;
    effective_addr_ = ss;
    if (!trusted(reinterpret_cast<sockaddr*>(&ss))) break;
  }
}

bool InboundConnection::client_allowed(const std::vector<Cidr>& allow) const {
  for (const Cidr& c : allow) {
    if (c.contains(reinterpret_cast<const sockaddr*>(&effective_addr_))) return true;
  }
  return false;
}

void InboundConnection::dispatch() {
  if (const Authenticator* auth = ctx_.runtime->authenticator(*ctx_.route)) {
    if (auth->needs_body()) {
      AuthResult r = auth->check_body(ctx_.head, RequestBodyBytes(ctx_.body), wall_clock_ms() / 1000);
      if (r.busy) {
        log_warn("route=" + ctx_.route->name + " request_id=" + ctx_.request_id + ": " + r.reason +
                 " (503 overloaded, Retry-After: 1)");
        retry_after_s_ = 1;
        send_error(ErrorKind::Overloaded, "the gateway is checking other large signed requests; retry shortly", false);
        return;
      }
      if (!r.ok) {
        refuse_unauthorized(r);
        return;
      }
    }
  }
  switch (ctx_.route->mode) {
    case RouteMode::Echo:
      serve_echo();
      return;
    case RouteMode::Proxy:
      start_proxy();
      return;
    case RouteMode::Queue:
      start_queue();
      return;
  }
}

void InboundConnection::outbound_head(const TargetConfig* target, std::string_view request_target,
                                      std::string& out) const {
  std::vector<HeaderField> trailer_fields;
  for (auto& t : ctx_.trailers) trailer_fields.push_back(HeaderField{t.first, t.second});
  OutboundInput in;
  in.head = &ctx_.head;
  in.route = ctx_.route;
  in.target = target;
  in.request_target = request_target;
  in.client_addr = ctx_.client_ip;
  in.inbound_tls = ctx_.inbound_tls;
  in.request_id = ctx_.request_id;
  in.request_id_generated = ctx_.request_id_generated;
  in.trailers = &trailer_fields;
  in.body_length = ctx_.body.size;
  for (const std::string& n : ctx_.strip_names) in.strip_names.push_back(n);
  build_outbound_head(in, out);
}

void InboundConnection::start_proxy() {
  const TargetConfig& target = ctx_.route->targets.front();
  // One call per connection, reused request after request (its buffers with it).
  if (!call_) call_ = std::make_unique<ProxyCall>(worker_, *this);
  ExchangeRequest& req = call_->prepare();
  req.runtime = ctx_.runtime;
  req.target = &target;
  req.route_name.assign(ctx_.route->name);
  req.request_id.assign(ctx_.request_id);
  req.head_request = ctx_.head.method == "HEAD";
  outbound_head(&target, map_request_target(*ctx_.route, target.url, ctx_.remainder, ctx_.head.query), req.head);
  const RequestBody* body = &ctx_.body;  // lives as long as this request, which outlives the call
  req.add_body = [body](OutQueue& q) { body->add_to(q); };
  call_->start();
}

// Queue mode (SPEC 6): the request goes to the queue thread with one outbound head per target,
// built now by the proxy path's builder; the answer comes back once it is durable.
void InboundConnection::start_queue() {
  QueueService* queue = worker_.shared().queue;
  if (!queue) {
    send_error(ErrorKind::Overloaded, "the queue is not available", false);
    return;
  }
  const RouteConfig& route = *ctx_.route;
  QueueSubmission sub;
  QueuedMessage& m = sub.msg;
  m.route = route.name;
  m.method = std::string(ctx_.head.method);
  m.path = std::string(ctx_.head.target);
  m.body_size = ctx_.body.size;
  for (const HeaderField& f : ctx_.head.fields) {
    bool stripped = false;
    for (const std::string& n : ctx_.strip_names) stripped |= iequals(f.name, n);
    if (stripped) continue;
    m.head_fields.append(f.name);
    m.head_fields += ": ";
    m.head_fields.append(f.value);
    m.head_fields += "\r\n";
    if (route.dedupe && m.dedupe_key.empty() && iequals(f.name, route.dedupe->header)) {
      m.dedupe_key = std::string(f.value);
    }
  }
  // The gateway's own delivery fields are never taken from the sender.
  for (const char* own : {"X-Dechunkd-Message-Id", "X-Dechunkd-Delivery-Id", "X-Dechunkd-Attempt"}) {
    ctx_.strip_names.emplace_back(own);
  }
  for (const TargetConfig& t : route.targets) {
    m.targets.push_back(t.url.text);
    std::string head;
    outbound_head(&t, map_request_target(route, t.url, ctx_.remainder, ctx_.head.query), head);
    head.resize(head.size() - 2);  // the final empty line: a delivery adds its fields first
    m.target_heads.push_back(std::move(head));
  }
  if (route.dedupe) sub.dedupe_window_ms = route.dedupe->window.count();
  sub.accept_status = route.accept_status;
  // A spilled body travels as a duplicate of its temp file's descriptor (the queue thread maps
  // it); only the bytes still in memory are copied.
  if (ctx_.body.spill_fd >= 0) {
    sub.spill_fd = ::fcntl(ctx_.body.spill_fd, F_DUPFD_CLOEXEC, 0);
    if (sub.spill_fd < 0) {
      send_error(ErrorKind::InternalError, std::string("duplicating the spilled body's file failed: ") +
                                               std::strerror(errno), false);
      return;
    }
    sub.spill_len = ctx_.body.spilled;
  }
  sub.body.reserve(ctx_.body.in_memory);
  for (const Span& span : ctx_.body.spans) sub.body.append(span.ptr, span.len);
  queue_waiter_ = std::make_shared<QueueWaiter>();
  queue_waiter_->conn = this;
  Worker* w = &worker_;
  queue->submit(std::move(sub), [w, waiter = queue_waiter_](QueueAck ack) {
    w->post([waiter, ack = std::move(ack)] {
      if (waiter->conn) waiter->conn->queue_answered(ack);
    });
  });
}

void InboundConnection::queue_answered(const QueueAck& ack) {
  queue_waiter_.reset();
  if (state_ != State::Handling) return;
  if (ack.status == 503) {
    log_warn("route=" + ctx_.route->name + " request_id=" + ctx_.request_id + ": not queued: " + ack.error);
    retry_after_s_ = ack.retry_after_s > 0 ? ack.retry_after_s : 1;
    // A full queue is the sender's business (it should slow down); a storage failure's detail
    // (paths, offsets, errno) is the operator's, in the log line above.
    const bool full = ack.error.rfind("the queue is full", 0) == 0;
    send_error(ErrorKind::Overloaded,
               full ? std::string_view(ack.error)
                    : std::string_view("the gateway cannot store requests right now; retry later"),
               false);
    return;
  }
  status_ = ack.status;
  std::string body = "{\"id\":\"";
  json_escape(body, ack.id);
  body += "\"}";
  std::string h = "HTTP/1.1 ";
  append_decimal(h, static_cast<uint64_t>(status_));
  h += ' ';
  h += status_reason(status_);
  h += "\r\nContent-Type: application/json\r\nContent-Length: ";
  append_decimal(h, body.size());
  h += "\r\n";
  append_common_headers(h, will_close());
  if (ctx_.head.method != "HEAD") h += body;
  out_.add(std::move(h));
  response_started_ = true;
  finish_response();
}

void InboundConnection::serve_echo() {
  std::string echo;
  outbound_head(nullptr, ctx_.head.target, echo);
  status_ = 200;
  std::string h = "HTTP/1.1 200 OK\r\nContent-Type: message/http\r\nContent-Length: ";
  append_decimal(h, echo.size() + ctx_.body.size);
  h += "\r\n";
  append_common_headers(h, will_close());
  out_.add(std::move(h));
  if (ctx_.head.method != "HEAD") {
    out_.add(std::move(echo));
    ctx_.body.add_to(out_);
  }
  response_started_ = true;
  finish_response();
}

// ---------------------------------------------------------------------------------------------
// Response side

void InboundConnection::append_common_headers(StringWriter& h, bool close) {
  h.put("X-Request-Id: ");
  h.put(ctx_.request_id);
  h.put("\r\n");
  if (close) {
    h.put("Connection: close\r\n");
  } else if (ctx_.head.version_minor == 0) {
    h.put("Connection: keep-alive\r\n");
  }
  h.put("\r\n");
}

void InboundConnection::append_common_headers(std::string& h, bool close) {
  StringWriter w(h, 64 + ctx_.request_id.size());
  append_common_headers(w, close);
}

void InboundConnection::set_target_status(int status, int64_t ms) {
  target_status_ = status;
  target_ms_ = ms;
}

void InboundConnection::relay_head(const ResponseCodec& resp) {
  if (state_ != State::Handling) return;
  const bool bodiless = resp.no_body() || ctx_.head.method == "HEAD";
  if (!resp.transfer_codings().empty() && !bodiless && ctx_.head.version_minor == 0) {
    // The body stays coded (gzip, say) and HTTP/1.0 has no Transfer-Encoding to say so.
    std::string why = "the target's response uses the transfer coding \"" + resp.transfer_codings() +
                      "\", which an HTTP/1.0 client cannot receive";
    log_warn("route=" + std::string(ctx_.route ? ctx_.route->name : "-") + " request_id=" + ctx_.request_id +
             ": " + why + " (502 bad_gateway)");
    upstream_failed(ErrorKind::BadGateway, why);
    return;
  }
  status_ = resp.status();
  std::vector<std::string_view>& conn_tokens = conn_tokens_;  // keeps its capacity
  conn_tokens.clear();
  size_t fields_bytes = 0;
  for (auto& f : resp.headers()) {
    fields_bytes += f.first.size() + f.second.size() + 4;
    if (iequals(f.first, "connection")) split_tokens(f.second, conn_tokens);
  }
  // The head is built into a kept buffer queued by reference when nothing else is queued (so
  // nothing still refers to it); behind queued bytes it is an owned copy.
  const bool borrow = out_.empty();
  std::string owned;
  std::string& h = borrow ? resp_head_ : owned;
  h.clear();
  chunked_out_ = false;
  {
    // Status line, relayed fields, framing and the common fields: an upper bound.
    StringWriter w(h, 160 + resp.reason().size() + fields_bytes + ctx_.request_id.size());
    w.put("HTTP/1.1 ");
    w.decimal(resp.status());
    w.put(' ');
    w.put(resp.reason());  // relayed as received, also when empty
    w.put("\r\n");
    for (auto& f : resp.headers()) {
      if (skip_response_field(f.first, conn_tokens)) continue;
      w.put(f.first);
      w.put(": ");
      w.put(f.second);
      w.put("\r\n");
    }
    if (resp.has_content_length()) {
      w.put("Content-Length: ");  // also for HEAD, 204 and 304: what the target declared
      w.decimal(resp.content_length());
      w.put("\r\n");
    } else if (!bodiless) {
      if (ctx_.head.version_minor == 1) {
        // Responses are streamed, never de-chunked (SPEC 10). Other transfer codings stay on
        // the body, so they stay in the field, before the chunked the relay applies.
        w.put("Transfer-Encoding: ");
        if (!resp.transfer_codings().empty()) {
          w.put(resp.transfer_codings());
          w.put(", ");
        }
        w.put("chunked\r\n");
        chunked_out_ = true;
      } else {
        close_after_ = true;  // an HTTP/1.0 client gets a close-delimited body
      }
    }
    append_common_headers(w, will_close());
  }
  if (borrow) out_.add_borrowed(h.data(), h.size());
  else out_.add(std::move(h));
  response_started_ = true;
  // Not flushed here: the body bytes of the same read go out in the same sendmsg
  // (ProxyCall calls flush_relayed() after each read).
}

void InboundConnection::flush_relayed() {
  if (state_ == State::Handling && !out_.empty()) flush_output();
}

void InboundConnection::relay_body(const Span& span) {
  if (state_ != State::Handling || span.len == 0) return;
  if (chunked_out_) {
    std::string line;
    append_hex(line, span.len);
    line += "\r\n";
    out_.add(std::move(line));
    out_.add_span(span);
    out_.add(std::string("\r\n"));
  } else {
    out_.add_span(span);
  }
  if (out_.pending() >= 64 * 1024) flush_output();
}

bool InboundConnection::client_backlogged() const { return out_.pending() > kHighWatermark; }

void InboundConnection::relay_end() {
  if (state_ != State::Handling) return;
  if (chunked_out_) out_.add(std::string("0\r\n\r\n"));
  finish_response();
}

void InboundConnection::upstream_failed(ErrorKind kind, const std::string& reason) {
  if (state_ != State::Handling) return;
  if (response_started_) {
    // Part of the response is already on its way: the only honest signal left is a cut.
    abort();
    return;
  }
  std::string msg(error_default_message(kind));
  msg += ": ";
  msg += reason;
  send_error(kind, msg, false);
}

void InboundConnection::send_error(ErrorKind kind, std::string_view message, bool close) {
  if (state_ == State::Closed || state_ == State::Closing) return;
  if (close) close_after_ = true;
  if (ctx_.request_id.empty()) worker_.new_request_id(ctx_.request_id);
  status_ = error_status(kind);
  std::string body = error_body(kind, message, ctx_.request_id);
  std::string h;
  h.reserve(256 + body.size());
  h += "HTTP/1.1 ";
  append_decimal(h, static_cast<uint64_t>(status_));
  h += ' ';
  h += error_reason(kind);
  h += "\r\nContent-Type: application/json\r\nContent-Length: ";
  append_decimal(h, body.size());
  h += "\r\n";
  h += extra_headers_;  // Allow for a 405, WWW-Authenticate for a 401
  if (kind == ErrorKind::Overloaded) {
    h += "Retry-After: ";
    append_decimal(h, static_cast<uint64_t>(retry_after_s_));
    h += "\r\n";
  }
  append_common_headers(h, will_close());
  // A HEAD answer has no content (RFC 9110 9.3.2); Content-Length says what a GET would get.
  if (ctx_.head.method != "HEAD") h += body;
  if (call_) call_->cancel();
  out_.add(std::move(h));
  response_started_ = true;
  if (state_ == State::ReadingHead || state_ == State::ReadingBody) {
    // Answered before the request was read: the rest of it is never read (SPEC 11).
    set_state(State::Handling);
    timer_->clear();
  }
  finish_response();
}

void InboundConnection::finish_response() {
  response_complete_ = true;
  flush_output();
}

void InboundConnection::handle_writable() {
  bool read_waits = transport_->read_wants_write();
  flush_output();
  if (read_waits && state_ != State::Closed) handle_readable();  // TLS: a read waited for output
}

void InboundConnection::flush_output() {
  if (state_ == State::Closed) return;
  int err = 0;
  size_t before = out_.pending();
  IoStatus st = transport_->flush(out_, &err);
  if (st == IoStatus::Error || st == IoStatus::Closed) {
    close_now();  // the client went away
    return;
  }
  if (st == IoStatus::WouldBlock) {
    if (transport_->write_wants_read()) {
      // TLS: the write waits for the client's bytes: wait on readable (the socket is writable,
      // so waiting on writable would spin), also while a request is being handled.
      want_write(false);
      want_read(true);
    } else {
      want_write(true);
    }
    // timeouts.send: restarted whenever the client takes bytes.
    if (out_.pending() != before || !timer_->pending()) {
      arm_timer(config().timeouts.send);
    }
    if (call_ && out_.pending() < kLowWatermark) call_->client_drained();
    return;
  }
  if (!transport_->read_wants_write()) want_write(false);
  if (call_) call_->client_drained();
  if (state_ == State::Handling) {
    timer_->clear();
    if (response_complete_) request_done();
  } else if (state_ == State::Closing && !closing_shutdown_) {
    start_linger();
  }
}

void InboundConnection::request_done() {
  account_request();
  // The call is kept for the connection's next request; it lets go of this one's resources.
  // (It may be inside its own callback here: release() frees nothing it still uses.)
  if (call_) call_->release();
  if (close_after_ || draining_ || peer_eof_) {
    begin_close();
    return;
  }
  reset_request();
  set_state(State::ReadingHead);
  want_read(true);
  if (pending_.len > 0) {
    // The next pipelined request is already here: handle it from the loop, not recursively.
    arm_timer(config().timeouts.header);
    event_active(read_ev_.get(), EV_READ, 0);
  } else {
    cur_block_.reset();
    arm_timer(config().timeouts.idle);
  }
}

void InboundConnection::reset_request() {
  first_request_ = false;
  request_bytes_seen_ = false;
  head_buf_.clear();
  if (head_buf_.capacity() > 8192) head_buf_.shrink_to_fit();
  std::vector<HeaderField> fields = std::move(ctx_.head.fields);  // keeps its capacity
  fields.clear();
  ctx_.head = RequestHead{};
  ctx_.head.fields = std::move(fields);
  ctx_.route = nullptr;
  ctx_.remainder = {};
  ctx_.request_id.clear();
  ctx_.request_id_generated = false;
  ctx_.body.clear();
  ctx_.trailers.clear();
  ctx_.runtime = worker_.runtime();  // a reload applies from the next request on
  chunked_in_ = false;
  dispatch_pending_ = false;
  response_started_ = response_complete_ = chunked_out_ = false;
  status_ = 0;
  extra_headers_.clear();
  retry_after_s_ = 1;
  ctx_.strip_names.clear();
  effective_ip_.clear();
  logged_ = false;
  target_status_ = -1;
  target_ms_ = -1;
}

void InboundConnection::account_request() {
  if (in_flight_) {
    in_flight_ = false;
    --worker_.stats().requests_in_flight;
  }
  if (logged_ || status_ == 0) return;
  logged_ = true;
  if (!request_bytes_seen_) {  // answered without a request (overloaded)
    start_ = std::chrono::steady_clock::now();
    start_wall_ms_ = wall_clock_ms();
  }
  auto elapsed = std::chrono::steady_clock::now() - start_;
  int64_t duration_ms = std::chrono::duration_cast<milliseconds>(elapsed).count();
  std::string_view route_name = ctx_.route ? std::string_view(ctx_.route->name) : std::string_view("_unmatched");

  // Metrics: one place per request, worker-local, no locks.
  static constexpr std::string_view kModes[] = {"proxy", "queue", "echo"};
  RouteStats& rs = worker_.stats().route(route_name, ctx_.route ? kModes[static_cast<int>(ctx_.route->mode)] : "none");
  ++rs.requests_by_status[status_];
  rs.duration.observe(std::chrono::duration<double>(elapsed).count());
  rs.received_bytes += ctx_.body.size;
  if (chunked_in_) ++rs.chunked_requests;
  if (target_ms_ >= 0 && ctx_.route && !ctx_.route->targets.empty()) {
    worker_.stats()
        .upstream(rs, ctx_.runtime->target_label(ctx_.route->targets.front()))
        .observe(static_cast<double>(target_ms_) / 1000.0);
  }

  AccessLog& log = worker_.access_log();
  if (!log.enabled()) return;
  AccessRecord r;
  r.time_ms = start_wall_ms_;
  r.request_id = ctx_.request_id;
  r.remote = effective_ip_.empty() || effective_ip_ == ctx_.client_ip ? std::string_view(remote_)
                                                                     : std::string_view(effective_ip_);
  r.route = route_name;
  r.method = ctx_.head.method;
  r.path = ctx_.head.path;
  r.status = status_;
  r.bytes_in = ctx_.body.size;
  r.chunked = chunked_in_;
  r.target_status = target_status_;
  r.target_ms = target_ms_;
  r.duration_ms = duration_ms;
  log.append(r);
}

}  // namespace dechunkd
