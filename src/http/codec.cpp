#include "http/codec.hpp"

#include <llhttp.h>

#include <charconv>
#include <cstring>

namespace dechunkd {

struct LlhttpState {
  llhttp_t parser;
};

namespace {
constexpr uint64_t kMaxChunkExtensionBytes = 4096;  // SPEC 11
constexpr size_t kMaxResponseHead = 64 * 1024;     // a target's head beyond this is malformed

// A control byte other than HTAB, or DEL: never allowed in a chunk extension (RFC 9112 7.1.1,
// quoted-string's qdtext), a field value or a reason phrase.
bool has_control_byte(const char* p, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    const auto c = static_cast<unsigned char>(p[i]);
    if ((c < 0x20 && c != '\t') || c == 0x7f) return true;
  }
  return false;
}
}  // namespace

// ---------------------------------------------------------------------------------------------
// Request body decoding

struct RequestCallbacks {
  static RequestCodec* self(llhttp_t* p) { return static_cast<RequestCodec*>(p->data); }

  static int on_headers_complete(llhttp_t* p) {
    self(p)->in_trailers_ = true;
    return 0;
  }

  static int on_body(llhttp_t* p, const char* at, size_t len) {
    RequestCodec* c = self(p);
    // Limits are checked before bytes are accepted, in a form that cannot overflow (STYLE 7).
    if (c->limits_.max_body_size - c->body_bytes_ < len) {
      c->fail(ErrorKind::BodyTooLarge, "the request body exceeds the route's max_body_size");
      return HPE_USER;
    }
    c->body_bytes_ += len;
    if (!c->sink_->on_body_bytes(at, len)) {
      c->failed_ = true;
      return HPE_USER;
    }
    return 0;
  }

  static int on_chunk_header(llhttp_t* p) {
    RequestCodec* c = self(p);
    c->ext_bytes_ = 0;
    // Refuse a chunk that cannot fit as soon as its size is known: no need to read it.
    if (c->limits_.max_body_size - c->body_bytes_ < p->content_length) {
      c->fail(ErrorKind::BodyTooLarge, "the request body exceeds the route's max_body_size");
      return HPE_USER;
    }
    return 0;
  }

  static int add_ext(llhttp_t* p, size_t n) {
    RequestCodec* c = self(p);
    c->ext_bytes_ += n;
    if (c->ext_bytes_ > kMaxChunkExtensionBytes) {
      c->fail(ErrorKind::BadRequest, "a chunk extension is longer than 4 KiB");
      return HPE_USER;
    }
    return 0;
  }
  static int on_ext_data(llhttp_t* p, const char* at, size_t len) {
    // llhttp 8.1.0 passes control bytes and DEL inside a quoted extension value; RFC 9112's
    // qdtext does not allow them (the fuzzer's reference reader found the difference).
    if (has_control_byte(at, len)) {
      self(p)->fail(ErrorKind::BadRequest, "a chunk extension contains a control character");
      return HPE_USER;
    }
    return add_ext(p, len);
  }
  static int on_ext_complete(llhttp_t* p) { return add_ext(p, 1); }  // the ';' or '='

  // Trailer fields (the head's fields were validated by parse_request_head and are ignored).
  static int on_header_field(llhttp_t* p, const char* at, size_t len) {
    RequestCodec* c = self(p);
    if (!c->in_trailers_) return 0;
    c->field_seen_ = true;
    return trailer_bytes(c, at, len, &c->cur_name_);
  }
  static int on_header_value(llhttp_t* p, const char* at, size_t len) {
    RequestCodec* c = self(p);
    if (!c->in_trailers_) return 0;
    // llhttp 8.1.0 accepts obs-fold and reports the folded part as another value span: the last
    // byte before a value span, skipping SP/HTAB, is ':' (or a value byte after a read split),
    // and a LF only for a folded line.
    const char* q = at;
    while (q > c->feed_begin_ && (q[-1] == ' ' || q[-1] == '\t')) --q;
    char before = q > c->feed_begin_ ? q[-1] : c->prev_last_byte_;
    if (before == '\n') {
      c->fail(ErrorKind::BadRequest, "obs-fold (a line starting with whitespace) in the trailers");
      return HPE_USER;
    }
    return trailer_bytes(c, at, len, &c->cur_value_);
  }
  static int trailer_bytes(RequestCodec* c, const char* at, size_t len, std::string* into) {
    // llhttp 8.1.0 passes obs-fold and some control bytes through: refuse them here.
    if (has_control_byte(at, len)) {
      c->fail(ErrorKind::BadRequest, "a trailer field contains a control character or obs-fold");
      return HPE_USER;
    }
    c->trailer_bytes_ += len;
    if (c->limits_.max_header_size - c->limits_.head_bytes_used < c->trailer_bytes_) {
      c->fail(ErrorKind::HeadersTooLarge, "the request head and trailers exceed limits.max_header_size");
      return HPE_USER;
    }
    if (c->limits_.keep_trailers || into == &c->cur_name_) into->append(at, len);
    return 0;
  }
  static int on_header_value_complete(llhttp_t* p) {
    RequestCodec* c = self(p);
    if (!c->in_trailers_) return 0;
    if (!c->field_seen_ || c->cur_name_.empty()) {
      c->fail(ErrorKind::BadRequest, "a trailer field has an empty name");
      return HPE_USER;
    }
    for (char ch : c->cur_name_) {
      if (ch == ' ' || ch == '\t') {
        c->fail(ErrorKind::BadRequest, "a trailer field name contains whitespace");
        return HPE_USER;
      }
    }
    if (iequals(c->cur_name_, "transfer-encoding")) {
      c->fail(ErrorKind::BadRequest, "Transfer-Encoding is not allowed in trailers");
      return HPE_USER;
    }
    c->trailer_bytes_ += 4;  // ": " and CRLF
    ++c->trailer_fields_;
    if (c->limits_.max_headers - c->limits_.header_fields_used < c->trailer_fields_ ||
        c->limits_.max_header_size - c->limits_.head_bytes_used < c->trailer_bytes_) {
      c->fail(ErrorKind::HeadersTooLarge, "the request head and trailers exceed the header limits");
      return HPE_USER;
    }
    if (c->limits_.keep_trailers) c->trailers_.emplace_back(std::move(c->cur_name_), std::move(c->cur_value_));
    c->cur_name_.clear();
    c->cur_value_.clear();
    c->field_seen_ = false;
    return 0;
  }

  static int on_message_complete(llhttp_t* p) {
    self(p)->complete_ = true;
    return HPE_PAUSED;  // the next request's bytes stay unconsumed
  }


  static const llhttp_settings_t* settings() {
    static const llhttp_settings_t s = [] {
      llhttp_settings_t x;
      llhttp_settings_init(&x);
      x.on_headers_complete = on_headers_complete;
      x.on_body = on_body;
      x.on_chunk_header = on_chunk_header;
      x.on_chunk_extension_name = on_ext_data;
      x.on_chunk_extension_value = on_ext_data;
      x.on_chunk_extension_name_complete = on_ext_complete;
      x.on_chunk_extension_value_complete = on_ext_complete;
      x.on_header_field = on_header_field;
      x.on_header_value = on_header_value;
      x.on_header_value_complete = on_header_value_complete;
      x.on_message_complete = on_message_complete;
      return x;
    }();
    return &s;
  }
};

RequestCodec::RequestCodec() : st_(std::make_unique<LlhttpState>()) {}
RequestCodec::~RequestCodec() = default;

void RequestCodec::fail(ErrorKind kind, std::string_view message) {
  if (failed_) return;  // the first verdict stands
  failed_ = true;
  error_kind_ = kind;
  error_message_.assign(message);
}

RequestCodec::Status RequestCodec::begin(const RequestHead& head, const CodecLimits& limits, BodySink* sink) {
  llhttp_init(&st_->parser, HTTP_REQUEST, RequestCallbacks::settings());
  st_->parser.data = this;
  sink_ = sink;
  limits_ = limits;
  in_trailers_ = complete_ = failed_ = false;
  body_bytes_ = ext_bytes_ = trailer_bytes_ = trailer_fields_ = 0;
  feed_begin_ = nullptr;
  prev_last_byte_ = 0;
  tail_[0] = tail_[1] = 0;
  chunked_ = head.framing == Framing::Chunked;
  field_seen_ = false;
  cur_name_.clear();
  cur_value_.clear();
  trailers_.clear();
  error_message_.clear();
  // llhttp checks the request line and learns the framing; the fields themselves were parsed
  // and validated by parse_request_head (SPEC 4 and 11 are stricter than llhttp 8.1.0), so it
  // is fed only the one field that frames the body, written canonically (llhttp 8.1.0 refuses
  // OWS around Transfer-Encoding codings although RFC 9112 allows it). The other fields would
  // cost two thirds of llhttp's work per request for no verdict: the request fuzzer checks that
  // every head parse_request_head accepts is also accepted by llhttp in full.
  normalized_.clear();
  normalized_.append(head.method);
  normalized_ += ' ';
  normalized_.append(head.target);
  normalized_ += head.version_minor == 0 ? " HTTP/1.0\r\n" : " HTTP/1.1\r\n";
  if (head.framing == Framing::Chunked) {
    normalized_ += "Transfer-Encoding: chunked\r\n";
  } else if (head.framing == Framing::ContentLength) {
    char digits[24];
    const auto res = std::to_chars(digits, digits + sizeof digits, head.content_length);
    normalized_ += "Content-Length: ";
    normalized_.append(digits, static_cast<size_t>(res.ptr - digits));
    normalized_ += "\r\n";
  }
  normalized_ += "\r\n";
  size_t consumed = 0;
  Status s = run(normalized_.data(), normalized_.size(), &consumed);
  if (s == Status::Error) return s;
  if (consumed != normalized_.size()) {
    fail(ErrorKind::BadRequest, "the request head was not accepted by the HTTP parser");
    return Status::Error;
  }
  // A request without body framing must be complete with its head. llhttp waits for more after
  // some methods (PRI expects the HTTP/2 preface's "SM"): never let it swallow the next request.
  if (head.framing == Framing::None && !complete_) {
    fail(ErrorKind::BadRequest, "the request method is not supported over HTTP/1.x");
    return Status::Error;
  }
  return s;
}

RequestCodec::Status RequestCodec::feed(const char* p, size_t n, size_t* consumed) {
  if (complete_) {
    *consumed = 0;
    return Status::Complete;
  }
  return run(p, n, consumed);
}

RequestCodec::Status RequestCodec::run(const char* p, size_t n, size_t* consumed) {
  *consumed = 0;
  if (failed_) return Status::Error;
  feed_begin_ = p;
  llhttp_errno_t err = llhttp_execute(&st_->parser, p, n);
  char old_tail[2] = {tail_[0], tail_[1]};  // the bytes before this feed
  for (size_t i = n; i-- > 0;) {  // the last byte before trailing SP/HTAB, across feeds
    if (p[i] != ' ' && p[i] != '\t') {
      prev_last_byte_ = p[i];
      break;
    }
  }
  if (n >= 2) {
    tail_[0] = p[n - 2];
    tail_[1] = p[n - 1];
  } else if (n == 1) {
    tail_[0] = tail_[1];
    tail_[1] = p[0];
  }
  if (err == HPE_OK) {
    *consumed = n;
    return Status::NeedMore;
  }
  if (err == HPE_PAUSED && complete_) {
    size_t pos = static_cast<size_t>(llhttp_get_error_pos(&st_->parser) - p);
    *consumed = pos;
    // llhttp 8.1.0 accepts a chunked message ended by a bare LF ("0\r\n\n"): refuse it here.
    char last = pos >= 1 ? p[pos - 1] : old_tail[1];
    char before = pos >= 2 ? p[pos - 2] : (pos == 1 ? old_tail[1] : old_tail[0]);
    if (chunked_ && in_trailers_ && (before != '\r' || last != '\n')) {
      fail(ErrorKind::BadRequest, "the chunked body does not end with CRLF");
      return Status::Error;
    }
    return Status::Complete;
  }
  if (!failed_) {
    std::string msg = "malformed request: ";
    msg += llhttp_get_error_reason(&st_->parser);
    fail(ErrorKind::BadRequest, msg);
  }
  return Status::Error;
}

// ---------------------------------------------------------------------------------------------
// Response parsing

struct ResponseCallbacks {
  static ResponseCodec* self(llhttp_t* p) { return static_cast<ResponseCodec*>(p->data); }

  static int head_bytes(ResponseCodec* c, size_t add) {
    c->head_bytes_ += add;
    if (c->head_bytes_ > kMaxResponseHead) {
      c->fail("the response head is larger than 64 KiB");
      return HPE_USER;
    }
    return 0;
  }
  // The slot the current field is read into: names and values are appended straight into the
  // kept slots (no per-field copy, no allocation once a slot has capacity).
  static std::pair<std::string, std::string>& open_slot(ResponseCodec* c) {
    if (!c->slot_open_) {
      if (c->header_count_ == c->headers_.size()) c->headers_.emplace_back();
      auto& slot = c->headers_[c->header_count_];
      slot.first.clear();
      slot.second.clear();
      c->slot_open_ = true;
    }
    return c->headers_[c->header_count_];
  }
  static int on_message_begin(llhttp_t* p) {
    ResponseCodec* c = self(p);
    c->header_count_ = 0;
    c->head_bytes_ = 0;
    c->slot_open_ = false;
    c->reason_.clear();
    return 0;
  }
  static int on_status(llhttp_t* p, const char* at, size_t len) {
    ResponseCodec* c = self(p);
    if (head_bytes(c, len)) return HPE_USER;
    c->reason_.append(at, len);
    return 0;
  }
  static int on_header_field(llhttp_t* p, const char* at, size_t len) {
    ResponseCodec* c = self(p);
    if (c->head_done_) return 0;  // response trailers are dropped
    if (head_bytes(c, len)) return HPE_USER;
    open_slot(c).first.append(at, len);
    return 0;
  }
  static int on_header_value(llhttp_t* p, const char* at, size_t len) {
    ResponseCodec* c = self(p);
    if (c->head_done_) return 0;
    if (head_bytes(c, len)) return HPE_USER;
    open_slot(c).second.append(at, len);
    return 0;
  }
  static int on_header_value_complete(llhttp_t* p) {
    ResponseCodec* c = self(p);
    if (c->head_done_) return 0;
    auto& slot = open_slot(c);
    c->slot_open_ = false;
    if (slot.first.empty()) {
      c->fail("a response header has an empty name");
      return HPE_USER;
    }
    std::string& value = slot.second;
    for (char ch : value) {
      if (ch == '\r' || ch == '\n' || ch == '\0') {
        c->fail("a response header value contains CR, LF or NUL");
        return HPE_USER;
      }
    }
    // Trim trailing whitespace (llhttp keeps it).
    size_t keep = value.size();
    while (keep > 0 && (value[keep - 1] == ' ' || value[keep - 1] == '\t')) --keep;
    value.resize(keep);
    if (head_bytes(c, 4)) return HPE_USER;  // ": " and CRLF
    ++c->header_count_;
    return 0;
  }
  static int on_headers_complete(llhttp_t* p) {
    ResponseCodec* c = self(p);
    int status = p->status_code;
    if (status < 100) {
      c->fail("the target sent an invalid status code (below 100)");
      return HPE_USER;
    }
    if (status >= 100 && status < 200 && status != 101) {
      return 1;  // interim: never has a body, whatever it declares; skipped
    }
    // The reason phrase is relayed: no control bytes (response splitting).
    if (has_control_byte(c->reason_.data(), c->reason_.size())) {
      c->fail("the target's reason phrase contains control characters");
      return HPE_USER;
    }
    if (status == 101) {
      c->fail("the target switched protocols (101), which the gateway does not support");
      return HPE_USER;
    }
    c->status_ = status;
    c->head_done_ = true;
    c->chunked_ = (p->flags & F_CHUNKED) != 0;
    c->has_content_length_ = (p->flags & F_CONTENT_LENGTH) != 0 && !c->chunked_;
    c->content_length_ = c->has_content_length_ ? p->content_length : 0;
    c->no_body_ = c->head_request_ || status == 204 || status == 304;
    if (!collect_codings(c)) return HPE_USER;
    c->pause_for_head_ = true;
    // HEAD, 204 and 304 have no body whatever the head declares: a body sent anyway is never
    // relayed (the bytes then make the connection unusable).
    if (c->no_body_) return 1;
    return HPE_PAUSED;
  }
  // The codings of every Transfer-Encoding field but a final chunked (which llhttp decodes) go
  // into codings_, so the relay can keep them on the body: dropping them would hand the client
  // coded bytes labelled as plain. chunked before another coding cannot be relayed: the relay
  // would apply chunked a second time (RFC 9112 6.1).
  static bool collect_codings(ResponseCodec* c) {
    std::vector<std::string_view>& codings = c->coding_list_;  // keeps its capacity
    codings.clear();
    for (size_t i = 0; i < c->header_count_; ++i) {
      const auto& [name, value] = c->headers_[i];
      if (iequals(name, "transfer-encoding")) split_tokens(value, codings);
    }
    if (c->chunked_ && !codings.empty()) codings.pop_back();  // the final chunked
    for (std::string_view coding : codings) {
      if (iequals(coding, "chunked")) {
        c->fail("the target's Transfer-Encoding applies chunked before another coding");
        return false;
      }
      if (!c->codings_.empty()) c->codings_ += ", ";
      c->codings_ += coding;
    }
    return true;
  }
  static int on_chunk_extension(llhttp_t* p, const char* at, size_t len) {
    // As for requests: llhttp 8.1.0 lets control bytes and DEL through a quoted value.
    if (has_control_byte(at, len)) {
      self(p)->fail("the target's chunk extension contains a control character");
      return HPE_USER;
    }
    return 0;
  }
  static int on_body(llhttp_t* p, const char* at, size_t len) {
    ResponseCodec* c = self(p);
    if (!c->sink_->on_body_bytes(at, len)) {
      c->failed_ = true;
      return HPE_USER;
    }
    return 0;
  }
  static int on_message_complete(llhttp_t* p) {
    ResponseCodec* c = self(p);
    if (!c->head_done_) return 0;  // the end of a 1xx interim response
    c->complete_ = true;
    c->keep_alive_ = llhttp_should_keep_alive(p) != 0;
    return HPE_PAUSED;
  }
  static const llhttp_settings_t* settings() {
    static const llhttp_settings_t s = [] {
      llhttp_settings_t x;
      llhttp_settings_init(&x);
      x.on_message_begin = on_message_begin;
      x.on_status = on_status;
      x.on_header_field = on_header_field;
      x.on_header_value = on_header_value;
      x.on_header_value_complete = on_header_value_complete;
      x.on_headers_complete = on_headers_complete;
      x.on_body = on_body;
      x.on_chunk_extension_name = on_chunk_extension;
      x.on_chunk_extension_value = on_chunk_extension;
      x.on_message_complete = on_message_complete;
      return x;
    }();
    return &s;
  }
};

ResponseCodec::ResponseCodec() : st_(std::make_unique<LlhttpState>()) {}
ResponseCodec::~ResponseCodec() = default;

void ResponseCodec::reset(bool head_request, BodySink* sink) {
  llhttp_init(&st_->parser, HTTP_RESPONSE, ResponseCallbacks::settings());
  st_->parser.data = this;
  sink_ = sink;
  head_request_ = head_request;
  head_done_ = complete_ = failed_ = any_byte_ = pause_for_head_ = false;
  status_ = 0;
  reason_.clear();
  header_count_ = 0;
  head_bytes_ = 0;
  slot_open_ = false;
  keep_alive_ = chunked_ = has_content_length_ = no_body_ = false;
  content_length_ = 0;
  codings_.clear();
  error_message_.clear();
}

void ResponseCodec::fail(std::string_view message) {
  if (failed_) return;
  failed_ = true;
  error_message_.assign(message);
}

ResponseCodec::Status ResponseCodec::feed(const char* p, size_t n, size_t* consumed) {
  *consumed = 0;
  if (failed_) return Status::Error;
  if (complete_) return Status::Complete;
  if (n > 0) any_byte_ = true;
  if (llhttp_get_errno(&st_->parser) == HPE_PAUSED) llhttp_resume(&st_->parser);
  llhttp_errno_t err = llhttp_execute(&st_->parser, p, n);
  if (err == HPE_OK) {
    *consumed = n;
    return Status::NeedMore;
  }
  if (err == HPE_PAUSED) {
    *consumed = static_cast<size_t>(llhttp_get_error_pos(&st_->parser) - p);
    if (pause_for_head_) {
      pause_for_head_ = false;
      return complete_ ? Status::Complete : Status::HeadComplete;
    }
    if (complete_) return Status::Complete;
  }
  if (!failed_) {
    std::string msg = "malformed response: ";
    msg += llhttp_get_error_reason(&st_->parser);
    fail(msg);
  }
  return Status::Error;
}

ResponseCodec::Status ResponseCodec::finish() {
  if (complete_) return Status::Complete;
  if (failed_) return Status::Error;
  if (head_done_ && llhttp_message_needs_eof(&st_->parser)) {
    if (llhttp_get_errno(&st_->parser) == HPE_PAUSED) llhttp_resume(&st_->parser);
    llhttp_errno_t err = llhttp_finish(&st_->parser);
    if ((err == HPE_OK || err == HPE_PAUSED) && complete_) return Status::Complete;
  }
  fail(head_done_ ? "the target closed the connection before the response body was complete"
                  : "the target closed the connection before sending a complete response head");
  return Status::Error;
}

}  // namespace dechunkd
