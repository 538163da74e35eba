// Shared by the HTTP fuzz targets: byte classes of RFC 9110 and an independent, strict reading
// of a chunked body (RFC 9112 7.1) to compare the codec's message boundaries with. Deliberately
// simple and separate from src/ (it must not share the code it checks).
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace fuzz {

inline bool is_tchar(char c) {
  if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) return true;
  return std::string_view("!#$%&'*+-.^_`|~").find(c) != std::string_view::npos;
}
inline bool is_token(std::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), is_tchar);
}
// A control byte other than HTAB (never allowed in a field value or reason phrase).
inline bool is_ctl(char c) {
  const auto u = static_cast<unsigned char>(c);
  return (u < 0x20 && c != '\t') || u == 0x7f;
}
inline int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

struct Dechunked {
  size_t end = 0;    // bytes from the first chunk-size byte through the final CRLF
  std::string body;  // the chunk data, concatenated
};

// Reads a chunked body from its first byte: where the message ends and what the body is.
// Chunk extensions are taken loosely (any bytes but CR, LF and controls up to CRLF): only the
// framing matters here. nullopt: not a complete, valid chunked body.
// lenient_trailers (responses): a bare LF may end a trailer line and the final empty line
// (RFC 9112 2.2 lets a recipient accept it for field lines; llhttp does for responses), and a
// trailer line's content is not checked (the gateway drops response trailers unread). Only
// where the message ends must agree. Requests never get this (SPEC 4: bare LF -> 400).
inline std::optional<Dechunked> reference_dechunk(std::string_view s,
                                                  bool lenient_trailers = false) {
  Dechunked d;
  size_t i = 0;
  const size_t n = s.size();
  for (;;) {
    const size_t start = i;
    uint64_t size = 0;
    for (; i < n && hex_value(s[i]) >= 0; ++i) {
      if (size >> 60) return std::nullopt;  // over 64 bits
      size = size * 16 + static_cast<uint64_t>(hex_value(s[i]));
    }
    if (i == start) return std::nullopt;
    for (; i < n && s[i] != '\r' && s[i] != '\n'; ++i) {
      if (is_ctl(s[i])) return std::nullopt;
    }
    if (i + 1 >= n || s[i] != '\r' || s[i + 1] != '\n') return std::nullopt;
    i += 2;
    if (size == 0) break;
    if (n - i < size || n - i - size < 2) return std::nullopt;
    d.body.append(s.substr(i, size));
    i += size;
    if (s[i] != '\r' || s[i + 1] != '\n') return std::nullopt;
    i += 2;
  }
  // trailer-section = *( field-line CRLF ), then CRLF
  for (;;) {
    size_t e = i;
    while (e < n && s[e] != '\r' && s[e] != '\n') ++e;
    const std::string_view line = s.substr(i, e - i);
    if (lenient_trailers && e < n && s[e] == '\n') {
      i = e + 1;
    } else {
      if (e + 1 >= n || s[e] != '\r' || s[e + 1] != '\n') return std::nullopt;
      i = e + 2;
    }
    if (line.empty()) break;
    if (lenient_trailers) continue;
    const size_t colon = line.find(':');
    if (colon == std::string_view::npos || !is_token(line.substr(0, colon))) return std::nullopt;
    for (char c : line.substr(colon + 1)) {
      if (is_ctl(c)) return std::nullopt;
    }
  }
  d.end = i;
  return d;
}

}  // namespace fuzz
