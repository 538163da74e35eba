// A worker: one thread, one event_base, its own SO_REUSEPORT listener sockets, connections,
// upstream pool, block pool and access-log buffer. Nothing on the request path is shared with
// other workers except atomics (connection count) and the immutable Runtime.
#pragma once
#include <atomic>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "admin/metrics.hpp"
#include "log/access_log.hpp"
#include "net/buffer.hpp"
#include "net/event.hpp"
#include "net/task_queue.hpp"
#include "server/runtime.hpp"

namespace dechunkd {

class InboundConnection;
class UpstreamPool;
class QueueService;

// Objects that must not be freed from inside their own callbacks go through Worker::defer_delete.
class Deferred {
 public:
  virtual ~Deferred() = default;
};

// Process-wide counters shared by all workers.
struct SharedState {
  std::atomic<uint64_t> connections{0};  // inbound connections open (max_connections)
  std::atomic<uint64_t> cut_requests{0}; // requests cut by a forced stop or the drain deadline
  QueueService* queue = nullptr;         // queue mode; set before the workers start
};

struct ListenerSocket {
  int fd = -1;
  std::string address;         // "127.0.0.1:8080" as bound
  std::string config_address;  // listen_key() of the listen entry it serves
};

class Worker {
 public:
  Worker(unsigned index, SharedState& shared, std::shared_ptr<const Runtime> runtime,
         std::vector<ListenerSocket> listeners, AccessLogSink* access_sink);
  ~Worker();
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;

  // Thread body: runs the loop until drained or stopped.
  void run();
  // Thread-safe: runs fn on the worker's thread.
  void post(std::function<void()> fn);
  // Thread-safe requests from the main thread.
  void request_drain();  // stop accepting, finish in-flight requests, then exit the loop
  void request_stop();   // close everything now
  // On the worker's thread (through post): listeners added or removed by a reload.
  void add_listeners(std::vector<ListenerSocket> sockets);
  void remove_listeners(const std::vector<std::string>& keys);  // by listen_key()

  event_base* base() const { return base_.get(); }
  evdns_base* dns();
  BlockPool& blocks() { return blocks_; }
  UpstreamPool& upstreams() { return *upstreams_; }
  AccessLog& access_log() { return access_log_; }
  WorkerStats& stats() { return stats_; }  // worker thread only; others go through post()
  const std::shared_ptr<const Runtime>& runtime() const { return runtime_; }
  // On the worker's thread: new requests use this config from now on.
  void set_runtime(std::shared_ptr<const Runtime> rt) { runtime_ = std::move(rt); }
  SharedState& shared() { return shared_; }
  unsigned index() const { return index_; }
  bool draining() const { return draining_; }

  // Replaces id with a new request id (in place: a connection's id buffer is reused).
  void new_request_id(std::string& id);
  void defer_delete(std::unique_ptr<Deferred> obj);
  void connection_closed(InboundConnection* c);  // c's owner moves it to the graveyard
  // A connection past limits.max_connections was refused: logged at most once a second.
  void note_overloaded();

 private:
  static void on_accept(evutil_socket_t fd, short, void* arg);
  static void on_reap(evutil_socket_t, short, void* arg);
  static void on_drain_timeout(evutil_socket_t, short, void* arg);
  static void on_accept_pause_end(evutil_socket_t, short, void* arg);
  void pause_accepting(const std::string& address, int error);
  static void on_flush_timer(evutil_socket_t, short, void* arg);
  void accept_from(size_t listener_index);
  void start_drain();
  void maybe_finish_drain();
  void cut_all(const std::vector<InboundConnection*>& all);
  void close_listeners();

  unsigned index_;
  SharedState& shared_;
  std::shared_ptr<const Runtime> runtime_;
  EventBasePtr base_;
  EvdnsPtr dns_;
  std::vector<ListenerSocket> listeners_;
  std::vector<EventPtr> accept_events_;
  std::unique_ptr<TaskQueue> tasks_;     // closures from other threads
  EventPtr reaper_;                      // frees the graveyard after callbacks return
  EventPtr drain_timer_;
  EventPtr flush_timer_;                 // flushes the access-log buffer
  EventPtr accept_pause_;                // re-enables accepting after running out of descriptors
  int64_t accept_failure_logged_ms_ = 0;
  uint64_t accept_failures_ = 0;         // since the last log line about them
  int64_t overload_logged_ms_ = 0;
  uint64_t overloaded_ = 0;              // refused past max_connections since the last line
  std::unordered_map<InboundConnection*, std::unique_ptr<InboundConnection>> connections_;
  std::vector<std::unique_ptr<Deferred>> graveyard_;
  BlockPool blocks_;
  std::unique_ptr<UpstreamPool> upstreams_;
  AccessLog access_log_;
  WorkerStats stats_;
  bool draining_ = false;
  uint64_t id_state_[2];                 // xorshift128+ for request ids
};

}  // namespace dechunkd
