// Formatting for the hot path: integers with std::to_chars straight into the output string (no
// snprintf, no temporary string; PERF-NOTES), and a writer that builds a head or a log line with
// one capacity check per piece instead of std::string's per-append bookkeeping.
#pragma once
#include <algorithm>
#include <charconv>
#include <cstring>
#include <string>
#include <string_view>
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

// Appends to a std::string through a cursor. The constructor makes room for an estimate of what
// will be written, once; each put then costs a compare against the room left and a memcpy (a
// literal's is inlined). A put that does not fit grows the string, so a low estimate costs speed,
// never memory safety. The string's size is what was written once finish() runs (the destructor
// calls it); until then it also counts the unwritten room, so nothing else may touch the string.
class StringWriter {
 public:
  StringWriter(std::string& s, size_t estimate) : s_(s) {
    const size_t at = s.size();
    s.resize(at + estimate);
    p_ = s.data() + at;
    end_ = s.data() + s.size();
  }
  ~StringWriter() { finish(); }
  StringWriter(const StringWriter&) = delete;
  StringWriter& operator=(const StringWriter&) = delete;

  void put(std::string_view v) {
    if (v.empty()) return;  // a default view's data() is null: no memcpy from it
    if (static_cast<size_t>(end_ - p_) < v.size()) grow(v.size());
    std::memcpy(p_, v.data(), v.size());
    p_ += v.size();
  }
  void put(char c) {
    if (p_ == end_) grow(1);
    *p_++ = c;
  }
  template <typename Int>
  void decimal(Int v) {
    static_assert(std::is_integral_v<Int>);
    if (end_ - p_ < 24) grow(24);
    p_ = std::to_chars(p_, end_, v).ptr;
  }
  // Sets the string's size to what was written. Idempotent.
  void finish() {
    s_.resize(static_cast<size_t>(p_ - s_.data()));
    end_ = p_;
  }

 private:
  void grow(size_t n) {
    // Doubles what was written (not the room: a long buffer with a short estimate stays short).
    const size_t at = static_cast<size_t>(p_ - s_.data());
    s_.resize(std::max(at * 2, at + n) + 64);
    p_ = s_.data() + at;
    end_ = s_.data() + s_.size();
  }

  std::string& s_;
  char* p_;    // the next byte to write
  char* end_;  // one past the room made so far
};

}  // namespace dechunkd
