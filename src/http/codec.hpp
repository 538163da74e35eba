// The HTTP/1.1 codec around llhttp (the only module that includes llhttp.h).
// RequestCodec decodes a request body (Content-Length or chunked) after the strict head parser
// accepted the head; ResponseCodec parses a target's response. Both hand out body bytes as
// pointers into the bytes being fed (zero-copy: the caller turns them into Spans).
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "http/errors.hpp"
#include "http/request_head.hpp"

namespace dechunkd {

struct LlhttpState;  // hides llhttp_t

// Receives decoded body bytes. Returning false stops decoding (the receiver then sets the error
// through RequestCodec::fail or ResponseCodec::fail).
class BodySink {
 public:
  virtual ~BodySink() = default;
  virtual bool on_body_bytes(const char* p, size_t n) = 0;
};

struct CodecLimits {
  uint64_t max_body_size = 0;          // de-chunked bytes
  uint64_t head_bytes_used = 0;        // the head's size: trailers count toward max_header_size
  uint64_t max_header_size = 0;
  uint64_t header_fields_used = 0;     // the head's field count: trailers count toward max_headers
  uint64_t max_headers = 0;
  bool keep_trailers = false;          // store trailer fields (trailers: merge)
};

class RequestCodec {
 public:
  enum class Status { NeedMore, Complete, Error };

  RequestCodec();
  ~RequestCodec();
  RequestCodec(const RequestCodec&) = delete;
  RequestCodec& operator=(const RequestCodec&) = delete;

  // Starts a message with its head, already validated by parse_request_head. Status Error if
  // llhttp disagrees.
  Status begin(const RequestHead& head, const CodecLimits& limits, BodySink* sink);
  // Feeds body bytes; *consumed tells how many belong to this message (the rest start the next
  // request). Complete once the whole body (and trailers) arrived.
  Status feed(const char* p, size_t n, size_t* consumed);

  void fail(ErrorKind kind, std::string_view message);
  ErrorKind error_kind() const { return error_kind_; }
  const std::string& error_message() const { return error_message_; }
  bool complete() const { return complete_; }
  uint64_t body_bytes() const { return body_bytes_; }
  // Trailer fields (name, value) when limits.keep_trailers.
  const std::vector<std::pair<std::string, std::string>>& trailers() const { return trailers_; }

 private:
  friend struct RequestCallbacks;
  Status run(const char* p, size_t n, size_t* consumed);

  std::unique_ptr<LlhttpState> st_;
  BodySink* sink_ = nullptr;
  CodecLimits limits_;
  bool in_trailers_ = false;
  bool complete_ = false;
  bool failed_ = false;
  uint64_t body_bytes_ = 0;
  uint64_t ext_bytes_ = 0;             // chunk extension bytes on the current chunk line
  uint64_t trailer_bytes_ = 0;
  uint64_t trailer_fields_ = 0;
  bool field_seen_ = false;            // a name callback came for the current trailer line
  const char* feed_begin_ = nullptr;   // start of the bytes being fed (obs-fold detection)
  char prev_last_byte_ = 0;            // last non-SP/HTAB byte fed before this feed
  char tail_[2] = {0, 0};              // last two bytes fed so far (final CRLF check)
  bool chunked_ = false;
  std::string normalized_;             // the head as fed to llhttp
  std::string cur_name_, cur_value_;
  std::vector<std::pair<std::string, std::string>> trailers_;
  ErrorKind error_kind_ = ErrorKind::BadRequest;
  std::string error_message_;
};

// A target's response. The caller feeds bytes as they arrive; the head is reported once
// (1xx interim responses are skipped), then body bytes, then completion.
class ResponseCodec {
 public:
  enum class Status { NeedMore, HeadComplete, Complete, Error };

  ResponseCodec();
  ~ResponseCodec();
  ResponseCodec(const ResponseCodec&) = delete;
  ResponseCodec& operator=(const ResponseCodec&) = delete;

  // head_request: the request was HEAD, so the response has no body whatever it declares.
  void reset(bool head_request, BodySink* sink);
  // Feeds bytes. Stops after the head (HeadComplete: call feed again with the rest) and at
  // message end (Complete; *consumed says how much belonged to the response).
  Status feed(const char* p, size_t n, size_t* consumed);
  // The target closed the connection: completes a close-delimited body, else Error.
  Status finish();

  void fail(std::string_view message);
  const std::string& error_message() const { return error_message_; }

  int status() const { return status_; }
  const std::string& reason() const { return reason_; }
  // The response head's fields in received order (valid until the next response).
  std::span<const std::pair<std::string, std::string>> headers() const { return {headers_.data(), header_count_}; }
  bool keep_alive() const { return keep_alive_; }
  // How the body is framed on the wire.
  bool chunked() const { return chunked_; }
  bool has_content_length() const { return has_content_length_; }
  uint64_t content_length() const { return content_length_; }
  bool no_body() const { return no_body_; }          // HEAD, 1xx, 204, 304
  // The response's transfer codings other than a final chunked, as received and comma-joined
  // ("gzip"): the body bytes stay coded with them. Empty for most responses.
  const std::string& transfer_codings() const { return codings_; }
  bool close_delimited() const { return !no_body_ && !chunked_ && !has_content_length_; }
  bool any_byte_seen() const { return any_byte_; }

 private:
  friend struct ResponseCallbacks;
  std::unique_ptr<LlhttpState> st_;
  BodySink* sink_ = nullptr;
  bool head_request_ = false;
  bool head_done_ = false;
  bool complete_ = false;
  bool failed_ = false;
  bool any_byte_ = false;
  bool pause_for_head_ = false;  // set by on_headers_complete for a final response
  int status_ = 0;
  std::string reason_;
  // Field slots are kept across responses and only the first header_count_ are current; the
  // field being read goes straight into slot header_count_ (slot_open_), so a reused codec (one
  // per client connection's ProxyCall) appends into strings that already have capacity: no
  // heap allocation per response header.
  std::vector<std::pair<std::string, std::string>> headers_;
  size_t header_count_ = 0;
  bool slot_open_ = false;
  size_t head_bytes_ = 0;  // status line and fields so far, against the 64 KiB bound
  bool keep_alive_ = false;
  bool chunked_ = false;
  bool has_content_length_ = false;
  uint64_t content_length_ = 0;
  bool no_body_ = false;
  std::string codings_;
  std::vector<std::string_view> coding_list_;  // scratch for collecting codings_
  std::string error_message_;
};

}  // namespace dechunkd
