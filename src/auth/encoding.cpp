// Strict base64 and hex decoding for src/auth (see encoding.hpp).
#include "auth/encoding.hpp"

#include <cstdint>

namespace dechunkd::auth_detail {
namespace {

int base64_value(char c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '+') return 62;
  if (c == '/') return 63;
  return -1;
}

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

}  // namespace

bool base64_decode(std::string_view in, std::string* out) {
  if (in.empty() || in.size() % 4 != 0) return false;
  size_t pad = 0;
  if (in[in.size() - 1] == '=') pad = in[in.size() - 2] == '=' ? 2 : 1;
  const size_t chars = in.size() - pad;  // significant characters
  out->reserve(out->size() + chars * 3 / 4);
  uint32_t acc = 0;
  int bits = 0;
  for (size_t i = 0; i < chars; ++i) {
    const int v = base64_value(in[i]);
    if (v < 0) return false;  // also a '=' before the final padding
    acc = (acc << 6) | static_cast<uint32_t>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out->push_back(static_cast<char>((acc >> bits) & 0xff));
    }
  }
  return true;
}

bool hex_decode(std::string_view in, std::string* out) {
  if (in.empty() || in.size() % 2 != 0) return false;
  out->reserve(out->size() + in.size() / 2);
  for (size_t i = 0; i < in.size(); i += 2) {
    const int hi = hex_value(in[i]);
    const int lo = hex_value(in[i + 1]);
    if (hi < 0 || lo < 0) return false;
    out->push_back(static_cast<char>(hi << 4 | lo));
  }
  return true;
}

}  // namespace dechunkd::auth_detail
