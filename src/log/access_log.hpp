// The access log (SPEC 8/11): one JSON object per request. Each worker formats lines into its
// own buffer (no write(2) per request, PERF-NOTES) and flushes it to the shared sink on a short
// timer or when it grows; the sink serialises writes from several workers.
#pragma once
#include <atomic>
#include <cstdint>
#include <mutex>
#include <string>
#include <string_view>

namespace dechunkd {

class AccessLogSink {
 public:
  // target: "stdout" | "stderr" | "off" | a file path (opened O_APPEND). Returns false with
  // *error when the file cannot be opened.
  bool open(const std::string& target, std::string* error);
  // Opens target (or the same file again, after rotation) and switches to it; on failure the
  // current destination stays.
  bool reopen(const std::string& target, std::string* error);
  bool enabled() const { return fd_.load(std::memory_order_relaxed) >= 0; }
  void write(std::string_view data);
  ~AccessLogSink();

 private:
  static int open_target(const std::string& target, bool* owned, std::string* error);
  std::mutex mu_;
  std::atomic<int> fd_{-1};  // read without the lock by enabled()
  bool owned_ = false;
};

struct AccessRecord {
  int64_t time_ms = 0;            // wall clock at request start
  std::string_view request_id;
  std::string_view remote;        // ip:port
  std::string_view route;         // "_unmatched" when none
  std::string_view method;
  std::string_view path;          // no query
  int status = 0;
  uint64_t bytes_in = 0;          // body bytes read
  bool chunked = false;
  int target_status = -1;         // -1: null (no target called)
  int64_t target_ms = -1;         // -1: null
  int64_t duration_ms = 0;
};

class AccessLog {
 public:
  explicit AccessLog(AccessLogSink* sink) : sink_(sink) {}
  void append(const AccessRecord& r);
  void flush();
  bool enabled() const { return sink_ && sink_->enabled(); }

 private:
  AccessLogSink* sink_;
  std::string buf_;
};

}  // namespace dechunkd
