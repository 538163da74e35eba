// Prometheus metrics (SPEC 8). Each worker owns a WorkerStats and updates it on its own thread
// with plain integers: no atomics or locks on the request path. The admin endpoint asks every
// worker for a copy (Worker::post) and renders the sum, so counts are exact.
#pragma once
#include <array>
#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

namespace dechunkd {

struct Histogram {
  // Upper bounds in seconds; requests to webhook receivers range from ms to minutes.
  static constexpr std::array<double, 16> kBounds = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                                     0.5,   1,      2.5,   5,    10,    30,   60,  120};
  std::array<uint64_t, kBounds.size() + 1> buckets{};  // last: +Inf (non-cumulative here)
  uint64_t count = 0;
  double sum = 0;
  void observe(double seconds);
  void add(const Histogram& o);
};

struct RouteStats {
  std::string mode;                                  // "proxy" | "echo" | "queue" | "none"
  std::map<int, uint64_t> requests_by_status;
  Histogram duration;
  uint64_t received_bytes = 0;
  uint64_t chunked_requests = 0;
  std::map<std::string, Histogram, std::less<>> upstream_duration;  // by target (no query)
  void add(const RouteStats& o);
};

struct WorkerStats {
  std::map<std::string, RouteStats, std::less<>> routes;  // by route name; "_unmatched" for no route
  int64_t requests_in_flight = 0;
  void add(const WorkerStats& o);
  RouteStats& route(std::string_view name, std::string_view mode);  // no allocation once present
  Histogram& upstream(RouteStats& rs, std::string_view target);
};

// Process-wide values the main thread owns.
struct ProcessStats {
  uint64_t connections_active = 0;
  uint64_t reloads_success = 0;
  uint64_t reloads_failure = 0;
};

// Renders the Prometheus text exposition format (version 0.0.4).
std::string render_metrics(const WorkerStats& total, const ProcessStats& process, std::string_view version);

}  // namespace dechunkd
