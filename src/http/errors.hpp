// The one place where the gateway's own failures map to the SPEC's status codes and error
// words (SPEC 4 table), and where the JSON error body is produced.
#pragma once
#include <string>
#include <string_view>

namespace dechunkd {

class StringWriter;

enum class ErrorKind {
  BadRequest,          // 400 bad_request
  Unauthorized,        // 401 unauthorized
  Forbidden,           // 403 forbidden
  NoRoute,             // 404 no_route
  NotFound,            // 404 not_found (admin)
  MethodNotAllowed,    // 405 method_not_allowed
  RequestTimeout,      // 408 request_timeout
  Conflict,            // 409 conflict (admin)
  BodyTooLarge,        // 413 body_too_large
  UriTooLong,          // 414 uri_too_long
  ExpectationFailed,   // 417 expectation_failed
  HeadersTooLarge,     // 431 headers_too_large
  InternalError,       // 500 internal_error
  NotImplemented,      // 501 not_implemented
  BadGateway,          // 502 bad_gateway
  Overloaded,          // 503 overloaded
  GatewayTimeout,      // 504 gateway_timeout
  VersionNotSupported, // 505 http_version_not_supported
};

int error_status(ErrorKind k);
std::string_view error_word(ErrorKind k);
std::string_view error_reason(ErrorKind k);           // reason phrase, e.g. "Bad Request"
std::string_view error_default_message(ErrorKind k);  // a human sentence

// Reason phrase for any status code we may send or relay ("OK", "Accepted", ...); "" if unknown.
std::string_view status_reason(int status);

// {"error":"<word>","message":"<message>","request_id":"<id>"} with JSON escaping.
std::string error_body(ErrorKind k, std::string_view message, std::string_view request_id);

// Appends s to out as JSON string content (no surrounding quotes): control bytes as \u00XX,
// invalid UTF-8 as \ufffd.
void json_escape(std::string& out, std::string_view s);
void json_escape(StringWriter& out, std::string_view s);

}  // namespace dechunkd
