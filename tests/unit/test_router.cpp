// Router: precedence, host matching, methods and 405 (SPEC 3, SPEC 11 "Routing and headers").
#include <doctest/doctest.h>

#include <initializer_list>
#include <string>
#include <string_view>
#include <vector>

#include "router/router.hpp"

using namespace dechunkd;

namespace {

RouteConfig route(std::string name, std::string path, bool prefix,
                  std::vector<std::string> methods = {}, std::string host = {}) {
  RouteConfig r;
  r.name = std::move(name);
  r.path = std::move(path);
  r.prefix = prefix;
  r.methods = std::move(methods);
  r.host = std::move(host);
  return r;
}

Config config(std::initializer_list<RouteConfig> routes) {
  Config c;
  c.routes.assign(routes.begin(), routes.end());
  return c;
}

struct MatchCase {
  std::string_view host;
  std::string_view path;
  std::string_view method;
  std::string_view route;      // expected route name; "" = none
  std::string_view allow;      // expected Allow ("" = 404 when route is "")
  std::string_view remainder;  // expected remainder
};

void run(const Config& c, std::initializer_list<MatchCase> cases) {
  const Router router(c);
  for (const MatchCase& tc : cases) {
    CAPTURE(tc.host);
    CAPTURE(tc.path);
    CAPTURE(tc.method);
    const RouteMatch m = router.match(tc.host, tc.path, tc.method);
    const std::string_view got = m.route != nullptr ? std::string_view(m.route->name) : "";
    CHECK(got == tc.route);
    CHECK(m.allow == tc.allow);
    CHECK(m.remainder == tc.remainder);
  }
}

}  // namespace

TEST_CASE("router: prefix_matches") {
  struct {
    std::string_view prefix, path;
    bool want;
  } const cases[] = {
      {"/hooks", "/hooks", true},
      {"/hooks", "/hooks/", true},
      {"/hooks", "/hooks/a/b", true},
      {"/hooks", "/hooksfoo", false},
      {"/hooks", "/hook", false},
      {"/hooks", "/Hooks/a", false},
      {"/hooks/", "/hooks/", true},
      {"/hooks/", "/hooks/a", true},
      {"/hooks/", "/hooks", false},
      {"/hooks/", "/hooksfoo", false},
      {"/", "/", true},
      {"/", "/anything", true},
      {"/a%2F", "/a%2Fb", false},  // no '/' after a prefix without trailing '/'
      {"/a%2F", "/a%2F/b", true},
  };
  for (const auto& tc : cases) {
    CAPTURE(tc.prefix);
    CAPTURE(tc.path);
    CHECK(prefix_matches(tc.prefix, tc.path) == tc.want);
  }
}

TEST_CASE("router: exact beats prefix, longest prefix wins, /hooks vs /hooksfoo") {
  const Config c = config({
      route("root", "/", true),
      route("hooks", "/hooks", true),
      route("hooks-slash", "/hooks/", true),
      route("hooks-a", "/hooks/a", true),
      route("orders", "/hooks/orders", false),
      route("orders-prefix", "/hooks/orders", true),
  });
  run(c, {
      {"gw", "/hooks/orders", "POST", "orders", "", ""},
      {"gw", "/hooks/orders/", "POST", "orders-prefix", "", "/"},
      {"gw", "/hooks/orders/7", "POST", "orders-prefix", "", "/7"},
      {"gw", "/hooks/ordersX", "POST", "hooks-slash", "", "ordersX"},
      {"gw", "/hooks/a", "POST", "hooks-a", "", ""},
      {"gw", "/hooks/a/x", "POST", "hooks-a", "", "/x"},
      {"gw", "/hooks/ab", "POST", "hooks-slash", "", "ab"},
      {"gw", "/hooks/", "POST", "hooks-slash", "", ""},
      {"gw", "/hooks", "POST", "hooks", "", ""},
      {"gw", "/hooksfoo", "POST", "root", "", "hooksfoo"},
      {"gw", "/", "GET", "root", "", ""},
      {"gw", "/other", "GET", "root", "", "other"},
  });
}

TEST_CASE("router: trailing-slash prefixes and 404") {
  const Config c = config({
      route("hooks", "/hooks", true),
      route("debug", "/debug/", true),
  });
  run(c, {
      {"gw", "/hooks", "POST", "hooks", "", ""},
      {"gw", "/hooks/", "POST", "hooks", "", "/"},
      {"gw", "/hooks//x", "POST", "hooks", "", "//x"},
      {"gw", "/hooksfoo", "POST", "", "", ""},
      {"gw", "/hook", "POST", "", "", ""},
      {"gw", "/debug/", "GET", "debug", "", ""},
      {"gw", "/debug/x/y", "GET", "debug", "", "x/y"},
      {"gw", "/debug", "GET", "", "", ""},  // "/debug/" needs the slash
      {"gw", "/", "GET", "", "", ""},
      {"gw", "", "GET", "", "", ""},
  });
}

TEST_CASE("router: paths are byte-exact, case-sensitive, never percent-decoded") {
  const Config c = config({
      route("exact", "/Hooks/Orders", false),
      route("enc", "/hooks/a%2Fb", false),
      route("encp", "/p%20q", true),
  });
  run(c, {
      {"gw", "/Hooks/Orders", "POST", "exact", "", ""},
      {"gw", "/hooks/orders", "POST", "", "", ""},
      {"gw", "/HOOKS/ORDERS", "POST", "", "", ""},
      {"gw", "/Hooks/Orders/", "POST", "", "", ""},
      {"gw", "/hooks/a%2Fb", "POST", "enc", "", ""},
      {"gw", "/hooks/a%2fb", "POST", "", "", ""},
      {"gw", "/hooks/a/b", "POST", "", "", ""},
      {"gw", "/p%20q/x", "POST", "encp", "", "/x"},
      {"gw", "/p q/x", "POST", "", "", ""},
      {"gw", "/p%20qx", "POST", "", "", ""},
  });
}

TEST_CASE("router: host beats host-less; case-insensitive; port and IPv6 brackets ignored") {
  const Config c = config({
      route("any-orders", "/hooks/orders", false),
      route("tenant-orders", "/hooks/orders", false, {}, "Hooks.Example.com"),
      route("v6", "/hooks/orders", false, {}, "::1"),
      route("v6b", "/hooks/v6", false, {}, "[2001:db8::1]"),
      route("any-v6", "/hooks/v6", false),
  });
  run(c, {
      {"hooks.example.com", "/hooks/orders", "POST", "tenant-orders", "", ""},
      {"HOOKS.EXAMPLE.COM", "/hooks/orders", "POST", "tenant-orders", "", ""},
      {"hooks.example.com:8443", "/hooks/orders", "POST", "tenant-orders", "", ""},
      {"hooks.example.com:", "/hooks/orders", "POST", "tenant-orders", "", ""},
      {"other.example.com", "/hooks/orders", "POST", "any-orders", "", ""},
      {"hooks.example.com.evil", "/hooks/orders", "POST", "any-orders", "", ""},
      {"example.com", "/hooks/orders", "POST", "any-orders", "", ""},
      {"", "/hooks/orders", "POST", "any-orders", "", ""},  // HTTP/1.0 without Host
      {"[::1]:8080", "/hooks/orders", "POST", "v6", "", ""},
      {"[::1]", "/hooks/orders", "POST", "v6", "", ""},
      {"[::2]:8080", "/hooks/orders", "POST", "any-orders", "", ""},
      {"[2001:DB8::1]:443", "/hooks/v6", "POST", "v6b", "", ""},
      {"[2001:db8::1]", "/hooks/v6", "POST", "v6b", "", ""},
      {"[2001:db8::2]", "/hooks/v6", "POST", "any-v6", "", ""},
      {"2001:db8::1", "/hooks/v6", "POST", "v6b", "", ""},  // unbracketed: whole value is the host
  });
}

TEST_CASE("router: a host route whose path covers the request beats a longer host-less path") {
  // Choice (documented in router.cpp): host is the first precedence key (virtual-host model).
  const Config c = config({
      route("any-exact", "/hooks/orders", false),
      route("tenant-all", "/", true, {}, "tenant.example.com"),
      route("tenant-hooks", "/hooks/", true, {}, "tenant.example.com"),
  });
  run(c, {
      {"tenant.example.com", "/hooks/orders", "POST", "tenant-hooks", "", "orders"},
      {"tenant.example.com", "/x", "POST", "tenant-all", "", "x"},
      {"other", "/hooks/orders", "POST", "any-exact", "", ""},
      {"other", "/x", "POST", "", "", ""},
  });
}

TEST_CASE("router: methods, disjoint routes on one path, 405 with Allow union") {
  const Config c = config({
      route("orders-post", "/hooks/orders", false, {"POST", "PUT"}),
      route("orders-get", "/hooks/orders", false, {"GET", "PUT"}),  // PUT overlaps: first wins
      route("orders-del", "/hooks/orders", false, {"DELETE", "POST"}),
      route("status", "/status", false, {"GET"}),
      route("any", "/any", false),
      route("lower", "/lower", false, {"post"}),
  });
  run(c, {
      {"gw", "/hooks/orders", "POST", "orders-post", "", ""},
      {"gw", "/hooks/orders", "GET", "orders-get", "", ""},
      {"gw", "/hooks/orders", "PUT", "orders-post", "", ""},
      {"gw", "/hooks/orders", "DELETE", "orders-del", "", ""},
      {"gw", "/hooks/orders", "PATCH", "", "POST, PUT, GET, DELETE", ""},
      {"gw", "/hooks/orders", "HEAD", "", "POST, PUT, GET, DELETE", ""},
      {"gw", "/hooks/orders", "post", "", "POST, PUT, GET, DELETE", ""},  // case-sensitive
      {"gw", "/status", "GET", "status", "", ""},
      {"gw", "/status", "HEAD", "", "GET", ""},  // HEAD is not implied by GET
      {"gw", "/status", "POST", "", "GET", ""},
      {"gw", "/any", "HEAD", "any", "", ""},
      {"gw", "/any", "PROPFIND", "any", "", ""},
      {"gw", "/lower", "POST", "", "post", ""},
      {"gw", "/nothing", "POST", "", "", ""},
  });
}

TEST_CASE("router: disjoint methods with host; prefix tiers") {
  const Config c = config({
      route("h-post", "/in/", true, {"POST"}, "a.example"),
      route("h-get", "/in/", true, {"GET"}, "A.EXAMPLE"),
      route("any-post", "/in/", true, {"POST"}),
  });
  run(c, {
      {"a.example", "/in/x", "POST", "h-post", "", "x"},
      {"a.example:80", "/in/x", "GET", "h-get", "", "x"},
      {"a.example", "/in/x", "PUT", "", "POST, GET", ""},
      {"b.example", "/in/x", "POST", "any-post", "", "x"},
      {"b.example", "/in/x", "GET", "", "POST", ""},
  });
}

TEST_CASE("router: 405 never falls back to a less specific route") {
  // Choice (documented in router.cpp): the best host/path tier owns the request. A GET for a
  // host whose route only takes POST is 405, even though a host-less route would take it.
  const Config c = config({
      route("any-a", "/a", false),
      route("host-a", "/a", false, {"POST"}, "h.example"),
      route("exact-b", "/b", false, {"POST"}),
      route("root", "/", true),
      route("long", "/c/d/", true, {"PUT"}),
      route("short", "/c/", true, {"GET"}),
  });
  run(c, {
      {"h.example", "/a", "POST", "host-a", "", ""},
      {"h.example", "/a", "GET", "", "POST", ""},
      {"other", "/a", "GET", "any-a", "", ""},
      {"h.example", "/b", "GET", "", "POST", ""},  // exact POST-only: not the "/" prefix
      {"h.example", "/b/", "GET", "root", "", "b/"},
      {"gw", "/c/d/x", "GET", "", "PUT", ""},  // longest prefix owns it
      {"gw", "/c/dx", "GET", "short", "", "dx"},
  });
}

TEST_CASE("router: Allow keeps config order without repeats") {
  const Config c = config({
      route("r1", "/x", false, {"PUT", "POST"}),
      route("r2", "/x", false, {"POST", "PATCH", "PUT"}),
      route("r3", "/x", false, {"DELETE", "PATCH"}),
      route("other-host", "/x", false, {"OPTIONS"}, "o.example"),  // not in the tier for "gw"
  });
  run(c, {
      {"gw", "/x", "GET", "", "PUT, POST, PATCH, DELETE", ""},
      {"o.example", "/x", "GET", "", "OPTIONS", ""},
  });
}

TEST_CASE("router: remainder is a view into the request path") {
  const Config c = config({route("p", "/hooks", true), route("e", "/exact", false)});
  const Router router(c);
  const std::string path = "/hooks/a/b";
  const RouteMatch m = router.match("gw", path, "POST");
  REQUIRE(m.route != nullptr);
  CHECK(m.remainder == "/a/b");
  CHECK(m.remainder.data() == path.data() + 6);
  const RouteMatch e = router.match("gw", "/exact", "POST");
  REQUIRE(e.route != nullptr);
  CHECK(e.remainder.empty());
  CHECK(e.allow.empty());
}

TEST_CASE("router: empty config") {
  const Config c;
  const Router router(c);
  const RouteMatch m = router.match("gw", "/", "GET");
  CHECK(m.route == nullptr);
  CHECK(m.allow.empty());
}
