// Chooses the route for a request (SPEC 3 and 11): host-specific beats host-less, exact path
// beats prefix, longest prefix wins; methods decide 405 with the union of allowed methods.
#pragma once
#include <string>
#include <string_view>
#include <vector>

#include "config/config.hpp"

namespace dechunkd {

struct RouteMatch {
  const RouteConfig* route = nullptr;  // null: 404 no_route (or 405 if allow is non-empty)
  std::string allow;                   // for 405: "GET, POST" (union, config order, no repeats)
  std::string_view remainder;          // prefix routes: the request path after the prefix
  std::vector<const RouteConfig*> refused;  // for 405: the routes that matched all but the method
};

class Router {
 public:
  explicit Router(const Config& config);  // keeps pointers into config: config must outlive it
  // host: the Host header value (port ignored, case-insensitive); path: raw path before '?'.
  RouteMatch match(std::string_view host, std::string_view path, std::string_view method) const;

 private:
  const Config* config_;
};

// Does `path` fall under `prefix` (SPEC 11: "/hooks" matches "/hooks" and "/hooks/x", not
// "/hooksfoo"; "/hooks/" matches paths starting with "/hooks/")?
bool prefix_matches(std::string_view prefix, std::string_view path);

}  // namespace dechunkd
