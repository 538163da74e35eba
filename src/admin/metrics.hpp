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

// Queue mode (SPEC 8): per (route, target) numbers, copied from the queue thread.
struct QueueTargetStats {
  std::string route;
  std::string target;          // URL without query
  uint64_t pending = 0;        // waiting for an attempt (not in flight)
  uint64_t in_flight = 0;
  uint64_t dead_letters = 0;
  double oldest_pending_seconds = 0;  // oldest unfinished delivery (waiting or in flight)
  uint64_t delivered = 0, retried = 0, dead_lettered = 0;  // deliveries_total{result}
};
struct QueueStats {
  bool enabled = false;        // the store is open
  uint64_t bytes = 0;          // queue_bytes: what max_queue_size limits
  uint64_t corrupt_records = 0;
  std::vector<QueueTargetStats> targets;
};

// Process-wide values: the main thread's own, plus the queue thread's copy.
struct ProcessStats {
  uint64_t connections_active = 0;
  uint64_t reloads_success = 0;
  uint64_t reloads_failure = 0;
  QueueStats queue;
};

// Renders the Prometheus text exposition format (version 0.0.4).
std::string render_metrics(const WorkerStats& total, const ProcessStats& process, std::string_view version);

}  // namespace dechunkd
