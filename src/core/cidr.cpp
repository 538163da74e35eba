// CIDR blocks (allow_from, trusted_proxies). Parsing uses inet_pton, so only the strict
// dotted-quad and RFC 4291 text forms are accepted (no octal, no zone ids).
#include "core/cidr.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <cstring>

namespace dechunkd {
namespace {

// The 12-byte prefix of an IPv4-mapped IPv6 address (::ffff:a.b.c.d).
constexpr uint8_t kMappedPrefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

// Compares the first `bits` bits of two byte strings.
bool prefix_equal(const uint8_t* a, const uint8_t* b, int bits) {
  const int whole = bits / 8;
  if (std::memcmp(a, b, static_cast<size_t>(whole)) != 0) return false;
  const int rest = bits % 8;
  if (rest == 0) return true;
  const auto mask = static_cast<uint8_t>(0xff << (8 - rest));
  return (a[whole] & mask) == (b[whole] & mask);
}

// True when any bit after the first `bits` bits of `len` bytes is set.
bool host_bits_set(const uint8_t* a, int len, int bits) {
  for (int i = 0; i < len; ++i) {
    const int first_bit = i * 8;
    uint8_t host_mask = 0xff;
    if (first_bit + 8 <= bits) continue;
    if (first_bit < bits) host_mask = static_cast<uint8_t>(0xff >> (bits - first_bit));
    if (a[i] & host_mask) return true;
  }
  return false;
}

}  // namespace

std::optional<Cidr> Cidr::parse(std::string_view text) {
  std::string_view addr_text = text;
  std::optional<int> prefix;
  if (const auto slash = text.find('/'); slash != std::string_view::npos) {
    addr_text = text.substr(0, slash);
    const std::string_view digits = text.substr(slash + 1);
    if (digits.empty() || digits.size() > 3) return std::nullopt;
    int value = 0;
    for (char c : digits) {
      if (c < '0' || c > '9') return std::nullopt;
      value = value * 10 + (c - '0');
    }
    prefix = value;
  }
  // inet_pton needs a NUL-terminated string; an address is at most 45 characters.
  if (addr_text.empty() || addr_text.size() > INET6_ADDRSTRLEN) return std::nullopt;
  char buf[INET6_ADDRSTRLEN + 1];
  std::memcpy(buf, addr_text.data(), addr_text.size());
  buf[addr_text.size()] = '\0';

  Cidr c;
  if (inet_pton(AF_INET, buf, c.addr.data()) == 1) {
    c.family = AF_INET;
    c.prefix = prefix.value_or(32);
    if (c.prefix > 32 || host_bits_set(c.addr.data(), 4, c.prefix)) return std::nullopt;
    return c;
  }
  if (inet_pton(AF_INET6, buf, c.addr.data()) == 1) {
    c.family = AF_INET6;
    c.prefix = prefix.value_or(128);
    if (c.prefix > 128 || host_bits_set(c.addr.data(), 16, c.prefix)) return std::nullopt;
    return c;
  }
  return std::nullopt;
}

bool Cidr::contains(const sockaddr* sa) const {
  if (sa == nullptr) return false;
  uint8_t bytes[16];
  int fam = 0;
  if (sa->sa_family == AF_INET) {
    const auto* in = reinterpret_cast<const sockaddr_in*>(sa);
    std::memcpy(bytes, &in->sin_addr, 4);
    fam = AF_INET;
  } else if (sa->sa_family == AF_INET6) {
    const auto* in6 = reinterpret_cast<const sockaddr_in6*>(sa);
    std::memcpy(bytes, &in6->sin6_addr, 16);
    fam = AF_INET6;
    // A dual-stack listener sees IPv4 clients as ::ffff:a.b.c.d: match them as IPv4.
    if (family == AF_INET && std::memcmp(bytes, kMappedPrefix, 12) == 0) {
      std::memmove(bytes, bytes + 12, 4);
      fam = AF_INET;
    }
  } else {
    return false;
  }
  if (fam == family) return prefix_equal(bytes, addr.data(), prefix);
  // An IPv4 peer against an IPv6 block written in mapped form (::ffff:10.0.0.0/104).
  if (fam == AF_INET && family == AF_INET6) {
    uint8_t mapped[16];
    std::memcpy(mapped, kMappedPrefix, 12);
    std::memcpy(mapped + 12, bytes, 4);
    return prefix_equal(mapped, addr.data(), prefix);
  }
  return false;
}

std::string Cidr::str() const {
  char buf[INET6_ADDRSTRLEN];
  if (family != AF_INET && family != AF_INET6) return "";
  if (inet_ntop(family, addr.data(), buf, sizeof buf) == nullptr) return "";
  return std::string(buf) + "/" + std::to_string(prefix);
}

}  // namespace dechunkd
