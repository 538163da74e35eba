// Integer formatting for the hot path: std::to_chars straight into the output string (no
// snprintf, no temporary string; PERF-NOTES).
#pragma once
#include <charconv>
#include <string>
#include <type_traits>

namespace dechunkd {

template <typename Int>
inline void append_decimal(std::string& out, Int v) {
  static_assert(std::is_integral_v<Int>);
  char buf[24];
  auto r = std::to_chars(buf, buf + sizeof buf, v);
  out.append(buf, r.ptr);
}

template <typename Int>
inline void append_hex(std::string& out, Int v) {
  static_assert(std::is_integral_v<Int>);
  char buf[24];
  auto r = std::to_chars(buf, buf + sizeof buf, v, 16);
  out.append(buf, r.ptr);
}

}  // namespace dechunkd
