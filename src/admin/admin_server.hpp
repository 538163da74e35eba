// The admin endpoint (SPEC 8): health, readiness, Prometheus metrics and operator actions on
// admin.address, plain HTTP. It runs on the main thread's event loop, never on a worker;
// metrics are gathered from the workers by posting to them, so the request path stays lock-free.
#pragma once
#include <functional>
#include <memory>
#include <string>
#include <unordered_map>

#include "admin/metrics.hpp"
#include "config/config.hpp"
#include "net/event.hpp"
#include "queue/queue_service.hpp"

namespace dechunkd {

class AdminConnection;

// What the admin endpoint needs from the process; implemented by Server.
class AdminBackend {
 public:
  virtual ~AdminBackend() = default;
  // Empty when ready, else the reason ("draining", "storage.dir ... is not writable").
  virtual std::string not_ready_reason() = 0;
  // Collects every worker's stats, then calls done on the admin (main) thread.
  virtual void gather_stats(std::function<void(WorkerStats, ProcessStats)> done) = 0;
  // Reloads the configuration now; returns the number of errors (0 = applied).
  virtual size_t reload_now() = 0;
  virtual std::shared_ptr<const Config> config() = 0;
  // Queue endpoints (SPEC 8): answered by the queue thread, done runs on the admin thread.
  // false when the process is stopping (nothing will answer).
  virtual bool queue_admin(QueueAdminRequest req, std::function<void(QueueAdminReply)> done) = 0;
};

class AdminServer {
 public:
  AdminServer(event_base* base, AdminBackend& backend);
  ~AdminServer();
  // Binds admin.address. Returns false with *error on failure.
  bool start(const std::string& host, uint16_t port, std::string* error);
  void stop();
  const std::string& address() const { return address_; }

 private:
  friend class AdminConnection;
  static void on_accept(evutil_socket_t fd, short, void* arg);
  void closed(AdminConnection* c);

  event_base* base_;
  AdminBackend& backend_;
  int fd_ = -1;
  std::string address_;
  EventPtr accept_ev_;
  std::unordered_map<AdminConnection*, std::unique_ptr<AdminConnection>> conns_;
  std::vector<std::unique_ptr<AdminConnection>> graveyard_;
  EventPtr reaper_;
  EventPtr accept_pause_;  // re-enables accepting after running out of descriptors (as workers do)
  int64_t accept_failure_logged_ms_ = 0;
};

}  // namespace dechunkd
