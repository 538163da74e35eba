// IPv4/IPv6 CIDR blocks for allow_from and trusted_proxies.
#pragma once
#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <sys/socket.h>

namespace dechunkd {

struct Cidr {
  int family = 0;                   // AF_INET or AF_INET6
  std::array<uint8_t, 16> addr{};   // network address, first 4 bytes used for IPv4
  int prefix = 0;                   // prefix length in bits

  // "10.0.0.0/8", "2001:db8::/32", or a bare address (a /32 or /128). Host bits must be zero.
  static std::optional<Cidr> parse(std::string_view text);
  // True when the socket address lies in the block; IPv4-mapped IPv6 addresses match IPv4 blocks.
  bool contains(const sockaddr* sa) const;
  std::string str() const;
};

}  // namespace dechunkd
