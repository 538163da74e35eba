#include "admin/metrics.hpp"

#include "core/append.hpp"

#include <charconv>
#include <cstdio>

namespace dechunkd {

void Histogram::observe(double seconds) {
  size_t i = 0;
  while (i < kBounds.size() && seconds > kBounds[i]) ++i;
  ++buckets[i];
  ++count;
  sum += seconds;
}

void Histogram::add(const Histogram& o) {
  for (size_t i = 0; i < buckets.size(); ++i) buckets[i] += o.buckets[i];
  count += o.count;
  sum += o.sum;
}

void RouteStats::add(const RouteStats& o) {
  if (mode.empty()) mode = o.mode;
  for (auto& kv : o.requests_by_status) requests_by_status[kv.first] += kv.second;
  duration.add(o.duration);
  received_bytes += o.received_bytes;
  chunked_requests += o.chunked_requests;
  for (auto& kv : o.upstream_duration) upstream_duration[kv.first].add(kv.second);
}

void WorkerStats::add(const WorkerStats& o) {
  for (auto& kv : o.routes) routes[kv.first].add(kv.second);
  requests_in_flight += o.requests_in_flight;
}

Histogram& WorkerStats::upstream(RouteStats& rs, std::string_view target) {
  auto it = rs.upstream_duration.find(target);
  if (it == rs.upstream_duration.end()) it = rs.upstream_duration.emplace(std::string(target), Histogram{}).first;
  return it->second;
}

RouteStats& WorkerStats::route(std::string_view name, std::string_view mode) {
  auto it = routes.find(name);
  if (it == routes.end()) it = routes.emplace(std::string(name), RouteStats{}).first;
  if (it->second.mode.empty()) it->second.mode.assign(mode);
  return it->second;
}

namespace {

void label_value(std::string& out, std::string_view v) {
  for (char c : v) {
    if (c == '\\') out += "\\\\";
    else if (c == '"') out += "\\\"";
    else if (c == '\n') out += "\\n";
    else out += c;
  }
}

void real(std::string& out, double v) {
  char buf[40];
  int n = std::snprintf(buf, sizeof buf, "%.9g", v);  // admin path only, not the request path
  out.append(buf, static_cast<size_t>(n));
}

void header(std::string& out, std::string_view name, std::string_view type, std::string_view help) {
  out += "# HELP dechunkd_";
  out += name;
  out += ' ';
  out += help;
  out += "\n# TYPE dechunkd_";
  out += name;
  out += ' ';
  out += type;
  out += '\n';
}

// labels: already rendered `a="x",b="y"` (may be empty)
void histogram(std::string& out, std::string_view name, const std::string& labels, const Histogram& h) {
  uint64_t cumulative = 0;
  for (size_t i = 0; i < h.buckets.size(); ++i) {
    cumulative += h.buckets[i];
    out += "dechunkd_";
    out += name;
    out += "_bucket{";
    out += labels;
    if (!labels.empty()) out += ',';
    out += "le=\"";
    if (i < Histogram::kBounds.size()) real(out, Histogram::kBounds[i]); else out += "+Inf";
    out += "\"} ";
    append_decimal(out, cumulative);
    out += '\n';
  }
  out += "dechunkd_";
  out += name;
  out += "_sum{";
  out += labels;
  out += "} ";
  real(out, h.sum);
  out += "\ndechunkd_";
  out += name;
  out += "_count{";
  out += labels;
  out += "} ";
  append_decimal(out, h.count);
  out += '\n';
}

// A metric without labels: its HELP/TYPE header and its one sample.
void scalar(std::string& out, const char* name, const char* type, const char* help, uint64_t value) {
  header(out, name, type, help);
  out += "dechunkd_";
  out += name;
  out += ' ';
  append_decimal(out, value);
  out += '\n';
}

std::string route_label(const std::string& route) {
  std::string l = "route=\"";
  label_value(l, route);
  l += '"';
  return l;
}

}  // namespace

std::string render_metrics(const WorkerStats& total, const ProcessStats& process, std::string_view version) {
  std::string out;
  out.reserve(4096);

  header(out, "requests_total", "counter", "Requests answered, by route, mode and status.");
  for (auto& [route, rs] : total.routes) {
    for (auto& [status, n] : rs.requests_by_status) {
      out += "dechunkd_requests_total{" + route_label(route) + ",mode=\"";
      label_value(out, rs.mode);
      out += "\",status=\"";
      append_decimal(out, static_cast<uint64_t>(status));
      out += "\"} ";
      append_decimal(out, n);
      out += '\n';
    }
  }

  header(out, "request_duration_seconds", "histogram", "Time from the first byte of a request to the end of its response.");
  for (auto& [route, rs] : total.routes) histogram(out, "request_duration_seconds", route_label(route), rs.duration);

  header(out, "upstream_duration_seconds", "histogram", "Time from sending a request to a target until its response head.");
  for (auto& [route, rs] : total.routes) {
    for (auto& [target, h] : rs.upstream_duration) {
      std::string labels = route_label(route) + ",target=\"";
      label_value(labels, target);
      labels += '"';
      histogram(out, "upstream_duration_seconds", labels, h);
    }
  }

  header(out, "received_bytes_total", "counter", "Request body bytes received (after de-chunking).");
  for (auto& [route, rs] : total.routes) {
    out += "dechunkd_received_bytes_total{" + route_label(route) + "} ";
    append_decimal(out, rs.received_bytes);
    out += '\n';
  }

  header(out, "chunked_requests_total", "counter", "Requests that arrived with Transfer-Encoding: chunked.");
  for (auto& [route, rs] : total.routes) {
    out += "dechunkd_chunked_requests_total{" + route_label(route) + "} ";
    append_decimal(out, rs.chunked_requests);
    out += '\n';
  }

  scalar(out, "connections_active", "gauge", "Inbound connections open.", process.connections_active);

  scalar(out, "requests_in_flight", "gauge", "Requests received and not yet answered.",
         total.requests_in_flight < 0 ? 0 : static_cast<uint64_t>(total.requests_in_flight));

  const QueueStats& q = process.queue;
  if (q.enabled) {
    auto per_target = [&](const char* name, const char* type, const char* help, auto value) {
      header(out, name, type, help);
      for (const QueueTargetStats& t : q.targets) {
        out += "dechunkd_";
        out += name;
        out += '{' + route_label(t.route) + ",target=\"";
        label_value(out, t.target);
        out += "\"} ";
        value(t);
        out += '\n';
      }
    };
    per_target("queue_pending", "gauge", "Queued deliveries waiting for their next attempt (not in flight).",
               [&](const QueueTargetStats& t) { append_decimal(out, t.pending); });
    per_target("queue_in_flight", "gauge", "Queued deliveries being attempted now.",
               [&](const QueueTargetStats& t) { append_decimal(out, t.in_flight); });
    per_target("queue_oldest_pending_seconds", "gauge", "Age of the oldest unfinished delivery (0 when none).",
               [&](const QueueTargetStats& t) { real(out, t.oldest_pending_seconds); });
    per_target("dead_letters", "gauge", "Deliveries in the dead-letter store.",
               [&](const QueueTargetStats& t) { append_decimal(out, t.dead_letters); });
    header(out, "deliveries_total", "counter", "Queue delivery outcomes: delivered, retried (a failed attempt that will be retried), dead_lettered.");
    for (const QueueTargetStats& t : q.targets) {
      std::pair<const char*, uint64_t> results[] = {{"delivered", t.delivered}, {"retried", t.retried}, {"dead_lettered", t.dead_lettered}};
      for (auto [result, n] : results) {
        out += "dechunkd_deliveries_total{" + route_label(t.route) + ",target=\"";
        label_value(out, t.target);
        out += "\",result=\"";
        out += result;
        out += "\"} ";
        append_decimal(out, n);
        out += '\n';
      }
    }
    scalar(out, "queue_bytes", "gauge",
           "Bytes of queued data, dead letters included: what storage.max_queue_size limits (finished messages "
           "stop counting at once; compaction frees their disk space).",
           q.bytes);
    scalar(out, "queue_corrupt_records_total", "counter",
           "Damaged queue records found (checksum mismatch) and skipped by recovery.", q.corrupt_records);
  }

  header(out, "config_reloads_total", "counter", "Configuration reloads, by result.");
  out += "dechunkd_config_reloads_total{result=\"success\"} ";
  append_decimal(out, process.reloads_success);
  out += "\ndechunkd_config_reloads_total{result=\"failure\"} ";
  append_decimal(out, process.reloads_failure);
  out += '\n';

  header(out, "build_info", "gauge", "Always 1; the version label says which build runs.");
  out += "dechunkd_build_info{version=\"";
  label_value(out, version);
  out += "\"} 1\n";
  return out;
}

}  // namespace dechunkd
