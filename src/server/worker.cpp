#include "server/worker.hpp"

#include <sys/resource.h>

#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "log/log.hpp"
#include "net/socket.hpp"
#include "server/inbound_connection.hpp"
#include "upstream/upstream.hpp"

namespace dechunkd {

namespace {
constexpr std::chrono::milliseconds kAccessLogFlush{200};
constexpr int kMaxAcceptsPerEvent = 64;
}  // namespace

Worker::Worker(unsigned index, SharedState& shared, std::shared_ptr<const Runtime> runtime,
               std::vector<ListenerSocket> listeners, AccessLogSink* access_sink)
    : index_(index), shared_(shared), runtime_(std::move(runtime)), listeners_(std::move(listeners)),
      access_log_(access_sink) {
  // This base is only ever touched from its own thread (other threads go through tasks_, an
  // eventfd): no libevent locking on the request path.
  event_config* cfg = event_config_new();
  event_config_set_flag(cfg, EVENT_BASE_FLAG_NOLOCK);
  base_.reset(event_base_new_with_config(cfg));
  event_config_free(cfg);
  tasks_ = std::make_unique<TaskQueue>(base_.get());
  reaper_.reset(event_new(base_.get(), -1, 0, on_reap, this));
  drain_timer_.reset(event_new(base_.get(), -1, 0, on_drain_timeout, this));
  flush_timer_.reset(event_new(base_.get(), -1, EV_PERSIST, on_flush_timer, this));
  accept_pause_.reset(event_new(base_.get(), -1, 0, on_accept_pause_end, this));
  dechunkd::arm_timer(flush_timer_.get(), kAccessLogFlush);
  upstreams_ = std::make_unique<UpstreamPool>(*this);
  for (const ListenerSocket& l : listeners_) {
    accept_events_.emplace_back(event_new(base_.get(), l.fd, EV_READ | EV_PERSIST, on_accept, this));
    event_add(accept_events_.back().get(), nullptr);
  }
  uint64_t seed[2] = {0, 0};
  if (getrandom(seed, sizeof seed, 0) != sizeof seed) {
    seed[0] = static_cast<uint64_t>(wall_clock_ms()) ^ (static_cast<uint64_t>(getpid()) << 32);
    seed[1] = reinterpret_cast<uintptr_t>(this) ^ index;
  }
  id_state_[0] = seed[0] | 1;
  id_state_[1] = seed[1] | 2;
}

Worker::~Worker() {
  connections_.clear();
  tasks_.reset();
  graveyard_.clear();
  upstreams_.reset();
  accept_events_.clear();
  close_listeners();
  access_log_.flush();
}

evdns_base* Worker::dns() {
  if (!dns_) {
    dns_.reset(evdns_base_new(base_.get(), EVDNS_BASE_INITIALIZE_NAMESERVERS | EVDNS_BASE_DISABLE_WHEN_INACTIVE));
    if (!dns_) dns_.reset(evdns_base_new(base_.get(), 0));
    if (dns_) evdns_base_load_hosts(dns_.get(), nullptr);
  }
  return dns_.get();
}

void Worker::run() {
  event_base_loop(base_.get(), EVLOOP_NO_EXIT_ON_EMPTY);
  access_log_.flush();
}

void Worker::post(std::function<void()> fn) { tasks_->post(std::move(fn)); }

void Worker::request_drain() {
  post([this] { start_drain(); });
}

void Worker::request_stop() {
  post([this] {
    std::vector<InboundConnection*> all;
    for (auto& kv : connections_) all.push_back(kv.first);
    cut_all(all);
    close_listeners();
    event_base_loopexit(base_.get(), nullptr);
  });
}

void Worker::add_listeners(std::vector<ListenerSocket> sockets) {
  for (ListenerSocket& l : sockets) {
    if (draining_) {
      ::close(l.fd);
      continue;
    }
    accept_events_.emplace_back(event_new(base_.get(), l.fd, EV_READ | EV_PERSIST, on_accept, this));
    event_add(accept_events_.back().get(), nullptr);
    listeners_.push_back(std::move(l));
  }
}

void Worker::remove_listeners(const std::vector<std::string>& config_addresses) {
  // Connections already accepted on a removed listener keep running.
  for (size_t i = listeners_.size(); i-- > 0;) {
    bool gone = false;
    for (const std::string& a : config_addresses) gone = gone || a == listeners_[i].config_address;
    if (!gone) continue;
    if (i < accept_events_.size()) accept_events_.erase(accept_events_.begin() + static_cast<long>(i));
    if (listeners_[i].fd >= 0) ::close(listeners_[i].fd);
    listeners_.erase(listeners_.begin() + static_cast<long>(i));
  }
}

void Worker::on_accept(evutil_socket_t fd, short, void* arg) {
  auto* w = static_cast<Worker*>(arg);
  for (size_t i = 0; i < w->listeners_.size(); ++i) {
    if (w->listeners_[i].fd == fd) {
      w->accept_from(i);
      return;
    }
  }
}

void Worker::accept_from(size_t li) {
  for (int i = 0; i < kMaxAcceptsPerEvent && !draining_; ++i) {
    sockaddr_storage peer{};
    socklen_t len = sizeof peer;
    int fd = ::accept4(listeners_[li].fd, reinterpret_cast<sockaddr*>(&peer), &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      if (accept_must_pause(errno)) {
        pause_accepting(listeners_[li].address, errno);
      } else if (errno != EAGAIN) {
        log_warn(std::string("accept on ") + listeners_[li].address + " failed: " + std::strerror(errno));
      }
      return;
    }
    set_nodelay(fd);
    uint64_t open_now = shared_.connections.fetch_add(1, std::memory_order_relaxed) + 1;
    auto conn = std::make_unique<InboundConnection>(*this, fd, peer, listeners_[li],
                                                    runtime_->server_ctx(listeners_[li].config_address));
    InboundConnection* raw = conn.get();
    connections_.emplace(raw, std::move(conn));
    if (open_now > runtime_->config->limits.max_connections) {
      raw->start();
      raw->reject_overloaded();
    } else {
      raw->start();
    }
  }
}

// Out of descriptors (or kernel memory): accepting pauses (see accept_must_pause), and the log
// says so at most once a second.
void Worker::pause_accepting(const std::string& address, int error) {
  for (EventPtr& ev : accept_events_) event_del(ev.get());
  dechunkd::arm_timer(accept_pause_.get(), kAcceptPause);
  ++accept_failures_;
  const int64_t now = wall_clock_ms();
  if (now - accept_failure_logged_ms_ < 1000) return;
  accept_failure_logged_ms_ = now;
  std::string advice;
  if (error == EMFILE || error == ENFILE) {
    rlimit nofile{};
    getrlimit(RLIMIT_NOFILE, &nofile);
    advice = "; " + std::to_string(shared_.connections.load(std::memory_order_relaxed)) +
             " connection(s) open, RLIMIT_NOFILE " + std::to_string(nofile.rlim_cur) +
             ": raise LimitNOFILE= (systemd) or lower limits.max_connections";
  }
  log_warn("accept on " + address + " failed: " + std::strerror(error) + " (" + std::to_string(accept_failures_) +
           " time(s) since the last such line); not accepting for 100 ms" + advice);
  accept_failures_ = 0;
}

void Worker::note_overloaded() {
  ++overloaded_;
  const int64_t now = wall_clock_ms();
  if (now - overload_logged_ms_ < 1000) return;
  overload_logged_ms_ = now;
  log_warn("limits.max_connections (" + std::to_string(runtime_->config->limits.max_connections) + ") reached: " +
           std::to_string(overloaded_) + " connection(s) answered 503 since the last such line; raise it if the "
           "host has room, or look for slow or idle clients holding connections");
  overloaded_ = 0;
}

void Worker::on_accept_pause_end(evutil_socket_t, short, void* arg) {
  auto* w = static_cast<Worker*>(arg);
  if (w->draining_) return;
  for (EventPtr& ev : w->accept_events_) event_add(ev.get(), nullptr);
}

void Worker::connection_closed(InboundConnection* c) {
  auto it = connections_.find(c);
  if (it == connections_.end()) return;
  shared_.connections.fetch_sub(1, std::memory_order_relaxed);
  struct Holder : Deferred {
    std::unique_ptr<InboundConnection> c;
  };
  auto h = std::make_unique<Holder>();
  h->c = std::move(it->second);
  connections_.erase(it);
  defer_delete(std::move(h));
  if (draining_) maybe_finish_drain();
}

void Worker::defer_delete(std::unique_ptr<Deferred> obj) {
  graveyard_.push_back(std::move(obj));
  event_active(reaper_.get(), EV_TIMEOUT, 0);
}

void Worker::on_reap(evutil_socket_t, short, void* arg) {
  auto* w = static_cast<Worker*>(arg);
  std::vector<std::unique_ptr<Deferred>> dead;
  dead.swap(w->graveyard_);
  dead.clear();
}

void Worker::on_flush_timer(evutil_socket_t, short, void* arg) { static_cast<Worker*>(arg)->access_log_.flush(); }

void Worker::close_listeners() {
  accept_events_.clear();
  for (auto& l : listeners_) {
    if (l.fd >= 0) ::close(l.fd);
    l.fd = -1;
  }
}

void Worker::start_drain() {
  if (draining_) return;
  draining_ = true;
  close_listeners();
  upstreams_->clear();
  std::vector<InboundConnection*> all;
  for (auto& kv : connections_) all.push_back(kv.first);
  for (InboundConnection* c : all) c->drain();
  dechunkd::arm_timer(drain_timer_.get(), runtime_->config->timeouts.drain);
  maybe_finish_drain();
}

void Worker::maybe_finish_drain() {
  if (!connections_.empty()) return;
  event_del(flush_timer_.get());
  event_del(drain_timer_.get());
  access_log_.flush();
  event_base_loopexit(base_.get(), nullptr);
}

void Worker::on_drain_timeout(evutil_socket_t, short, void* arg) {
  auto* w = static_cast<Worker*>(arg);
  std::vector<InboundConnection*> all;
  for (auto& kv : w->connections_) all.push_back(kv.first);
  w->cut_all(all);
  w->maybe_finish_drain();
}

// A forced stop or the drain deadline closes these connections; the requests they were still
// receiving or answering are counted for the "stopped" log line (SPEC 11).
void Worker::cut_all(const std::vector<InboundConnection*>& all) {
  for (InboundConnection* c : all) {
    if (c->has_request_in_progress()) shared_.cut_requests.fetch_add(1, std::memory_order_relaxed);
    c->abort();
  }
}

void Worker::new_request_id(std::string& id) {
  // xorshift128+: fast and unpredictable enough for correlation ids (not a secret).
  static constexpr char kHex[] = "0123456789abcdef";
  id.assign(32, '0');
  char* d = id.data();  // written through a pointer: operator[] would reload the buffer per byte
  for (int half = 0; half < 2; ++half) {
    uint64_t s1 = id_state_[0];
    const uint64_t s0 = id_state_[1];
    id_state_[0] = s0;
    s1 ^= s1 << 23;
    id_state_[1] = s1 ^ s0 ^ (s1 >> 17) ^ (s0 >> 26);
    uint64_t v = id_state_[1] + s0;
    for (int i = 0; i < 16; ++i) {
      d[half * 16 + i] = kHex[v & 15];
      v >>= 4;
    }
  }
}

}  // namespace dechunkd
