// Route selection (SPEC 3 "routes", SPEC 11 "Routing and headers"). match() runs once per
// request: it scans the route list in config order without allocating; only a 405 builds the
// Allow string.
//
// Precedence is a lexicographic rank over the routes whose host and path match:
//   1. a route with `host` beats a host-less one (virtual-host first, as in nginx and Envoy:
//      once an operator gives a host its own routes, that host's traffic is decided by them
//      whenever one of them covers the path, even if a host-less route has a longer path);
//   2. an exact `path` beats a `path_prefix`;
//   3. the longest prefix wins.
// Routes of equal rank that match the same request necessarily share host and path (two matching
// exact paths are equal; two matching prefixes of equal length are equal), so they form the
// "best tier": the config allows several only with disjoint methods.
//
// 405 versus fallback: the method is decided inside the best tier only. If every route of the
// best tier rejects the method the answer is 405 with their union in Allow; we never fall back to
// a lower-ranked route (a host-less or a prefix route) that would accept the method. A more
// specific route is the operator's statement of how that host/path is handled (its own target,
// auth, allow_from); quietly sending a method it refuses to a broader route — typically a
// catch-all with different or no auth — would bypass that intent. nginx/Envoy behave the same:
// the selected location/route owns the request.
#include "router/router.hpp"

#include "http/request_head.hpp"  // iequals

namespace dechunkd {
namespace {


// The host part of a Host value or of a configured route host: port dropped, IPv6 brackets
// dropped. "[::1]:8080" -> "::1", "Example.com:80" -> "Example.com", "::1" (unbracketed, not a
// valid Host but a plausible config spelling) stays "::1".
std::string_view host_only(std::string_view h) {
  if (!h.empty() && h.front() == '[') {
    const size_t close = h.find(']');
    if (close == std::string_view::npos) return h;  // malformed: compared as is, matches nothing
    return h.substr(1, close - 1);
  }
  const size_t colon = h.find(':');
  if (colon == std::string_view::npos) return h;
  if (h.find(':', colon + 1) != std::string_view::npos) return h;  // bare IPv6 literal
  return h.substr(0, colon);
}

// Methods are case-sensitive tokens (RFC 9110 9.1): "get" is not "GET".
bool accepts(const RouteConfig& r, std::string_view method) {
  if (r.methods.empty()) return true;
  for (const std::string& m : r.methods) {
    if (m == method) return true;
  }
  return false;
}

// Lexicographic: host-specific, then exact, then prefix length. `matched` is false for "none".
struct Rank {
  bool matched = false;
  bool host = false;
  bool exact = false;
  size_t len = 0;

  bool operator==(const Rank&) const = default;
  bool better_than(const Rank& o) const {
    if (matched != o.matched) return matched;
    if (host != o.host) return host;
    if (exact != o.exact) return exact;
    return len > o.len;
  }
};

// Rank of `r` for this request; matched=false when host or path does not fit.
Rank rank_of(const RouteConfig& r, std::string_view req_host, std::string_view path) {
  Rank rk;
  if (!r.host.empty()) {
    if (!iequals(host_only(r.host), req_host)) return rk;
    rk.host = true;
  }
  if (r.prefix) {
    if (!prefix_matches(r.path, path)) return rk;
  } else {
    if (r.path != path) return rk;
    rk.exact = true;
  }
  rk.matched = true;
  rk.len = r.path.size();
  return rk;
}

bool allow_has(std::string_view allow, std::string_view method) {
  size_t pos = 0;
  while (pos <= allow.size()) {
    size_t end = allow.find(", ", pos);
    if (end == std::string_view::npos) end = allow.size();
    if (allow.substr(pos, end - pos) == method) return true;
    pos = end + 2;
  }
  return false;
}

}  // namespace

bool prefix_matches(std::string_view prefix, std::string_view path) {
  if (path.size() < prefix.size() || path.compare(0, prefix.size(), prefix) != 0) return false;
  if (path.size() == prefix.size()) return true;
  if (!prefix.empty() && prefix.back() == '/') return true;
  return path[prefix.size()] == '/';
}

Router::Router(const Config& config) : config_(&config) {}

RouteMatch Router::match(std::string_view host, std::string_view path,
                         std::string_view method) const {
  const std::string_view req_host = host_only(host);
  Rank best;
  const RouteConfig* chosen = nullptr;
  for (const RouteConfig& r : config_->routes) {
    const Rank rk = rank_of(r, req_host, path);
    if (!rk.matched) continue;
    if (rk.better_than(best)) {
      best = rk;
      chosen = nullptr;
    } else if (!(rk == best)) {
      continue;
    }
    // Same tier as the best so far: the first route (config order) listing the method wins.
    if (chosen == nullptr && accepts(r, method)) chosen = &r;
  }

  RouteMatch m;
  if (chosen != nullptr) {
    m.route = chosen;
    if (chosen->prefix) m.remainder = path.substr(chosen->path.size());
    return m;
  }
  if (!best.matched) return m;  // 404

  // 405: every route of the best tier lists methods, none of them this one.
  for (const RouteConfig& r : config_->routes) {
    if (!(rank_of(r, req_host, path) == best)) continue;
    m.refused.push_back(&r);
    for (const std::string& meth : r.methods) {
      if (allow_has(m.allow, meth)) continue;
      if (!m.allow.empty()) m.allow += ", ";
      m.allow += meth;
    }
  }
  return m;
}

}  // namespace dechunkd
