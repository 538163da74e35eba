// libFuzzer target for the inbound request path: bytes a client sends in, what a target (or the
// echo route) would receive out. It composes the library's pure pieces the way
// InboundConnection does (docs/architecture.md "A request, step by step"), without sockets:
// scan_request_head on the accumulated head bytes, parse_request_head, Router::match,
// RequestCodec::begin/feed, build_outbound_head; pipelined messages are parsed one after the
// other, and a message the connection would answer with an error ends the stream (it closes).
//
// Input: byte 0 is a mode byte, the rest is what the client sends.
//   bits 0-4: read size (1..31 bytes per read; 0 = the whole stream in one read)
//   bit 5:    the listener is TLS (X-Forwarded-Proto: https)
// Readable seeds start with '@' (whole stream) or 'A'..'_' (reads of 1..31 bytes).
//
// Invariants (a violation traps; see FUZZ_CHECK):
// - scan/codec never report more bytes used than given; NeedMore means everything was used; a
//   head that is not complete never grows past max_header_size; a head completes in new bytes.
// - Content-Length bodies: the decoded body is exactly the declared bytes as received.
//   Chunked bodies: the message end and the body agree with an independent strict RFC 9112 7.1
//   decoder; re-encoded as one chunk and decoded again, the body is unchanged.
// - What a target receives: `METHOD SP target SP HTTP/1.1`, field lines without bare CR/LF,
//   NUL or controls, no Transfer-Encoding or other hop-by-hop field, at most one Content-Length
//   equal to the body length (exactly one when the body is framed or the method is
//   POST/PUT/PATCH), one Host for proxy routes; and the forwarded bytes parse back, through the
//   gateway's own parser, as exactly one message with the same body.
// - The forwarded messages do not depend on how the stream was split into reads.
// - A head the codec accepts is also accepted by llhttp with all its fields (the codec feeds
//   llhttp only the request line and the framing field).
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <llhttp.h>

#include "config/config.hpp"
#include "fuzz_check.hpp"
#include "http/codec.hpp"
#include "http/request_head.hpp"
#include "proxy/outbound.hpp"
#include "reference_chunked.hpp"
#include "router/router.hpp"

using namespace dechunkd;

namespace {

// Small limits, so that 413/414/431 paths are reachable with inputs of a few KiB.
constexpr std::string_view kConfig = R"(
listen:
  - address: "127.0.0.1:0"
workers: 1
limits:
  max_body_size: 4KiB
  max_header_size: 1KiB
  max_headers: 16
  max_uri_size: 256
routes:
  - name: hooks
    path_prefix: /hooks/
    methods: [POST, PUT]
    target: "http://127.0.0.1:9000/in?sig=abc"
    request_headers:
      set: { X-Api-Key: "k" }
      remove: [Cookie]
  - name: echo
    path: /echo
    mode: echo
  - name: merge
    path: /merge
    trailers: merge
    max_body_size: 1KiB
    target: "http://[::1]:9001/m/"
)";

constexpr int kMaxMessages = 8;  // pipelined messages looked at per input
constexpr std::string_view kClientAddr = "192.0.2.7";

// RequestCodec feeds llhttp only the request line and the framing field (codec.cpp). This is
// the check that makes that safe: llhttp, given every field of a head that parse_request_head
// accepted (values without OWS, as RFC 9112 reads them), accepts the head too.
bool llhttp_accepts_all_fields(const RequestHead& head) {
  std::string h;
  h.append(head.method).append(" ").append(head.target);
  h += head.version_minor == 0 ? " HTTP/1.0\r\n" : " HTTP/1.1\r\n";
  for (const HeaderField& f : head.fields) h.append(f.name).append(": ").append(f.value).append("\r\n");
  h += "\r\n";
  llhttp_settings_t settings;
  llhttp_settings_init(&settings);
  llhttp_t parser;
  llhttp_init(&parser, HTTP_REQUEST, &settings);
  // llhttp reads Proxy-Connection like Connection: "upgrade" there with an Upgrade field
  // pauses it as an upgrade (the codec's message-complete pause comes first, so the gateway
  // is not affected; the Upgrade field is removed as hop-by-hop).
  const llhttp_errno_t err = llhttp_execute(&parser, h.data(), h.size());
  return err == HPE_OK || err == HPE_PAUSED_UPGRADE;
}

struct World {
  std::shared_ptr<const Config> config;
  std::unique_ptr<Router> router;
  HeadLimits limits;
  HeadLimits big;  // for re-parsing what a target receives: limits are the inbound side's
};

const World& world() {
  static const World w = [] {
    World x;
    LoadResult r = load_config_string(kConfig, "fuzz_request.yaml");
    if (!r.config) {
      for (const ConfigError& e : r.errors) std::fprintf(stderr, "%s\n", e.str().c_str());
      std::abort();
    }
    x.config = r.config;
    x.router = std::make_unique<Router>(*x.config);
    x.limits = HeadLimits{x.config->limits.max_header_size, x.config->limits.max_headers,
                          x.config->limits.max_uri_size};
    x.big = HeadLimits{1 << 20, 1 << 16, 1 << 20};
    return x;
  }();
  return w;
}

using fuzz::is_ctl;
using fuzz::is_token;
using fuzz::reference_dechunk;

bool ieq(std::string_view a, std::string_view b) { return iequals(a, b); }

// Collects decoded body bytes and checks they point into the bytes being fed (the connection
// keeps them as spans of its read blocks: zero-copy).
struct Sink : BodySink {
  const char* lo = nullptr;
  const char* hi = nullptr;
  std::string body;
  bool on_body_bytes(const char* p, size_t n) override {
    FUZZ_CHECK(lo != nullptr);  // no body bytes out of begin(): it is fed the head only
    FUZZ_CHECK(p >= lo && p <= hi && n <= static_cast<size_t>(hi - p));
    body.append(p, n);
    return true;
  }
};

// Runs a forwarded message (head + body) through the gateway's own parser with large limits:
// it must be exactly one complete message whose body is `body`. Echo shows no Host when the
// client sent none (HTTP/1.0; docs: a choice), so one is added for the re-parse then.
void check_reparses(std::string fwd_head, const std::string& body, bool add_host) {
  const World& w = world();
  if (add_host) fwd_head.insert(fwd_head.size() - 2, "Host: echo.invalid\r\n");
  std::string stream = fwd_head + body;
  size_t head_len = 0;
  HeadError e{ErrorKind::BadRequest, ""};
  FUZZ_CHECK(scan_request_head(stream, w.big, &head_len, &e) == HeadProgress::Complete);
  FUZZ_CHECK(head_len == fwd_head.size());
  RequestHead h;
  const std::string head_copy = fwd_head;
  const auto bad = parse_request_head(head_copy, w.big, &h);
  if (bad)
    std::fprintf(stderr, "forwarded head refused: %.*s\n%s", static_cast<int>(bad->message.size()),
                 bad->message.data(), head_copy.c_str());
  FUZZ_CHECK(!bad);
  FUZZ_CHECK(h.version_minor == 1);
  if (body.empty()) {
    FUZZ_CHECK(h.framing == Framing::None ||
               (h.framing == Framing::ContentLength && h.content_length == 0));
  } else {
    FUZZ_CHECK(h.framing == Framing::ContentLength && h.content_length == body.size());
  }
  CodecLimits lim;
  lim.max_body_size = UINT64_MAX;
  lim.head_bytes_used = head_copy.size();
  lim.max_header_size = w.big.max_header_size;
  lim.header_fields_used = h.fields.size();
  lim.max_headers = w.big.max_headers;
  RequestCodec codec;
  Sink sink;
  RequestCodec::Status st = codec.begin(h, lim, &sink);
  FUZZ_CHECK(st != RequestCodec::Status::Error);
  if (st == RequestCodec::Status::NeedMore) {
    sink.lo = body.data();
    sink.hi = body.data() + body.size();
    size_t used = 0;
    st = codec.feed(body.data(), body.size(), &used);
    FUZZ_CHECK(st == RequestCodec::Status::Complete);
    FUZZ_CHECK(used == body.size());
  }
  FUZZ_CHECK(codec.complete());
  FUZZ_CHECK(sink.body == body);
}

// What a target (or the echo route) receives: the head built by build_outbound_head.
void check_forwarded(const std::string& out, const std::string& body, const RequestHead& head,
                     bool proxy) {
  // One empty line, at the end: the head cannot be read as two messages.
  FUZZ_CHECK(out.size() >= 4 && out.compare(out.size() - 4, 4, "\r\n\r\n") == 0);
  FUZZ_CHECK(out.find("\r\n\r\n") == out.size() - 4);
  std::vector<std::string_view> lines;
  std::string_view rest(out.data(), out.size() - 2);  // without the empty line's CRLF
  while (!rest.empty()) {
    const size_t eol = rest.find("\r\n");
    FUZZ_CHECK(eol != std::string_view::npos);
    lines.push_back(rest.substr(0, eol));
    rest.remove_prefix(eol + 2);
  }
  FUZZ_CHECK(!lines.empty());
  for (std::string_view l : lines) {
    FUZZ_CHECK(l.find('\r') == std::string_view::npos);  // no bare CR/LF inside any line
    FUZZ_CHECK(l.find('\n') == std::string_view::npos);
    FUZZ_CHECK(l.find('\0') == std::string_view::npos);
  }

  // METHOD SP request-target SP HTTP/1.1
  const std::string_view rl = lines[0];
  const size_t sp1 = rl.find(' ');
  FUZZ_CHECK(sp1 != std::string_view::npos);
  const size_t sp2 = rl.find(' ', sp1 + 1);
  FUZZ_CHECK(sp2 != std::string_view::npos);
  FUZZ_CHECK(rl.substr(0, sp1) == head.method && is_token(head.method));
  const std::string_view target = rl.substr(sp1 + 1, sp2 - sp1 - 1);
  FUZZ_CHECK(!target.empty());
  for (char c : target)
    FUZZ_CHECK(static_cast<unsigned char>(c) > 0x20 && static_cast<unsigned char>(c) < 0x7f);
  FUZZ_CHECK(target[0] == '/' || target == "*");
  FUZZ_CHECK(rl.substr(sp2 + 1) == "HTTP/1.1");

  int content_length = 0;
  int hosts = 0;
  std::string_view cl_value;
  for (size_t i = 1; i < lines.size(); ++i) {
    const std::string_view l = lines[i];
    const size_t colon = l.find(':');
    FUZZ_CHECK(colon != std::string_view::npos);
    const std::string_view name = l.substr(0, colon);
    FUZZ_CHECK(is_token(name));
    FUZZ_CHECK(l.substr(colon, 2) == ": " || l.size() == colon + 1);
    for (char c : l.substr(colon + 1)) FUZZ_CHECK(!is_ctl(c));
    const std::string_view value = l.size() > colon + 2 ? l.substr(colon + 2) : std::string_view{};
    if (ieq(name, "Content-Length")) {
      ++content_length;
      cl_value = value;
    }
    if (ieq(name, "Host")) ++hosts;
    FUZZ_CHECK(!ieq(name, "Transfer-Encoding"));
    FUZZ_CHECK(!is_hop_by_hop(name) || ieq(name, "Content-Length"));
  }
  FUZZ_CHECK(content_length <= 1);
  const bool framed = head.framing != Framing::None || head.method == "POST" ||
                      head.method == "PUT" || head.method == "PATCH";
  if (framed || !body.empty()) FUZZ_CHECK(content_length == 1);
  if (content_length == 1) FUZZ_CHECK(cl_value == std::to_string(body.size()));
  FUZZ_CHECK(hosts <= 1);
  if (proxy || head.has_host) FUZZ_CHECK(hosts == 1);

  check_reparses(out, body, hosts == 0);
}

// A forwarded message: what the target gets (head, body).
struct Forwarded {
  std::string head;
  std::string body;
  bool operator==(const Forwarded&) const = default;
};

// One client connection, as InboundConnection processes it.
class Connection {
 public:
  Connection(const uint8_t* data, size_t size, bool tls)
      : data_(reinterpret_cast<const char*>(data)), size_(size), tls_(tls) {}

  // Feeds the stream in reads of `read_size` bytes (0: one read).
  std::vector<Forwarded> run(size_t read_size) {
    for (size_t off = 0; off < size_ && state_ != State::Closed;) {
      const size_t len = read_size == 0 ? size_ - off : std::min(read_size, size_ - off);
      const char* p = data_ + off;
      size_t left = len;
      off += len;
      while (left > 0 && state_ != State::Closed) {
        size_t used = 0;
        if (state_ == State::ReadingHead)
          used = head_bytes(p, left);
        else
          used = body_bytes(p, left);
        FUZZ_CHECK(used <= left);
        p += used;
        left -= used;
      }
    }
    return std::move(forwarded_);
  }

 private:
  enum class State { ReadingHead, ReadingBody, Closed };

  size_t head_bytes(const char* p, size_t n) {
    const World& w = world();
    const size_t old = head_buf_.size();
    head_buf_.append(p, n);
    size_t head_len = 0;
    HeadError err{ErrorKind::BadRequest, ""};
    const HeadProgress prog = scan_request_head(head_buf_, w.limits, &head_len, &err);
    if (prog == HeadProgress::NeedMore) {
      // The head buffer is bounded: a limit crossed is answered at once (431/414).
      FUZZ_CHECK(head_buf_.size() <= w.limits.max_header_size + 2);
      return n;
    }
    if (prog == HeadProgress::Error) {
      state_ = State::Closed;
      return n;
    }
    // The head ends in the new bytes (the connection computes head_len - old).
    FUZZ_CHECK(head_len > old && head_len <= head_buf_.size());
    // Stateless: the head alone scans the same way.
    size_t again = 0;
    FUZZ_CHECK(scan_request_head(std::string_view(head_buf_).substr(0, head_len), w.limits, &again,
                                 &err) == HeadProgress::Complete);
    FUZZ_CHECK(again == head_len);
    const size_t used = head_len - old;
    head_buf_.resize(head_len);
    body_begin_ = static_cast<size_t>(p - data_) + used;
    head_complete();
    return used;
  }

  void head_complete() {
    const World& w = world();
    RequestHead& head = head_;
    if (parse_request_head(head_buf_, w.limits, &head)) {
      state_ = State::Closed;  // answered from the head: the connection closes
      return;
    }
    FUZZ_CHECK(head.raw.data() == head_buf_.data() && head.raw.size() == head_buf_.size());
    FUZZ_CHECK(is_token(head.method));
    FUZZ_CHECK(head.version_minor == 0 || head.version_minor == 1);
    FUZZ_CHECK(head.fields.size() <= w.limits.max_headers);
    for (const HeaderField& f : head.fields) {
      FUZZ_CHECK(is_token(f.name));
      for (char c : f.value) FUZZ_CHECK(!is_ctl(c));
    }
    if (head.version_minor == 1) FUZZ_CHECK(head.has_host);

    // The request id, as the connection settles it.
    std::vector<std::string_view> conn_tokens;
    for (const HeaderField& f : head.fields) {
      if (!ieq(f.name, "connection")) continue;
      std::string_view v = f.value;
      for (;;) {
        const size_t c = v.find(',');
        std::string_view t = v.substr(0, c);
        while (!t.empty() && (t.front() == ' ' || t.front() == '\t')) t.remove_prefix(1);
        while (!t.empty() && (t.back() == ' ' || t.back() == '\t')) t.remove_suffix(1);
        if (!t.empty()) conn_tokens.push_back(t);
        if (c == std::string_view::npos) break;
        v.remove_prefix(c + 1);
      }
    }
    bool listed = false;
    for (std::string_view t : conn_tokens) listed = listed || ieq(t, "x-request-id");
    request_id_ = "fuzz-" + std::to_string(forwarded_.size());
    request_id_generated_ = true;
    for (const HeaderField& f : head.fields) {
      if (!listed && ieq(f.name, "x-request-id") && !f.value.empty()) {
        request_id_.assign(f.value);
        request_id_generated_ = false;
        break;
      }
    }

    match_ = w.router->match(head.host, head.path, head.method);
    if (match_.route == nullptr || head.expect_other) {
      state_ = State::Closed;  // 404/405/417
      return;
    }
    limit_ = match_.route->body_limit(*w.config);
    if (head.framing == Framing::ContentLength && head.content_length > limit_) {
      state_ = State::Closed;  // 413 before the body
      return;
    }
    CodecLimits lim;
    lim.max_body_size = limit_;
    lim.head_bytes_used = head.raw.size();
    lim.max_header_size = w.config->limits.max_header_size;
    lim.header_fields_used = head.fields.size();
    lim.max_headers = w.config->limits.max_headers;
    lim.keep_trailers = match_.route->trailers == TrailerMode::Merge;
    limits_ = lim;
    sink_.body.clear();
    sink_.lo = sink_.hi = nullptr;
    body_consumed_ = 0;
    if (codec_.begin(head, lim, &sink_) == RequestCodec::Status::Error) {
      state_ = State::Closed;
      return;
    }
    FUZZ_CHECK(llhttp_accepts_all_fields(head));
    if (codec_.complete()) {
      message_complete();
      return;
    }
    FUZZ_CHECK(head.framing != Framing::None);  // an unframed request has no body to wait for
    state_ = State::ReadingBody;
  }

  size_t body_bytes(const char* p, size_t n) {
    sink_.lo = p;
    sink_.hi = p + n;
    size_t consumed = n + 1;  // must be set by feed
    const RequestCodec::Status st = codec_.feed(p, n, &consumed);
    sink_.lo = sink_.hi = nullptr;
    FUZZ_CHECK(consumed <= n);
    if (st == RequestCodec::Status::Error) {
      state_ = State::Closed;
      return consumed;
    }
    body_consumed_ += consumed;
    FUZZ_CHECK(codec_.body_bytes() == sink_.body.size());
    FUZZ_CHECK(sink_.body.size() <= limit_);
    if (st == RequestCodec::Status::NeedMore) {
      FUZZ_CHECK(consumed == n);  // else the connection would feed the same bytes again
      FUZZ_CHECK(!codec_.complete());
      return consumed;
    }
    FUZZ_CHECK(codec_.complete());
    message_complete();
    return consumed;
  }

  void message_complete() {
    const RequestHead& head = head_;
    const std::string& body = sink_.body;
    const std::string_view raw_body(data_ + body_begin_, body_consumed_);
    FUZZ_CHECK(body_begin_ + body_consumed_ <= size_);
    FUZZ_CHECK(codec_.body_bytes() == body.size());
    FUZZ_CHECK(body.size() <= limit_);
    switch (head.framing) {
      case Framing::None:
        FUZZ_CHECK(body.empty() && body_consumed_ == 0);
        break;
      case Framing::ContentLength:
        FUZZ_CHECK(body.size() == head.content_length);
        FUZZ_CHECK(raw_body == body);
        break;
      case Framing::Chunked: {
        const auto ref =
            reference_dechunk(std::string_view(data_ + body_begin_, size_ - body_begin_));
        if (!ref) {
          std::fprintf(stderr,
                       "the codec completed a chunked body that RFC 9112 framing refuses: %s\n",
                       std::string(raw_body).c_str());
        }
        FUZZ_CHECK(ref.has_value());
        FUZZ_CHECK(ref->end == body_consumed_);
        FUZZ_CHECK(ref->body == body);
        check_rechunked(body);
        break;
      }
    }

    // What the target (or the echo route) receives.
    const RouteConfig& route = *match_.route;
    std::vector<HeaderField> trailer_fields;
    for (const auto& t : codec_.trailers())
      trailer_fields.push_back(HeaderField{t.first, t.second});
    if (route.trailers != TrailerMode::Merge) FUZZ_CHECK(trailer_fields.empty());
    OutboundInput in;
    in.head = &head;
    in.route = &route;
    const bool proxy = route.mode == RouteMode::Proxy;
    std::string request_target;
    if (proxy) {
      FUZZ_CHECK(route.targets.size() == 1);
      in.target = &route.targets.front();
      request_target = map_request_target(route, in.target->url, match_.remainder, head.query);
    } else {
      request_target = std::string(head.target);
    }
    in.request_target = request_target;
    in.client_addr = kClientAddr;
    in.inbound_tls = tls_;
    in.request_id = request_id_;
    in.request_id_generated = request_id_generated_;
    in.trailers = &trailer_fields;
    in.body_length = body.size();
    std::string out;
    build_outbound_head(in, out);
    check_forwarded(out, body, head, proxy);
    forwarded_.push_back(Forwarded{std::move(out), body});

    // The next request starts after this one, unless the client asked to close.
    head_buf_.clear();
    state_ = head.keep_alive && static_cast<int>(forwarded_.size()) < kMaxMessages
                 ? State::ReadingHead
                 : State::Closed;
  }

  // The body re-encoded as one chunk decodes to the same bytes.
  void check_rechunked(const std::string& body) {
    static constexpr char kHex[] = "0123456789abcdef";
    std::string size_hex;
    for (size_t v = body.size(); v > 0; v >>= 4) size_hex.insert(size_hex.begin(), kHex[v & 15]);
    std::string enc;
    if (!body.empty()) enc += size_hex + "\r\n" + body + "\r\n";
    enc += "0\r\n\r\n";
    RequestCodec codec;
    Sink sink;
    CodecLimits lim = limits_;
    lim.keep_trailers = false;
    FUZZ_CHECK(codec.begin(head_, lim, &sink) == RequestCodec::Status::NeedMore);
    sink.lo = enc.data();
    sink.hi = enc.data() + enc.size();
    size_t used = 0;
    FUZZ_CHECK(codec.feed(enc.data(), enc.size(), &used) == RequestCodec::Status::Complete);
    FUZZ_CHECK(used == enc.size());
    FUZZ_CHECK(sink.body == body);
  }

  const char* data_;
  size_t size_;
  bool tls_;
  State state_ = State::ReadingHead;
  std::string head_buf_;
  RequestHead head_;
  RouteMatch match_;
  uint64_t limit_ = 0;
  CodecLimits limits_;
  RequestCodec codec_;
  Sink sink_;
  size_t body_begin_ = 0;     // offset in the stream of the current message's first body byte
  size_t body_consumed_ = 0;  // body bytes the codec used so far
  std::string request_id_;
  bool request_id_generated_ = true;
  std::vector<Forwarded> forwarded_;
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const uint8_t mode = data[0];
  const size_t read_size = mode & 0x1f;
  const bool tls = (mode & 0x20) != 0;
  ++data;
  --size;

  Connection split(data, size, tls);
  const std::vector<Forwarded> got = split.run(read_size);
  if (read_size != 0) {
    // How the bytes were cut into reads must not change what is forwarded.
    Connection whole(data, size, tls);
    const std::vector<Forwarded> want = whole.run(0);
    if (got.size() != want.size()) {
      std::fprintf(stderr, "reads of %zu bytes forward %zu messages, one read forwards %zu\n",
                   read_size, got.size(), want.size());
    }
    FUZZ_CHECK(got == want);
  }
  // DECHUNKD_FUZZ_VERBOSE=1: show what a target would receive (to check what a seed reaches).
  static const bool verbose = std::getenv("DECHUNKD_FUZZ_VERBOSE") != nullptr;
  if (verbose) {
    std::fprintf(stderr, "forwarded %zu message(s)\n", got.size());
    for (const Forwarded& f : got) {
      std::fprintf(stderr, "%s[%zu body bytes]\n", f.head.c_str(), f.body.size());
    }
  }
  return 0;
}
