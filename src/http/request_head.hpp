// Strict parsing of a raw HTTP/1.x request head (request line + header fields + final CRLF).
// This is the gateway's own check in front of llhttp: it settles every rule of SPEC 4 and 11
// that Debian's llhttp 8.1.0 lets through, and it decides framing and version from the raw
// fields. Pure functions over bytes: unit-tested and fuzzed without sockets.
#pragma once
#include <cstdint>
#include <optional>
#include <string_view>
#include <vector>

#include "http/errors.hpp"

namespace dechunkd {

struct HeadLimits {
  uint64_t max_header_size = 16 * 1024;  // request line + all header lines, incl. CRLFs
  uint64_t max_headers = 100;            // header field count
  uint64_t max_uri_size = 8 * 1024;      // request-target length
};

// One header field; views point into the raw head. Value has leading/trailing OWS removed.
struct HeaderField {
  std::string_view name;
  std::string_view value;
};

enum class Framing {
  None,           // no body framing: empty body
  ContentLength,  // body of content_length bytes
  Chunked,        // Transfer-Encoding: chunked
};

struct RequestHead {
  std::string_view raw;        // the whole head including the final CRLF CRLF
  std::string_view method;     // e.g. "POST"
  std::string_view target;     // request-target as received (origin-form)
  std::string_view path;       // target before '?'
  std::string_view query;      // after '?', without it; empty when absent
  bool has_query = false;      // a '?' was present
  int version_minor = 1;       // HTTP/1.<minor>; only 1.0 and 1.1 are accepted
  std::vector<HeaderField> fields;  // in received order
  Framing framing = Framing::None;
  uint64_t content_length = 0;      // valid when framing == ContentLength
  bool keep_alive = true;      // from version and Connection tokens
  bool expect_continue = false;     // Expect: 100-continue (case-insensitive)
  bool expect_other = false;        // any other Expect value -> 417 (decided by the caller in order)
  std::string_view host;       // the single Host value (may be empty for HTTP/1.0 without Host)
  bool has_host = false;
};

// What a partial head looks like so far, for answering 414/431 before the head is complete.
enum class HeadProgress {
  NeedMore,   // no verdict yet
  Complete,   // a head ends at *head_len
  Error,      // *error holds the verdict (414, 431, 505, or 400 for bytes that can never be valid;
              // at a crossed limit, a framing 400/501 the fields so far already give)
};

// Scans the bytes received so far. On Complete, *head_len is the length including the final
// empty line. Only limits and obviously fatal bytes are judged here; parse_request_head does
// the rest on the complete head. Precisely: request-line and field-line syntax (400) and an
// unsupported version (505, once the request line has ended) are reported as soon as seen; a
// crossed limit on a head not yet complete is reported at once as 414 (target) or 431 (size,
// count), unless the complete field lines so far already give a framing 400/501, which ranks
// first (SPEC 11). A complete head in the buffer is always Complete, even over a limit: parse
// then applies the complete-head order (505, framing, 414, 431). Empty lines (CRLF) before the
// request line are skipped (RFC 9112 2.2) and count toward max_header_size; max_header_size
// counts every byte before the final empty line. Stateless: rescans buf on each call.
HeadProgress scan_request_head(std::string_view buf, const HeadLimits& lim, size_t* head_len,
                               ErrorKind* error);

struct HeadError {
  ErrorKind kind;
  std::string_view message;  // a human sentence (static storage)
};

// The same scan, with the verdict's message (static storage) for the error body and the log.
HeadProgress scan_request_head(std::string_view buf, const HeadLimits& lim, size_t* head_len,
                               HeadError* error);

// Parses a complete head (as delimited by scan_request_head). Checks, in SPEC 11 order: request
// line syntax 400, version 505, field syntax 400, framing 400/501 (CL+TE before coding rules),
// 414, 431, Host rules 400, absolute-form 400, CONNECT 501, Upgrade 501. The route-dependent
// checks (404, 403, 405, 401, 417, 413) are the caller's.
// Also R8: a target that is not origin-form is 400, except "OPTIONS *" (accepted, path "*").
// On success returns nullopt and fills *out (views into `raw`). On failure *out still holds the
// request line as far as it was parsed (method, target, path) for the log.
std::optional<HeadError> parse_request_head(std::string_view raw, const HeadLimits& lim,
                                            RequestHead* out);

// scan_request_head and, once the head is complete, parse_request_head of it in one walk (the
// connection's path: the head is walked once, not twice). NeedMore and Error are exactly what
// scan_request_head answers (*out then holds no request line). On Complete, *head_len is set,
// *out and *parse_error are what parse_request_head(buf.substr(0, *head_len)) gives; *out's
// views point into buf, and bytes after the head are never read.
HeadProgress read_request_head(std::string_view buf, const HeadLimits& lim, size_t* head_len,
                               HeadError* error, RequestHead* out,
                               std::optional<HeadError>* parse_error);

// Moves every view of h that points into [from, from + len) to the same offset from to: after
// the head was parsed where it was read and its bytes were copied to to.
void rebase_request_head(RequestHead& h, const char* from, size_t len, const char* to);

// A received X-Request-Id the gateway keeps: 1 to 256 printable ASCII bytes. It appears in a JSON
// body, logs and a response header, which must all show the same value.
bool usable_request_id(std::string_view v);

// Appends the non-empty comma-separated elements of a field value to out, trimmed of OWS (no
// quoted-string handling: for token lists such as Connection or Transfer-Encoding).
void split_tokens(std::string_view v, std::vector<std::string_view>& out);

// Case-insensitive ASCII comparison for header names and tokens. Inline: it runs for many
// fields of every request and message, mostly to be answered by the size check.
inline bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    char x = a[i];
    char y = b[i];
    if (x >= 'A' && x <= 'Z') x = static_cast<char>(x + ('a' - 'A'));
    if (y >= 'A' && y <= 'Z') y = static_cast<char>(y + ('a' - 'A'));
    if (x != y) return false;
  }
  return true;
}

}  // namespace dechunkd
