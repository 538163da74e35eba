// Strict request-head checks (SPEC 4 and 11). One byte walk, HeadWalker, serves every entry
// point: scan_request_head runs it over the bytes received so far, parse_request_head over a
// complete head, read_request_head does both with one walk. Sharing the walk is what keeps the
// verdicts the same for the same bytes.
//
// Verdicts are ranked as SPEC 11 orders them once a head is complete:
//   R1 request-line syntax 400, R2 version 505, R3 field syntax 400 (bare CR/LF, controls,
//   obs-fold, names), R4 framing 400/501, R5 414, R6 431, R7 Host 400, R8 target form 400,
//   R9 CONNECT 501, R10 Upgrade 501.
// R1..R3 are found in byte order (the request line precedes the fields), so the walk stops at the
// first one. R5/R6 are only noted while walking. On a complete head every rank is applied in
// order; on an incomplete one a crossed limit is answered at once, after whatever R4 verdict the
// complete field lines so far already give.
#include "http/request_head.hpp"

#include <array>

namespace dechunkd {
namespace {

constexpr size_t npos = std::string_view::npos;

enum CharClass : uint8_t {
  kTchar = 1,        // RFC 9110 token character
  kTargetChar = 2,   // request-target byte: visible ASCII except '#'
  kValueChar = 4,    // field-value byte: HTAB, SP, VCHAR, obs-text (0x80-0xFF)
  kHostChar = 8,     // reg-name byte: unreserved / sub-delims ('%' checked separately)
};

constexpr std::array<uint8_t, 256> make_classes() {
  std::array<uint8_t, 256> t{};
  for (int c = 0; c < 256; ++c) {
    uint8_t v = 0;
    const bool alnum = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
    bool tchar = alnum;
    switch (c) {
      case '!': case '#': case '$': case '%': case '&': case '\'': case '*': case '+': case '-':
      case '.': case '^': case '_': case '`': case '|': case '~':
        tchar = true;
        break;
      default:
        break;
    }
    if (tchar) v |= kTchar;
    if (c > 0x20 && c < 0x7f && c != '#') v |= kTargetChar;
    if (c == '\t' || (c >= 0x20 && c != 0x7f)) v |= kValueChar;
    bool host = alnum;
    switch (c) {
      case '-': case '.': case '_': case '~':                                       // unreserved
      case '!': case '$': case '&': case '\'': case '(': case ')': case '*': case '+':  // sub-delims
      case ',': case ';': case '=':
        host = true;
        break;
      default:
        break;
    }
    if (host) v |= kHostChar;
    t[static_cast<size_t>(c)] = v;
  }
  return t;
}

constexpr std::array<uint8_t, 256> kClass = make_classes();

inline bool has(char c, CharClass k) { return (kClass[static_cast<unsigned char>(c)] & k) != 0; }
inline bool is_digit(char c) { return c >= '0' && c <= '9'; }
inline bool is_hex(char c) {
  return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}
inline bool is_ows(char c) { return c == ' ' || c == '\t'; }
inline bool is_ctl(char c) {
  const auto u = static_cast<unsigned char>(c);
  return u < 0x20 || u == 0x7f;
}

std::string_view trim_ows(std::string_view s) {
  size_t b = 0;
  size_t e = s.size();
  while (b < e && is_ows(s[b])) ++b;
  while (e > b && is_ows(s[e - 1])) --e;
  return s.substr(b, e - b);
}

// Calls fn(element) for each comma-separated element of a field value, trimmed of OWS, commas
// inside quoted strings not splitting. Empty elements are passed on: callers decide.
template <class Fn>
void for_each_element(std::string_view v, Fn&& fn) {
  size_t start = 0;
  bool quoted = false;
  for (size_t i = 0; i < v.size(); ++i) {
    const char c = v[i];
    if (quoted) {
      if (c == '\\') ++i;  // quoted-pair: skip the escaped byte (bounds re-checked by the loop)
      else if (c == '"') quoted = false;
    } else if (c == '"') {
      quoted = true;
    } else if (c == ',') {
      fn(trim_ows(v.substr(start, i - start)));
      start = i + 1;
    }
  }
  fn(trim_ows(v.substr(start < v.size() ? start : v.size())));
}

// transfer-coding = token *( OWS ";" OWS token BWS "=" BWS ( token / quoted-string ) )
bool valid_transfer_coding(std::string_view e) {
  size_t i = 0;
  const size_t n = e.size();
  auto token = [&]() {
    const size_t s = i;
    while (i < n && has(e[i], kTchar)) ++i;
    return i > s;
  };
  auto ows = [&]() {
    while (i < n && is_ows(e[i])) ++i;
  };
  if (!token()) return false;
  for (;;) {
    ows();
    if (i == n) return true;
    if (e[i] != ';') return false;
    ++i;
    ows();
    if (!token()) return false;
    ows();
    if (i == n || e[i] != '=') return false;
    ++i;
    ows();
    if (i < n && e[i] == '"') {
      ++i;
      bool closed = false;
      while (i < n) {
        const char c = e[i];
        if (c == '"') {
          ++i;
          closed = true;
          break;
        }
        if (c == '\\') {
          if (i + 1 >= n) return false;
          i += 2;
          continue;
        }
        ++i;  // field-value bytes were validated by the walk
      }
      if (!closed) return false;
    } else if (!token()) {
      return false;
    }
  }
}

// Host = uri-host [ ":" port ]  (RFC 9110 7.2); an empty value is allowed (RFC 9112 3.2).
bool valid_host(std::string_view v) {
  const size_t n = v.size();
  if (n == 0) return true;
  size_t i = 0;
  if (v[0] == '[') {
    const size_t close = v.find(']');
    if (close == npos || close == 1) return false;
    for (size_t k = 1; k < close; ++k)
      if (!has(v[k], kHostChar) && v[k] != ':') return false;
    i = close + 1;
  } else {
    while (i < n && v[i] != ':') {
      if (v[i] == '%') {
        if (i + 2 >= n || !is_hex(v[i + 1]) || !is_hex(v[i + 2])) return false;
        i += 3;
        continue;
      }
      if (!has(v[i], kHostChar)) return false;
      ++i;
    }
    if (i == 0) return false;  // ":80": a port without a host
  }
  if (i == n) return true;
  if (v[i] != ':') return false;
  for (++i; i < n; ++i)
    if (!is_digit(v[i])) return false;
  return true;
}

// Does the target start with `scheme "://"`? That is absolute-form as clients send it; an
// authority-form target ("host:443") has no "//".
bool is_absolute_form(std::string_view t) {
  auto alpha = [](char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); };
  if (t.empty() || !alpha(t[0])) return false;
  size_t i = 1;
  while (i < t.size() && (alpha(t[i]) || is_digit(t[i]) || t[i] == '+' || t[i] == '-' || t[i] == '.'))
    ++i;
  return t.substr(i, 3) == "://";
}

HeadError err(ErrorKind k, std::string_view msg) { return HeadError{k, msg}; }
HeadError bad(std::string_view msg) { return HeadError{ErrorKind::BadRequest, msg}; }

// What the fields say, accumulated line by line without allocating.
struct FieldFacts {
  // Content-Length
  uint32_t cl_fields = 0;
  bool cl_list = false;      // a comma in a value: a repeated value
  bool cl_invalid = false;   // empty or non-digit
  bool cl_overflow = false;  // more than 64 bits
  uint64_t cl_value = 0;
  // Transfer-Encoding, all lines as one list
  uint32_t te_fields = 0;
  bool te_empty = false;      // an empty element or value
  bool te_malformed = false;  // an element that is not a transfer-coding
  uint32_t te_chunked = 0;    // how many elements are exactly "chunked"
  bool te_after_chunked = false;  // some element follows a "chunked"
  bool te_other = false;      // some coding other than "chunked"
  // Host
  uint32_t host_fields = 0;
  std::string_view host;
  // Connection tokens and Upgrade
  bool conn_close = false;
  bool conn_keep_alive = false;
  bool conn_upgrade = false;
  bool has_upgrade = false;
  // Expect
  bool expect_continue = false;
  bool expect_other = false;

  // The names are told apart by length first (they all differ): most fields cost one switch
  // and no compare. This runs for every field of every request.
  void add(std::string_view name, std::string_view value) {
    switch (name.size()) {
      case 14:
        if (iequals(name, "content-length")) add_content_length(value);
        return;
      case 17:
        if (iequals(name, "transfer-encoding")) add_transfer_encoding(value);
        return;
      case 4:
        if (iequals(name, "host")) {
          ++host_fields;
          host = value;
        }
        return;
      case 10:
        if (iequals(name, "connection")) add_connection(value);
        return;
      case 7:
        if (iequals(name, "upgrade")) has_upgrade = true;
        return;
      case 6:
        if (iequals(name, "expect")) add_expect(value);
        return;
      default:
        return;
    }
  }

  void add_content_length(std::string_view value) {
    ++cl_fields;
    if (value.find(',') != npos) {
      cl_list = true;
      return;
    }
    if (value.empty()) cl_invalid = true;
    uint64_t v = 0;
    for (char c : value) {
      if (!is_digit(c)) {
        cl_invalid = true;
        return;
      }
      const auto d = static_cast<uint64_t>(c - '0');
      if (v > (UINT64_MAX - d) / 10) {
        cl_overflow = true;
        return;
      }
      v = v * 10 + d;
    }
    cl_value = v;
  }

  void add_transfer_encoding(std::string_view value) {
    ++te_fields;
    for_each_element(value, [this](std::string_view e) {
      if (e.empty()) {
        te_empty = true;
      } else if (iequals(e, "chunked")) {
        if (te_chunked > 0) te_after_chunked = true;
        ++te_chunked;
      } else {
        if (te_chunked > 0) te_after_chunked = true;
        if (valid_transfer_coding(e)) te_other = true;
        else te_malformed = true;
      }
    });
  }

  void add_connection(std::string_view value) {
    for_each_element(value, [this](std::string_view e) {
      if (iequals(e, "close")) conn_close = true;
      else if (iequals(e, "keep-alive")) conn_keep_alive = true;
      else if (iequals(e, "upgrade")) conn_upgrade = true;
    });
  }

  void add_expect(std::string_view value) {
    for_each_element(value, [this](std::string_view e) {
      if (e.empty()) return;  // an empty list element is no expectation (RFC 9110 5.6.1)
      if (iequals(e, "100-continue")) expect_continue = true;
      else expect_other = true;
    });
  }

  // R4, in SPEC 11 order: CL+TE first, then TE in 1.0, Content-Length, then the coding rules.
  std::optional<HeadError> framing_error(int version_minor) const {
    if (te_fields > 0 && cl_fields > 0)
      return bad("Content-Length and Transfer-Encoding are both present");
    if (te_fields > 0 && version_minor == 0)
      return bad("Transfer-Encoding is not allowed in an HTTP/1.0 request");
    if (cl_fields > 1 || cl_list) return bad("Content-Length is repeated");
    if (cl_invalid) return bad("Content-Length is not a decimal number");
    if (cl_overflow) return bad("Content-Length is too large");
    if (te_fields > 0) {
      if (te_empty) return bad("Transfer-Encoding has an empty value or list element");
      if (te_malformed) return bad("Transfer-Encoding has a malformed coding");
      if (te_chunked > 1) return bad("Transfer-Encoding lists chunked more than once");
      if (te_after_chunked) return bad("Transfer-Encoding has a coding after chunked");
      if (te_other)
        return err(ErrorKind::NotImplemented,
                   "Transfer-Encoding has a coding other than chunked");
    }
    return std::nullopt;
  }
};

enum class WalkEnd {
  Complete,    // an empty line ended the head: head_len
  Incomplete,  // the bytes ran out first
  Failed,      // an R1..R3 verdict: error
};

// One pass over the head bytes. Collects the request line, the field facts and (if `fields` is
// given) the field list; notes the limits crossed without stopping.
class HeadWalker {
 public:
  HeadWalker(std::string_view buf, const HeadLimits& lim, std::vector<HeaderField>* fields)
      : b_(buf), lim_(lim), fields_(fields) {}

  WalkEnd run() {
    size_t p = 0;
    const size_t n = b_.size();
    // RFC 9112 2.2: ignore empty lines (CRLF only) before the request line. They count toward
    // max_header_size, so a stream of them ends in 431 rather than growing the buffer.
    while (p < n && b_[p] == '\r') {
      if (p + 1 == n) return incomplete(n);
      if (b_[p + 1] != '\n') return fail(bad("bare CR in the request line"));
      p += 2;
    }
    if (p == n) return incomplete(n);
    if (b_[p] == '\n') return fail(bad("bare LF (a line ending without CR) before the request line"));
    const WalkEnd rl = request_line(p);
    if (rl != WalkEnd::Complete) return rl;
    return field_lines(p);
  }

  // Filled as far as the walk got.
  bool line_done = false;     // the request line ended with CRLF and is valid
  std::string_view method;
  std::string_view target;    // as much as was received while the line was incomplete
  int version_major = 1;
  int version_minor = 1;
  bool uri_over = false;      // request-target longer than max_uri_size
  uint64_t field_count = 0;   // complete field lines
  uint64_t head_bytes = 0;    // bytes counting toward max_header_size
  size_t head_len = 0;        // Complete: through the final CRLF
  HeadError error{ErrorKind::BadRequest, ""};  // Failed
  FieldFacts facts;

  bool count_over() const { return field_count > lim_.max_headers; }
  bool size_over() const { return head_bytes > lim_.max_header_size; }

 private:
  WalkEnd fail(HeadError e) {
    error = e;
    return WalkEnd::Failed;
  }
  WalkEnd incomplete(uint64_t counted) {
    head_bytes = counted;
    return WalkEnd::Incomplete;
  }

  // method SP request-target SP HTTP-version CRLF; on Complete, p is past the LF.
  WalkEnd request_line(size_t& p) {
    const size_t n = b_.size();
    const size_t ms = p;
    while (p < n && has(b_[p], kTchar)) ++p;
    method = b_.substr(ms, p - ms);
    if (p == n) return incomplete(n);
    if (b_[p] != ' ') {
      const char c = b_[p];
      if (p == ms && is_ows(c)) return fail(bad("the request line starts with whitespace"));
      if (c == '\r' || c == '\n')
        return fail(bad("the request line has no request-target and no HTTP version"));
      if (is_ctl(c)) return fail(bad("control byte in the request line"));
      return fail(bad("the request method is not a token"));
    }
    if (p == ms) return fail(bad("the request line starts with whitespace"));

    const size_t ts = ++p;
    while (p < n && has(b_[p], kTargetChar)) ++p;
    target = b_.substr(ts, p - ts);
    if (target.size() > lim_.max_uri_size) uri_over = true;
    if (p == n) return incomplete(n);
    {
      const char c = b_[p];
      if (c == ' ' && p == ts) return fail(bad("more than one space between request line parts"));
      if (c != ' ') {
        if (c == '\r' || c == '\n') {
          return fail(bad(p == ts ? "the request-target is empty"
                                  : "the request line has no HTTP version"));
        }
        if (c == '#') return fail(bad("the request-target contains a fragment ('#')"));
        if (static_cast<unsigned char>(c) >= 0x80)
          return fail(bad("the request-target contains a non-ASCII byte"));
        if (c == '\t') return fail(bad("tab in the request line"));
        return fail(bad("control byte in the request-target"));
      }
    }

    // HTTP-version = "HTTP/" DIGIT "." DIGIT, case-sensitive, then CRLF.
    const size_t vs = ++p;
    static constexpr std::string_view kShape = "HTTP/0.0";
    for (size_t k = 0; k < kShape.size(); ++k, ++p) {
      if (p == n) return incomplete(n);
      const char c = b_[p];
      const bool ok = (k == 5 || k == 7) ? is_digit(c) : c == kShape[k];
      if (ok) continue;
      if (k == 0 && c == ' ') return fail(bad("more than one space between request line parts"));
      if (k == 0 && (c == '\r' || c == '\n'))
        return fail(bad("the request line has no HTTP version"));
      if (c == '\t') return fail(bad("tab in the request line"));
      if (is_ctl(c) && c != '\r' && c != '\n') return fail(bad("control byte in the request line"));
      return fail(bad("malformed HTTP version in the request line"));
    }
    if (p == n) return incomplete(n);
    if (b_[p] == '\n') return fail(bad("the request line ends with a bare LF"));
    if (b_[p] != '\r') {
      const char c = b_[p];
      if (c == ' ') return fail(bad("bytes after the HTTP version in the request line"));
      if (c == '\t') return fail(bad("tab in the request line"));
      if (is_ctl(c)) return fail(bad("control byte in the request line"));
      return fail(bad("malformed HTTP version in the request line"));
    }
    if (p + 1 == n) return incomplete(n);
    if (b_[p + 1] != '\n') return fail(bad("bare CR in the request line"));
    p += 2;

    version_major = b_[vs + 5] - '0';
    version_minor = b_[vs + 7] - '0';
    if (version_major != 1 || version_minor > 1) {
      if (method == "PRI" && target == "*" && version_major == 2 && version_minor == 0)
        return fail(err(ErrorKind::VersionNotSupported,
                        "the HTTP/2 connection preface is not supported (HTTP/1.x only)"));
      return fail(err(ErrorKind::VersionNotSupported,
                      "HTTP versions other than 1.0 and 1.1 are not supported"));
    }
    line_done = true;
    return WalkEnd::Complete;
  }

  // field-line = field-name ":" OWS field-value OWS CRLF, until an empty line.
  WalkEnd field_lines(size_t p) {
    const size_t n = b_.size();
    for (;;) {
      const size_t ls = p;
      if (p == n) return incomplete(n);
      const char first = b_[p];
      if (first == '\r') {
        // A lone CR could still become the final CRLF: not counted yet.
        if (p + 1 == n) return incomplete(n - 1);
        if (b_[p + 1] != '\n') return fail(bad("bare CR in the head"));
        head_bytes = p;
        head_len = p + 2;
        return WalkEnd::Complete;
      }
      if (first == '\n') return fail(bad("bare LF (a line ending without CR) in the head"));
      if (is_ows(first))
        return fail(bad("obs-fold (a header line starting with whitespace) is not allowed"));

      while (p < n && has(b_[p], kTchar)) ++p;
      if (p == n) return incomplete(n);
      if (b_[p] != ':') {
        const char c = b_[p];
        if (is_ows(c)) return fail(bad("whitespace in a header name or before its colon"));
        if (c == '\r' || c == '\n') return fail(bad("a header line has no colon"));
        if (is_ctl(c)) return fail(bad("control byte in a header name"));
        return fail(bad("a header name is not a token"));
      }
      if (p == ls) return fail(bad("empty header name"));
      const std::string_view name = b_.substr(ls, p - ls);

      const size_t vs = ++p;
      while (p < n && has(b_[p], kValueChar)) ++p;
      if (p == n) return incomplete(n);
      if (b_[p] == '\n') return fail(bad("bare LF (a line ending without CR) in the head"));
      if (b_[p] != '\r') return fail(bad("control byte in a header value"));
      if (p + 1 == n) return incomplete(n);
      if (b_[p + 1] != '\n') return fail(bad("bare CR in the head"));
      const std::string_view value = trim_ows(b_.substr(vs, p - vs));
      p += 2;

      ++field_count;
      facts.add(name, value);
      // Past max_headers the answer is an error whatever follows: stop storing (bounded memory).
      if (fields_ != nullptr && field_count <= lim_.max_headers)
        fields_->push_back(HeaderField{name, value});
    }
  }

  std::string_view b_;
  const HeadLimits& lim_;
  std::vector<HeaderField>* fields_;
};

// The answer for an incomplete head that crossed a limit: an R4 verdict already given by the
// complete field lines, else 414 before 431. nullopt when no limit is crossed yet.
std::optional<HeadError> limit_verdict(const HeadWalker& w) {
  if (!w.uri_over && !w.size_over() && !w.count_over()) return std::nullopt;
  if (w.line_done) {
    if (auto e = w.facts.framing_error(w.version_minor)) return e;
  }
  if (w.uri_over)
    return err(ErrorKind::UriTooLong, "the request-target exceeds limits.max_uri_size");
  if (w.count_over())
    return err(ErrorKind::HeadersTooLarge, "the request has more header fields than limits.max_headers");
  return err(ErrorKind::HeadersTooLarge, "the request head exceeds limits.max_header_size");
}

// Empties *h but keeps the field vector's storage for the next request on the connection.
void reset(RequestHead* h) {
  std::vector<HeaderField> keep = std::move(h->fields);
  keep.clear();
  *h = RequestHead{};
  h->fields = std::move(keep);
}

}  // namespace

bool usable_request_id(std::string_view v) {
  if (v.empty() || v.size() > 256) return false;
  for (char c : v) {
    if (c < 0x20 || c > 0x7e) return false;
  }
  return true;
}

void split_tokens(std::string_view v, std::vector<std::string_view>& out) {
  size_t i = 0;
  while (i <= v.size()) {
    size_t j = v.find(',', i);
    if (j == std::string_view::npos) j = v.size();
    const std::string_view t = trim_ows(v.substr(i, j - i));
    if (!t.empty()) out.push_back(t);
    i = j + 1;
  }
}

HeadProgress scan_request_head(std::string_view buf, const HeadLimits& lim, size_t* head_len,
                               HeadError* error) {
  HeadWalker w(buf, lim, nullptr);
  switch (w.run()) {
    case WalkEnd::Complete:
      if (head_len != nullptr) *head_len = w.head_len;
      return HeadProgress::Complete;
    case WalkEnd::Failed:
      if (error != nullptr) *error = w.error;
      return HeadProgress::Error;
    case WalkEnd::Incomplete:
      break;
  }
  if (auto e = limit_verdict(w)) {
    if (error != nullptr) *error = *e;
    return HeadProgress::Error;
  }
  return HeadProgress::NeedMore;
}

HeadProgress scan_request_head(std::string_view buf, const HeadLimits& lim, size_t* head_len,
                               ErrorKind* error) {
  HeadError e{ErrorKind::BadRequest, ""};
  const HeadProgress p = scan_request_head(buf, lim, head_len, &e);
  if (p == HeadProgress::Error && error != nullptr) *error = e.kind;
  return p;
}

namespace {

// The complete-head verdicts and the RequestHead, from a walk over a complete head `raw`
// (already in h->raw, fields collected into h->fields). Shared by parse_request_head and
// read_request_head, so the two give the same answer for the same head.
std::optional<HeadError> finish_parse(const HeadWalker& w, WalkEnd end, std::string_view raw,
                                      RequestHead* h) {
  // Whatever the verdict, report the request line as far as it is known (for logs).
  h->method = w.method;
  h->target = w.target;
  const size_t q = w.target.find('?');
  h->path = w.target.substr(0, q);
  h->has_query = q != npos;
  h->query = h->has_query ? w.target.substr(q + 1) : std::string_view{};
  h->version_minor = w.version_minor;

  if (end == WalkEnd::Failed) return w.error;  // R1..R3
  if (end == WalkEnd::Incomplete) return bad("the request head is incomplete (no empty line ends it)");
  if (w.head_len != raw.size()) return bad("bytes follow the empty line that ends the request head");

  const FieldFacts& f = w.facts;
  if (auto e = f.framing_error(w.version_minor)) return e;                        // R4
  if (w.uri_over)                                                                 // R5
    return err(ErrorKind::UriTooLong, "the request-target exceeds limits.max_uri_size");
  if (w.count_over())                                                             // R6
    return err(ErrorKind::HeadersTooLarge, "the request has more header fields than limits.max_headers");
  if (w.size_over())
    return err(ErrorKind::HeadersTooLarge, "the request head exceeds limits.max_header_size");

  if (f.host_fields > 1) return bad("Host is repeated");                          // R7
  if (f.host_fields == 0 && w.version_minor == 1) return bad("an HTTP/1.1 request must have a Host field");
  if (f.host_fields == 1 && !valid_host(f.host)) return bad("the Host value is not a valid host[:port]");

  const std::string_view t = w.target;                                            // R8
  if (is_absolute_form(t))
    return bad("absolute-form request-targets are refused (the gateway is not a proxy)");
  const bool connect = w.method == "CONNECT";
  if (!connect) {
    if (t == "*") {
      if (w.method != "OPTIONS") return bad("the asterisk-form request-target is only allowed with OPTIONS");
    } else if (t.empty() || t[0] != '/') {
      return bad("the request-target is not in origin-form (it must start with '/')");
    }
  }
  if (connect) return err(ErrorKind::NotImplemented, "CONNECT is not supported");       // R9
  if (f.conn_upgrade && f.has_upgrade)                                            // R10
    return err(ErrorKind::NotImplemented, "protocol upgrades (Upgrade) are not supported");

  h->framing = f.te_fields > 0   ? Framing::Chunked
               : f.cl_fields > 0 ? Framing::ContentLength
                                 : Framing::None;
  h->content_length = h->framing == Framing::ContentLength ? f.cl_value : 0;
  h->keep_alive = w.version_minor == 1 ? !f.conn_close : (f.conn_keep_alive && !f.conn_close);
  // RFC 9110 10.1.1: a 100-continue expectation in an HTTP/1.0 request MUST be ignored.
  h->expect_continue = f.expect_continue && w.version_minor == 1;
  h->expect_other = f.expect_other;
  h->has_host = f.host_fields == 1;
  h->host = f.host;
  return std::nullopt;
}

}  // namespace

std::optional<HeadError> parse_request_head(std::string_view raw, const HeadLimits& lim,
                                            RequestHead* out) {
  RequestHead scratch;
  RequestHead* h = out != nullptr ? out : &scratch;
  reset(h);
  h->raw = raw;
  HeadWalker w(raw, lim, &h->fields);
  const WalkEnd end = w.run();
  return finish_parse(w, end, raw, h);
}

HeadProgress read_request_head(std::string_view buf, const HeadLimits& lim, size_t* head_len,
                               HeadError* error, RequestHead* out,
                               std::optional<HeadError>* parse_error) {
  reset(out);
  // The walk stops at the empty line that ends the head and never looks past it, so walking
  // buf gives exactly the walk parse_request_head does over buf.substr(0, head_len).
  HeadWalker w(buf, lim, &out->fields);
  const WalkEnd end = w.run();
  if (end == WalkEnd::Complete) {
    *head_len = w.head_len;
    const std::string_view raw = buf.substr(0, w.head_len);
    out->raw = raw;
    *parse_error = finish_parse(w, end, raw, out);
    return HeadProgress::Complete;
  }
  reset(out);  // as scan_request_head leaves it: nothing parsed yet
  if (end == WalkEnd::Failed) {
    *error = w.error;
    return HeadProgress::Error;
  }
  if (auto e = limit_verdict(w)) {
    *error = *e;
    return HeadProgress::Error;
  }
  return HeadProgress::NeedMore;
}

void rebase_request_head(RequestHead& h, const char* from, size_t len, const char* to) {
  auto move = [&](std::string_view& v) {
    if (v.data() >= from && v.data() + v.size() <= from + len && v.data() != nullptr) {
      v = std::string_view(to + (v.data() - from), v.size());
    }
  };
  move(h.raw);
  move(h.method);
  move(h.target);
  move(h.path);
  move(h.query);
  move(h.host);
  for (HeaderField& f : h.fields) {
    move(f.name);
    move(f.value);
  }
}

}  // namespace dechunkd
