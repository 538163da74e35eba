// One loaded configuration and everything derived from it. Workers and in-flight requests hold
// a shared_ptr<const Runtime>: a reload swaps the pointer, requests finish under the one they
// started with (SPEC 2).
#pragma once
#include <memory>

#include "config/config.hpp"
#include "http/request_head.hpp"
#include "router/router.hpp"

namespace dechunkd {

struct Runtime {
  explicit Runtime(std::shared_ptr<const Config> c)
      : config(std::move(c)), router(*config),
        head_limits{config->limits.max_header_size, config->limits.max_headers, config->limits.max_uri_size} {}
  std::shared_ptr<const Config> config;
  Router router;
  HeadLimits head_limits;
};

}  // namespace dechunkd
