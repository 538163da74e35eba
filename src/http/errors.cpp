// The SPEC 4 error table in one place, reason phrases (RFC 9110 names) and the JSON error body.
#include "http/errors.hpp"

#include "core/append.hpp"

#include <array>

namespace dechunkd {
namespace {

struct ErrorInfo {
  int status;
  std::string_view word;
  std::string_view message;
};

// Indexed by ErrorKind; an unknown value (a cast gone wrong) maps to 500 internal_error.
ErrorInfo info(ErrorKind k) {
  switch (k) {
    case ErrorKind::BadRequest:
      return {400, "bad_request", "the request is malformed or ambiguous"};
    case ErrorKind::Unauthorized:
      return {401, "unauthorized", "the request's credentials are missing or invalid"};
    case ErrorKind::Forbidden:
      return {403, "forbidden", "the client address is not allowed on this route"};
    case ErrorKind::NoRoute:
      return {404, "no_route", "no route matches the request"};
    case ErrorKind::NotFound:
      return {404, "not_found", "the requested resource does not exist"};
    case ErrorKind::MethodNotAllowed:
      return {405, "method_not_allowed", "the route does not allow this method"};
    case ErrorKind::RequestTimeout:
      return {408, "request_timeout", "the request was not received in time"};
    case ErrorKind::Conflict:
      return {409, "conflict", "the request conflicts with the current state of the resource"};
    case ErrorKind::BodyTooLarge:
      return {413, "body_too_large", "the request body exceeds the route's max_body_size"};
    case ErrorKind::UriTooLong:
      return {414, "uri_too_long", "the request-target exceeds limits.max_uri_size"};
    case ErrorKind::ExpectationFailed:
      return {417, "expectation_failed", "the Expect header field holds an unsupported expectation"};
    case ErrorKind::HeadersTooLarge:
      return {431, "headers_too_large",
              "the request head exceeds limits.max_header_size or limits.max_headers"};
    case ErrorKind::InternalError:
      return {500, "internal_error", "the gateway failed to process the request"};
    case ErrorKind::NotImplemented:
      return {501, "not_implemented", "the request uses a feature the gateway does not implement"};
    case ErrorKind::BadGateway:
      return {502, "bad_gateway", "the target could not be reached or sent an invalid response"};
    case ErrorKind::Overloaded:
      return {503, "overloaded", "the gateway is overloaded; retry later"};
    case ErrorKind::GatewayTimeout:
      return {504, "gateway_timeout", "the target did not answer in time"};
    case ErrorKind::VersionNotSupported:
      return {505, "http_version_not_supported", "only HTTP/1.0 and HTTP/1.1 are supported"};
  }
  return {500, "internal_error", "the gateway failed to process the request"};
}

// Length of the valid UTF-8 sequence starting at s[i] (RFC 3629: no overlongs, no surrogates,
// nothing above U+10FFFF), or 0 when the bytes there are not one.
size_t utf8_sequence(std::string_view s, size_t i) {
  const auto at = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
  const unsigned char c = at(i);
  size_t len = 0;
  unsigned char lo = 0x80;
  unsigned char hi = 0xbf;
  if (c >= 0xc2 && c <= 0xdf) {
    len = 2;
  } else if (c >= 0xe0 && c <= 0xef) {
    len = 3;
    if (c == 0xe0) lo = 0xa0;
    if (c == 0xed) hi = 0x9f;
  } else if (c >= 0xf0 && c <= 0xf4) {
    len = 4;
    if (c == 0xf0) lo = 0x90;
    if (c == 0xf4) hi = 0x8f;
  } else {
    return 0;
  }
  if (s.size() - i < len) return 0;
  if (at(i + 1) < lo || at(i + 1) > hi) return 0;
  for (size_t k = 2; k < len; ++k)
    if (at(i + k) < 0x80 || at(i + k) > 0xbf) return 0;
  return len;
}

}  // namespace

int error_status(ErrorKind k) { return info(k).status; }
std::string_view error_word(ErrorKind k) { return info(k).word; }
std::string_view error_reason(ErrorKind k) { return status_reason(info(k).status); }
std::string_view error_default_message(ErrorKind k) { return info(k).message; }

std::string_view status_reason(int status) {
  switch (status) {
    case 100: return "Continue";
    case 101: return "Switching Protocols";
    case 102: return "Processing";
    case 103: return "Early Hints";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 203: return "Non-Authoritative Information";
    case 204: return "No Content";
    case 205: return "Reset Content";
    case 206: return "Partial Content";
    case 207: return "Multi-Status";
    case 208: return "Already Reported";
    case 226: return "IM Used";
    case 300: return "Multiple Choices";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 303: return "See Other";
    case 304: return "Not Modified";
    case 305: return "Use Proxy";
    case 307: return "Temporary Redirect";
    case 308: return "Permanent Redirect";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 402: return "Payment Required";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 406: return "Not Acceptable";
    case 407: return "Proxy Authentication Required";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 410: return "Gone";
    case 411: return "Length Required";
    case 412: return "Precondition Failed";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 415: return "Unsupported Media Type";
    case 416: return "Range Not Satisfiable";
    case 417: return "Expectation Failed";
    case 418: return "I'm a teapot";
    case 421: return "Misdirected Request";
    case 422: return "Unprocessable Content";
    case 423: return "Locked";
    case 424: return "Failed Dependency";
    case 425: return "Too Early";
    case 426: return "Upgrade Required";
    case 428: return "Precondition Required";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 451: return "Unavailable For Legal Reasons";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    case 506: return "Variant Also Negotiates";
    case 507: return "Insufficient Storage";
    case 508: return "Loop Detected";
    case 510: return "Not Extended";
    case 511: return "Network Authentication Required";
    default: return "";
  }
}

namespace {
// Bytes copied into a JSON string as they are: printable ASCII except '"' and '\\'. A table, so
// the run scan below costs one load and test per byte (it runs for every access-log field).
constexpr std::array<bool, 256> make_plain() {
  std::array<bool, 256> t{};
  for (int c = 0x20; c < 0x7f; ++c) t[static_cast<size_t>(c)] = c != '"' && c != '\\';
  return t;
}
constexpr std::array<bool, 256> kPlain = make_plain();
}  // namespace

void json_escape(StringWriter& out, std::string_view s) {
  static constexpr char kHex[] = "0123456789abcdef";
  size_t i = 0;
  while (i < s.size()) {
    // Runs of plain printable ASCII (almost everything in a log line) are copied in one put.
    size_t run = i;
    while (run < s.size() && kPlain[static_cast<unsigned char>(s[run])]) ++run;
    if (run > i) {
      out.put(s.substr(i, run - i));
      i = run;
      continue;
    }
    const auto c = static_cast<unsigned char>(s[i]);
    if (c == '"' || c == '\\') {
      out.put('\\');
      out.put(static_cast<char>(c));
      ++i;
    } else if (c < 0x20 || c == 0x7f) {
      // Every control byte as \u00XX (DEL too: harmless in JSON, keeps log lines clean).
      out.put("\\u00");
      out.put(kHex[c >> 4]);
      out.put(kHex[c & 0xf]);
      ++i;
    } else if (c < 0x80) {
      out.put(static_cast<char>(c));
      ++i;
    } else if (const size_t len = utf8_sequence(s, i); len > 0) {
      out.put(s.substr(i, len));
      i += len;
    } else {
      // JSON text must be UTF-8: an invalid byte (obs-text in a request id, say) becomes U+FFFD.
      out.put("\\ufffd");
      ++i;
    }
  }
}

void json_escape(std::string& out, std::string_view s) {
  StringWriter w(out, s.size());
  json_escape(w, s);
}

// An empty message falls back to the kind's default sentence: the body always says something.
std::string error_body(ErrorKind k, std::string_view message, std::string_view request_id) {
  const std::string_view word = error_word(k);
  if (message.empty()) message = error_default_message(k);
  std::string out;
  out.reserve(48 + word.size() + message.size() + request_id.size());
  out.append(R"({"error":")");
  json_escape(out, word);
  out.append(R"(","message":")");
  json_escape(out, message);
  out.append(R"(","request_id":")");
  json_escape(out, request_id);
  out.append(R"("})");
  return out;
}

}  // namespace dechunkd
