// libFuzzer target for the configuration loader (SPEC 3, config/config.hpp):
// load_config_string(input, "fuzz.yaml").
// Invariants: it never throws or crashes; it returns a config exactly when it reports no error;
// every error is "fuzz.yaml:..." with a 1-based position (or none); a returned config has at
// least one listener, unique route names of the documented shape, paths starting with '/',
// one target per proxy route and none per echo route, non-zero limits, and a Router can be
// built over it and asked for a route.
#include <fcntl.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <set>
#include <string>
#include <string_view>

#include "config/config.hpp"
#include "fuzz_check.hpp"
#include "router/router.hpp"

using namespace dechunkd;

namespace {

bool valid_route_name(std::string_view s) {
  auto alnum = [](char c) {
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
  };
  if (s.empty() || !alnum(s[0])) return false;
  for (char c : s) {
    if (!alnum(c) && c != '_' && c != '.' && c != '-') return false;
  }
  return true;
}

}  // namespace

// ${file:/dev/stdin} (or /proc/self/fd/0) must not block a fuzzing run: stdin is /dev/null.
extern "C" int LLVMFuzzerInitialize(int*, char***) {
  const int fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (fd >= 0) {
    ::dup2(fd, 0);
    ::close(fd);
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view yaml(reinterpret_cast<const char*>(data), size);
  LoadResult r;
  try {
    r = load_config_string(yaml, "fuzz.yaml");
  } catch (...) {
    FUZZ_CHECK(!"load_config_string threw");
  }
  FUZZ_CHECK((r.config != nullptr) == r.errors.empty());
  for (const ConfigError& e : r.errors) {
    FUZZ_CHECK(e.file == "fuzz.yaml");
    FUZZ_CHECK(e.str().rfind("fuzz.yaml:", 0) == 0);
    FUZZ_CHECK(!e.message.empty());
    FUZZ_CHECK(e.line >= 0 && e.col >= 0);
    FUZZ_CHECK(e.line == 0 || e.col >= 1);
  }
  if (!r.config) return 0;

  const Config& c = *r.config;
  FUZZ_CHECK(!c.listen.empty());
  for (const ListenConfig& l : c.listen) FUZZ_CHECK(!l.address.empty() && !l.host.empty());
  FUZZ_CHECK(c.workers >= 1 && c.workers <= 256);
  FUZZ_CHECK(c.limits.max_body_size > 0 && c.limits.max_header_size > 0 &&
             c.limits.max_headers > 0 && c.limits.max_uri_size > 0);
  std::set<std::string> names;
  for (const RouteConfig& route : c.routes) {
    FUZZ_CHECK(valid_route_name(route.name));
    FUZZ_CHECK(names.insert(route.name).second);
    FUZZ_CHECK(!route.path.empty() && route.path[0] == '/');
    switch (route.mode) {
      case RouteMode::Proxy:
        FUZZ_CHECK(route.targets.size() == 1);
        break;
      case RouteMode::Echo:
        FUZZ_CHECK(route.targets.empty());
        break;
      case RouteMode::Queue:
        FUZZ_CHECK(!route.targets.empty());
        break;
    }
    for (const TargetConfig& t : route.targets) {
      FUZZ_CHECK(!t.url.host.empty() && !t.url.authority.empty());
      FUZZ_CHECK(!t.url.path.empty() && t.url.path[0] == '/');
    }
    FUZZ_CHECK(route.body_limit(c) > 0);
  }
  const Router router(c);
  for (const RouteConfig& route : c.routes) {
    const RouteMatch m = router.match(route.host, route.path,
                                      route.methods.empty() ? "POST" : route.methods.front());
    FUZZ_CHECK(m.route != nullptr);
  }
  (void)router.match("example.com", "/", "GET");
  return 0;
}
