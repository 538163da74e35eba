// The SPEC 4 error table (status, word, reason), reason phrases, and the JSON error body.
#include <doctest/doctest.h>

#include <string>

#include "http/errors.hpp"

using namespace std::string_literals;
using dechunkd::ErrorKind;

TEST_CASE("errors: SPEC 4 table, word and status per kind") {
  struct Row {
    ErrorKind kind;
    int status;
    const char* word;
    const char* reason;
  };
  const Row table[] = {
      {ErrorKind::BadRequest, 400, "bad_request", "Bad Request"},
      {ErrorKind::Unauthorized, 401, "unauthorized", "Unauthorized"},
      {ErrorKind::Forbidden, 403, "forbidden", "Forbidden"},
      {ErrorKind::NoRoute, 404, "no_route", "Not Found"},
      {ErrorKind::NotFound, 404, "not_found", "Not Found"},
      {ErrorKind::MethodNotAllowed, 405, "method_not_allowed", "Method Not Allowed"},
      {ErrorKind::RequestTimeout, 408, "request_timeout", "Request Timeout"},
      {ErrorKind::Conflict, 409, "conflict", "Conflict"},
      {ErrorKind::BodyTooLarge, 413, "body_too_large", "Content Too Large"},
      {ErrorKind::UriTooLong, 414, "uri_too_long", "URI Too Long"},
      {ErrorKind::ExpectationFailed, 417, "expectation_failed", "Expectation Failed"},
      {ErrorKind::HeadersTooLarge, 431, "headers_too_large", "Request Header Fields Too Large"},
      {ErrorKind::InternalError, 500, "internal_error", "Internal Server Error"},
      {ErrorKind::NotImplemented, 501, "not_implemented", "Not Implemented"},
      {ErrorKind::BadGateway, 502, "bad_gateway", "Bad Gateway"},
      {ErrorKind::Overloaded, 503, "overloaded", "Service Unavailable"},
      {ErrorKind::GatewayTimeout, 504, "gateway_timeout", "Gateway Timeout"},
      {ErrorKind::VersionNotSupported, 505, "http_version_not_supported", "HTTP Version Not Supported"},
  };
  for (const Row& r : table) {
    CAPTURE(r.word);
    CHECK(dechunkd::error_status(r.kind) == r.status);
    CHECK(dechunkd::error_word(r.kind) == r.word);
    CHECK(dechunkd::error_reason(r.kind) == r.reason);
    CHECK(dechunkd::error_reason(r.kind) == dechunkd::status_reason(r.status));
    const std::string_view msg = dechunkd::error_default_message(r.kind);
    CHECK(!msg.empty());
    CHECK(msg.find('"') == std::string_view::npos);
    CHECK(msg.find('\\') == std::string_view::npos);
  }
  // A value outside the enum (a bad cast) still maps somewhere sane.
  const auto bogus = static_cast<ErrorKind>(999);
  CHECK(dechunkd::error_status(bogus) == 500);
  CHECK(dechunkd::error_word(bogus) == "internal_error");
}

TEST_CASE("errors: status reason phrases") {
  CHECK(dechunkd::status_reason(100) == "Continue");
  CHECK(dechunkd::status_reason(101) == "Switching Protocols");
  CHECK(dechunkd::status_reason(200) == "OK");
  CHECK(dechunkd::status_reason(201) == "Created");
  CHECK(dechunkd::status_reason(202) == "Accepted");
  CHECK(dechunkd::status_reason(204) == "No Content");
  CHECK(dechunkd::status_reason(301) == "Moved Permanently");
  CHECK(dechunkd::status_reason(304) == "Not Modified");
  CHECK(dechunkd::status_reason(307) == "Temporary Redirect");
  CHECK(dechunkd::status_reason(308) == "Permanent Redirect");
  CHECK(dechunkd::status_reason(410) == "Gone");
  CHECK(dechunkd::status_reason(422) == "Unprocessable Content");
  CHECK(dechunkd::status_reason(429) == "Too Many Requests");
  CHECK(dechunkd::status_reason(451) == "Unavailable For Legal Reasons");
  CHECK(dechunkd::status_reason(511) == "Network Authentication Required");
  CHECK(dechunkd::status_reason(0).empty());
  CHECK(dechunkd::status_reason(99).empty());
  CHECK(dechunkd::status_reason(299).empty());
  CHECK(dechunkd::status_reason(599).empty());
  CHECK(dechunkd::status_reason(600).empty());
  CHECK(dechunkd::status_reason(-1).empty());
}

TEST_CASE("errors: error body is exact JSON") {
  CHECK(dechunkd::error_body(ErrorKind::BadRequest, "Content-Length and Transfer-Encoding are both present", "abc123") ==
        R"({"error":"bad_request","message":"Content-Length and Transfer-Encoding are both present","request_id":"abc123"})");
  CHECK(dechunkd::error_body(ErrorKind::VersionNotSupported, "x", "") ==
        R"({"error":"http_version_not_supported","message":"x","request_id":""})");
  CHECK(dechunkd::error_body(ErrorKind::NotFound, "no such dead letter", "r-1") ==
        R"({"error":"not_found","message":"no such dead letter","request_id":"r-1"})");
  // An empty message falls back to the kind's default sentence.
  CHECK(dechunkd::error_body(ErrorKind::NoRoute, "", "id") ==
        R"({"error":"no_route","message":"no route matches the request","request_id":"id"})");
  // The request id comes from the client (X-Request-Id): escaped.
  CHECK(dechunkd::error_body(ErrorKind::Conflict, "m", "a\"b\\c\td") ==
        R"({"error":"conflict","message":"m","request_id":"a\"b\\c\u0009d"})");
}

TEST_CASE("errors: json_escape") {
  auto esc = [](std::string_view s) {
    std::string out = "prefix:";
    dechunkd::json_escape(out, s);
    return out;
  };
  CHECK(esc("") == "prefix:");
  CHECK(esc("plain text / ok") == "prefix:plain text / ok");
  CHECK(esc("\"") == "prefix:\\\"");
  CHECK(esc("\\") == "prefix:\\\\");
  CHECK(esc("\n\r\t") == "prefix:\\u000a\\u000d\\u0009");
  CHECK(esc("\0"s) == "prefix:\\u0000");
  CHECK(esc("\x1f\x7f") == "prefix:\\u001f\\u007f");
  CHECK(esc("</script>") == "prefix:</script>");
  // Valid UTF-8 passes through; anything else becomes U+FFFD so the body stays valid JSON.
  CHECK(esc("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80") == "prefix:caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80");
  CHECK(esc("\xff") == "prefix:\\ufffd");
  CHECK(esc("a\xc3") == "prefix:a\\ufffd");             // truncated sequence
  CHECK(esc("\xc0\xaf") == "prefix:\\ufffd\\ufffd");    // overlong
  CHECK(esc("\xed\xa0\x80") == "prefix:\\ufffd\\ufffd\\ufffd");  // surrogate
  CHECK(esc("\xf4\x90\x80\x80") == "prefix:\\ufffd\\ufffd\\ufffd\\ufffd");  // above U+10FFFF
  CHECK(esc("\xe2\x82") == "prefix:\\ufffd\\ufffd");
}
