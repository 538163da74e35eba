// Queue mode (SPEC 6): the thread that owns the durable store, acknowledges accepted webhooks
// after group commit, and delivers them to every target of their route with retries, backoff,
// dead letters and replay. Deliveries go through the proxy path's ProxyCall (same outbound
// head builder, connection pool and TLS) on this thread's own Worker (a worker without
// listeners). Everything here runs on the queue thread; other threads only call the
// thread-safe entry points below, which post to it.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "admin/metrics.hpp"
#include "config/config.hpp"
#include "http/errors.hpp"
#include "queue/store.hpp"

namespace dechunkd {

class Runtime;
struct SharedState;

// A request a worker has read completely, ready to be queued. Built on the worker's thread.
struct QueueSubmission {
  QueueSubmission() = default;
  QueueSubmission(QueueSubmission&& o) noexcept;
  QueueSubmission& operator=(QueueSubmission&&) = delete;
  ~QueueSubmission();
  QueuedMessage msg;           // id and accepted_ms are set by the queue thread
  // The body: a spilled body's first spill_len bytes are in the unlinked temp file spill_fd
  // (a duplicate the submission owns; the queue thread maps it, so a large body is not copied
  // into the heap), the rest in body.
  int spill_fd = -1;
  uint64_t spill_len = 0;
  std::string body;
  int accept_status = 202;
  int64_t dedupe_window_ms = 0;  // with msg.dedupe_key non-empty
};

// The answer to a submission: accept_status with the message id, or a refusal.
struct QueueAck {
  int status = 0;              // accept_status, or 503
  std::string id;              // message id (also for a de-duplicated repeat)
  std::string error;           // why a 503: for the client's error body and the log
  int retry_after_s = 0;       // with a 503
};

// An admin request the queue answers (GET /queue, /dead-letters..., /routes/{name}/pause...).
struct QueueAdminRequest {
  std::string method;
  std::string path;            // without the query
  std::string query;           // without the '?'
};
struct QueueAdminReply {
  int status = 200;
  std::string body;            // JSON (empty for 204)
  bool error = false;          // body is empty; kind/message describe the error
  ErrorKind kind = ErrorKind::NotFound;
  std::string message;
  std::string allow;           // for a 405
};

class QueueService {
 public:
  // Opens and recovers the store when the config has queue routes or storage.dir/queue holds
  // a queue (pending deliveries outlive the routes that accepted them). Returns nullptr with
  // *error when that fails; recovery damage is logged, never fatal.
  static std::unique_ptr<QueueService> create(std::shared_ptr<const Runtime> runtime, SharedState& shared,
                                              std::string* error);
  ~QueueService();
  QueueService(const QueueService&) = delete;
  QueueService& operator=(const QueueService&) = delete;

  void start();                 // starts the queue thread
  // Thread-safe. done runs on the queue thread; the caller posts back to its own thread.
  void submit(QueueSubmission sub, std::function<void(QueueAck)> done);
  void set_runtime(std::shared_ptr<const Runtime> rt);  // after a reload
  void admin(QueueAdminRequest req, std::function<void(QueueAdminReply)> done);
  // done gets the queue numbers and the queue worker's stats (delivery upstream durations).
  void stats(std::function<void(QueueStats, WorkerStats)> done);
  // Empty while the queue can accept; else why not (GET /readyz). Thread-safe.
  std::string failure() const;
  // SIGTERM: no new attempts; in-flight ones get until timeouts.drain.
  void begin_drain();
  // After the workers have exited: finish (in-flight deliveries until the drain deadline, or
  // at once when now is true), make the store durable, and join the thread.
  void shutdown(bool now);

  class Impl;

 private:
  explicit QueueService(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
  std::thread thread_;
};

// Retry-After (RFC 9110 10.2.3): delta-seconds or an HTTP-date, as a delay in ms from now_ms;
// -1 when absent or unreadable. Exposed for unit tests.
int64_t parse_retry_after(std::string_view value, int64_t now_ms);
// The delay before attempt n+1 after n failed attempts: uniform in
// [initial, min(max, initial * 2^(n-1))]; rnd is a uniform 64-bit random number.
int64_t backoff_delay_ms(const RetryConfig& retry, uint32_t failed_attempts, uint64_t rnd);

}  // namespace dechunkd
