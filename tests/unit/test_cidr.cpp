// CIDR blocks for allow_from and trusted_proxies.
#include <arpa/inet.h>
#include <netinet/in.h>

#include <cstring>
#include <doctest/doctest.h>

#include "core/cidr.hpp"

using dechunkd::Cidr;

namespace {

sockaddr_in v4(const char* a) {
  sockaddr_in s{};
  s.sin_family = AF_INET;
  s.sin_port = htons(1234);
  REQUIRE(inet_pton(AF_INET, a, &s.sin_addr) == 1);
  return s;
}

sockaddr_in6 v6(const char* a) {
  sockaddr_in6 s{};
  s.sin6_family = AF_INET6;
  s.sin6_port = htons(1234);
  REQUIRE(inet_pton(AF_INET6, a, &s.sin6_addr) == 1);
  return s;
}

bool in(const Cidr& c, const sockaddr_in& s) {
  return c.contains(reinterpret_cast<const sockaddr*>(&s));
}
bool in(const Cidr& c, const sockaddr_in6& s) {
  return c.contains(reinterpret_cast<const sockaddr*>(&s));
}

}  // namespace

TEST_CASE("Cidr::parse accepts blocks and bare addresses") {
  auto c = Cidr::parse("10.0.0.0/8");
  REQUIRE(c);
  CHECK(c->family == AF_INET);
  CHECK(c->prefix == 8);
  CHECK(c->str() == "10.0.0.0/8");

  CHECK(Cidr::parse("192.0.2.7")->str() == "192.0.2.7/32");
  CHECK(Cidr::parse("0.0.0.0/0")->str() == "0.0.0.0/0");
  CHECK(Cidr::parse("2001:db8::/32")->str() == "2001:db8::/32");
  CHECK(Cidr::parse("::1")->str() == "::1/128");
  CHECK(Cidr::parse("::/0")->prefix == 0);
  CHECK(Cidr::parse("203.0.113.0/24")->family == AF_INET);
  CHECK(Cidr::parse("2001:DB8::/32")->family == AF_INET6);
}

TEST_CASE("Cidr::parse rejects bad input") {
  for (const char* bad : {"", "/8", "10.0.0.0/", "10.0.0.0/33", "::/129", "10.0.0.1/8",
                          "2001:db8::1/32", "10.0.0.0/-1", "10.0.0.0/+8", "10.0.0.0/8 ",
                          " 10.0.0.0/8", "10.0.0/8", "010.0.0.0/8", "10.0.0.0/8/8", "fe80::1%eth0",
                          "example.com", "10.0.0.0/1000", "10.0.0.0/a", "1.2.3.4.5"}) {
    CAPTURE(bad);
    CHECK_FALSE(Cidr::parse(bad).has_value());
  }
}

TEST_CASE("Cidr::contains for IPv4") {
  auto c = *Cidr::parse("10.1.0.0/16");
  CHECK(in(c, v4("10.1.0.0")));
  CHECK(in(c, v4("10.1.255.255")));
  CHECK_FALSE(in(c, v4("10.2.0.0")));
  CHECK_FALSE(in(c, v4("11.1.0.0")));
  auto odd = *Cidr::parse("192.168.1.128/25");
  CHECK(in(odd, v4("192.168.1.200")));
  CHECK_FALSE(in(odd, v4("192.168.1.127")));
  CHECK(in(*Cidr::parse("0.0.0.0/0"), v4("8.8.8.8")));
  CHECK(in(*Cidr::parse("8.8.8.8"), v4("8.8.8.8")));
  CHECK_FALSE(in(*Cidr::parse("8.8.8.8"), v4("8.8.8.9")));
  CHECK_FALSE(c.contains(nullptr));
}

TEST_CASE("Cidr::contains for IPv6") {
  auto c = *Cidr::parse("2001:db8::/32");
  CHECK(in(c, v6("2001:db8::1")));
  CHECK(in(c, v6("2001:db8:ffff::1")));
  CHECK_FALSE(in(c, v6("2001:db9::1")));
  CHECK_FALSE(in(c, v4("10.0.0.1")));
  CHECK_FALSE(in(*Cidr::parse("10.0.0.0/8"), v6("2001:db8::1")));
}

TEST_CASE("IPv4-mapped IPv6 peers match IPv4 blocks") {
  auto c = *Cidr::parse("203.0.113.0/24");
  CHECK(in(c, v6("::ffff:203.0.113.9")));
  CHECK_FALSE(in(c, v6("::ffff:203.0.114.9")));
  CHECK_FALSE(in(c, v6("::203.0.113.9")));  // IPv4-compatible (deprecated) is not mapped
  auto all4 = *Cidr::parse("0.0.0.0/0");
  CHECK(in(all4, v6("::ffff:1.2.3.4")));
  CHECK_FALSE(in(all4, v6("2001:db8::1")));
  // An IPv6 block written in mapped form also matches plain IPv4 peers.
  auto mapped = *Cidr::parse("::ffff:10.0.0.0/104");
  CHECK(in(mapped, v4("10.9.9.9")));
  CHECK(in(mapped, v6("::ffff:10.9.9.9")));
  CHECK_FALSE(in(mapped, v4("11.0.0.1")));
}
