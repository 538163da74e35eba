// The process: storage lock, listeners, worker threads, signals (SPEC 2). main() builds a
// Server from a loaded Config and runs it.
#pragma once
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "admin/admin_server.hpp"
#include "config/config.hpp"
#include "log/access_log.hpp"
#include "net/event.hpp"
#include "net/task_queue.hpp"
#include "queue/queue_service.hpp"
#include "server/worker.hpp"

namespace dechunkd {

class Server : public AdminBackend {
 public:
  explicit Server(std::shared_ptr<const Config> config);
  ~Server() override;
  // Runs until stopped; returns the process exit status (0 normal stop, 1 start-up failure).
  int run();

 private:
  bool lock_storage(std::string* error);
  bool bind_listeners(std::vector<std::vector<ListenerSocket>>* per_worker, std::string* error);
  bool bind_listener(const ListenConfig& l, const std::string& key,
                     std::vector<std::vector<ListenerSocket>>* per_worker, std::string* error);
  static void on_signal(evutil_socket_t sig, short, void* arg);
  static void on_worker_exit(evutil_socket_t, short, void* arg);
  void reload();
  size_t reload_config();
  void reopen_logs();

  // AdminBackend
  std::string not_ready_reason() override;
  void gather_stats(std::function<void(WorkerStats, ProcessStats)> done) override;
  size_t reload_now() override;
  bool queue_admin(QueueAdminRequest req, std::function<void(QueueAdminReply)> done) override;
  std::shared_ptr<const Config> config() override { return config_; }

  std::shared_ptr<const Config> config_;
  SharedState shared_;
  AccessLogSink access_sink_;
  EventBasePtr base_;
  std::vector<EventPtr> signal_events_;
  EventPtr worker_exit_;
  std::vector<std::unique_ptr<Worker>> workers_;
  std::vector<std::thread> threads_;
  std::atomic<unsigned> running_{0};
  int lock_fd_ = -1;
  int stop_signals_ = 0;
  bool draining_ = false;
  uint64_t reloads_success_ = 0;
  uint64_t reloads_failure_ = 0;
  std::unique_ptr<TaskQueue> main_tasks_;   // closures from workers to the main thread
  std::unique_ptr<AdminServer> admin_;
  std::unique_ptr<QueueService> queue_;     // queue mode: its own thread
};

}  // namespace dechunkd
