#include "server/server.hpp"

#include <sys/resource.h>
#include <sys/statvfs.h>

#include <event2/thread.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <mutex>
#include <cstring>

#include "log/log.hpp"
#include "net/socket.hpp"
#include "server/notify.hpp"
#include "server/runtime.hpp"

namespace dechunkd {

Server::Server(std::shared_ptr<const Config> config) : config_(std::move(config)) {}

Server::~Server() {
  for (auto& t : threads_) {
    if (t.joinable()) t.join();
  }
  workers_.clear();
  if (lock_fd_ >= 0) ::close(lock_fd_);
}

namespace {
bool make_dirs(const std::string& path) {
  std::string cur;
  size_t i = 0;
  while (i <= path.size()) {
    size_t j = path.find('/', i);
    if (j == std::string::npos) j = path.size();
    cur = path.substr(0, j);
    if (!cur.empty() && ::mkdir(cur.c_str(), 0750) != 0 && errno != EEXIST) return false;
    i = j + 1;
  }
  return true;
}
}  // namespace

bool Server::lock_storage(std::string* error) {
  const std::string& dir = config_->storage.dir;
  if (!make_dirs(dir)) {
    *error = "cannot create storage.dir " + dir + ": " + std::strerror(errno);
    return false;
  }
  std::string path = dir + "/dechunkd.lock";
  lock_fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0640);
  if (lock_fd_ < 0) {
    *error = "cannot open " + path + ": " + std::strerror(errno) + " (is storage.dir writable by this user?)";
    return false;
  }
  if (::flock(lock_fd_, LOCK_EX | LOCK_NB) != 0) {
    char buf[32] = {0};
    ssize_t n = ::pread(lock_fd_, buf, sizeof buf - 1, 0);
    std::string pid = n > 0 ? std::string(buf, static_cast<size_t>(n)) : std::string("unknown");
    while (!pid.empty() && (pid.back() == '\n' || pid.back() == ' ')) pid.pop_back();
    *error = "storage.dir " + dir + " is in use by another dechunkd (PID " + pid +
             "); stop it or give this instance its own storage.dir";
    ::close(lock_fd_);
    lock_fd_ = -1;
    return false;
  }
  std::string me = std::to_string(getpid()) + "\n";
  if (::ftruncate(lock_fd_, 0) != 0 || ::pwrite(lock_fd_, me.data(), me.size(), 0) < 0) {
    log_warn("cannot write the PID into " + path + ": " + std::strerror(errno));
  }
  return true;
}

bool Server::bind_listener(const ListenConfig& l, const std::string& key,
                           std::vector<std::vector<ListenerSocket>>* per_worker, std::string* error) {
  unsigned n = static_cast<unsigned>(per_worker->size());
  sockaddr_storage bound{};
  // The first socket is bound without SO_REUSEPORT so that a port held by anyone else (even
  // another dechunkd with SO_REUSEPORT) is reported as in use instead of silently shared.
  int probe = open_listener(l.host, l.port, false, error, &bound);
  if (probe < 0) return false;
  uint16_t port = sockaddr_port(reinterpret_cast<sockaddr*>(&bound));
  std::string addr = format_sockaddr(reinterpret_cast<sockaddr*>(&bound));
  if (n == 1) {
    (*per_worker)[0].push_back(ListenerSocket{probe, addr, key});
  } else {
    ::close(probe);
    for (unsigned w = 0; w < n; ++w) {
      int fd = open_listener(l.host, port, true, error);
      if (fd < 0) return false;
      (*per_worker)[w].push_back(ListenerSocket{fd, addr, key});
    }
  }
  log_info("listening on " + addr);
  return true;
}

namespace {
void close_all(std::vector<std::vector<ListenerSocket>>& sockets) {
  for (auto& v : sockets) {
    for (auto& s : v) {
      if (s.fd >= 0) ::close(s.fd);
      s.fd = -1;
    }
  }
}
}  // namespace

bool Server::bind_listeners(std::vector<std::vector<ListenerSocket>>* per_worker, std::string* error) {
  per_worker->assign(config_->workers, {});
  for (size_t i = 0; i < config_->listen.size(); ++i) {
    if (!bind_listener(config_->listen[i], listen_key(*config_, i), per_worker, error)) return false;
  }
  return true;
}

namespace {
// Every connection needs a descriptor (a proxied one two, a spilled body three): take the hard
// limit as the soft one, and say so when even that is below limits.max_connections.
void check_descriptor_limit(uint64_t max_connections) {
  rlimit nofile{};
  if (getrlimit(RLIMIT_NOFILE, &nofile) != 0) return;
  if (nofile.rlim_cur < nofile.rlim_max) {
    nofile.rlim_cur = nofile.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &nofile) != 0) getrlimit(RLIMIT_NOFILE, &nofile);
  }
  if (nofile.rlim_cur != RLIM_INFINITY && nofile.rlim_cur < max_connections + 64) {
    log_warn("RLIMIT_NOFILE is " + std::to_string(nofile.rlim_cur) + " descriptors, below limits.max_connections " +
             std::to_string(max_connections) + " (a proxied connection uses 2 or 3): connections past it wait in "
             "the listen backlog; raise LimitNOFILE= (systemd) or lower limits.max_connections");
  }
}
}  // namespace

int Server::run() {
  evthread_use_pthreads();
  signal(SIGPIPE, SIG_IGN);
  // A file size limit (ulimit -f, LimitFSIZE=) must fail the one write (EFBIG: the request gets
  // its 500, the queue its 503) rather than kill the process with every request in flight.
  signal(SIGXFSZ, SIG_IGN);
  Log::set_level(config_->log.level);
  check_descriptor_limit(config_->limits.max_connections);
  // Signals are caught from here on: a stop signal that arrives while we bind is handled once
  // the loop runs, instead of killing the process half-started.
  base_.reset(event_base_new());
  main_tasks_ = std::make_unique<TaskQueue>(base_.get());
  for (int sig : {SIGTERM, SIGINT, SIGHUP, SIGUSR1}) {
    signal_events_.emplace_back(evsignal_new(base_.get(), sig, on_signal, this));
    event_add(signal_events_.back().get(), nullptr);
  }
  std::string error;
  if (!lock_storage(&error)) {
    log_error(error);
    return 1;
  }
  if (!access_sink_.open(config_->log.access, &error)) {
    log_error(error);
    return 1;
  }
  std::vector<std::vector<ListenerSocket>> sockets;
  if (!bind_listeners(&sockets, &error)) {
    log_error(error);
    close_all(sockets);
    return 1;
  }
  if (!config_->admin.address.empty()) {
    admin_ = std::make_unique<AdminServer>(base_.get(), *this);
    if (!admin_->start(config_->admin.host, config_->admin.port, &error)) {
      log_error(error);
      close_all(sockets);
      return 1;
    }
  }
  worker_exit_.reset(event_new(base_.get(), -1, 0, on_worker_exit, this));

  auto runtime = Runtime::create(config_, &error);
  if (!runtime) {
    log_error(error);
    close_all(sockets);
    return 1;
  }
  queue_ = QueueService::create(runtime, shared_, &error);
  if (!queue_) {
    log_error(error);
    close_all(sockets);
    return 1;
  }
  shared_.queue = queue_.get();
  queue_->start();
  for (unsigned i = 0; i < config_->workers; ++i) {
    workers_.push_back(std::make_unique<Worker>(i, shared_, runtime, std::move(sockets[i]), &access_sink_));
  }
  running_ = config_->workers;
  for (auto& w : workers_) {
    Worker* wp = w.get();
    threads_.emplace_back([this, wp] {
      wp->run();
      running_.fetch_sub(1);
      event_active(worker_exit_.get(), EV_TIMEOUT, 0);
    });
  }
  log_info(std::string("dechunkd ") + "started with " + std::to_string(config_->workers) + " worker(s), " +
           std::to_string(config_->routes.size()) + " route(s)");
  sd_notify_message("READY=1\nSTATUS=accepting connections");
  event_base_loop(base_.get(), EVLOOP_NO_EXIT_ON_EMPTY);
  for (auto& t : threads_) t.join();
  // The workers are gone, so nothing submits any more: the queue commits the last requests,
  // waits for its in-flight deliveries (until the drain deadline) and stops.
  queue_->shutdown(stop_signals_ > 1);
  if (admin_) admin_->stop();
  threads_.clear();
  uint64_t cut = shared_.cut_requests.load();
  if (cut > 0) {
    log_warn("stopped; " + std::to_string(cut) + " in-flight request(s) were cut");
  } else {
    log_info("stopped");
  }
  return 0;
}

void Server::on_worker_exit(evutil_socket_t, short, void* arg) {
  auto* s = static_cast<Server*>(arg);
  if (s->running_.load() == 0) event_base_loopexit(s->base_.get(), nullptr);
}

void Server::on_signal(evutil_socket_t sig, short, void* arg) {
  auto* s = static_cast<Server*>(arg);
  if (sig == SIGHUP) {
    s->reload();
    return;
  }
  if (sig == SIGUSR1) {
    s->reopen_logs();
    return;
  }
  ++s->stop_signals_;
  if (s->stop_signals_ == 1) {
    s->draining_ = true;
    sd_notify_message("STOPPING=1");
    log_info(std::string("received ") + (sig == SIGINT ? "SIGINT" : "SIGTERM") + ": draining (up to " +
             format_duration(s->config_->timeouts.drain) + ")");
    for (auto& w : s->workers_) w->request_drain();
    s->queue_->begin_drain();
  } else {
    log_warn("second stop signal: stopping now");
    for (auto& w : s->workers_) w->request_stop();
    s->queue_->begin_drain();
  }
}

void Server::reopen_logs() {
  std::string error;
  if (!access_sink_.reopen(config_->log.access, &error)) {
    log_error("SIGUSR1: " + error + "; still writing to the previous access log");
  } else {
    log_info("SIGUSR1: access log reopened");
  }
}

void Server::reload() {
  sd_notify_message("RELOADING=1");
  reload_config();
  sd_notify_message("READY=1");
}

size_t Server::reload_now() { return reload_config(); }

std::string Server::not_ready_reason() {
  if (draining_) return "draining";
  if (::access(config_->storage.dir.c_str(), W_OK | X_OK) != 0) {
    return "storage.dir " + config_->storage.dir + " is not writable: " + std::strerror(errno);
  }
  // Writable but full is not writable either: the next spilled body or queued request fails.
  struct statvfs fs {};
  if (::statvfs(config_->storage.dir.c_str(), &fs) == 0) {
    const uint64_t free_bytes = static_cast<uint64_t>(fs.f_bavail) * fs.f_frsize;
    const uint64_t needed = std::max<uint64_t>(config_->limits.memory_buffer, 1 << 20);
    if (free_bytes < needed || (fs.f_files > 0 && fs.f_favail == 0)) {
      return "storage.dir " + config_->storage.dir + " is full (" + std::to_string(free_bytes) +
             " bytes free, at least " + std::to_string(needed) + " needed)";
    }
  }
  if (queue_) {
    std::string q = queue_->failure();
    if (!q.empty()) return q;
  }
  return "";
}

void Server::gather_stats(std::function<void(WorkerStats, ProcessStats)> done) {
  // Each worker (and the queue thread) copies its own stats on its own thread; the last one
  // hands the sum back to the main thread. Workers that have exited (drain) contribute nothing.
  struct Gather {
    std::mutex mu;
    WorkerStats total;
    ProcessStats process;
    size_t pending = 0;
    std::function<void(WorkerStats, ProcessStats)> done;
  };
  auto g = std::make_shared<Gather>();
  g->done = std::move(done);
  g->pending = workers_.size() + 1;
  g->process.connections_active = shared_.connections.load(std::memory_order_relaxed);
  g->process.reloads_success = reloads_success_;
  g->process.reloads_failure = reloads_failure_;
  if (draining_) {
    g->done(WorkerStats{}, g->process);
    return;
  }
  TaskQueue* main = main_tasks_.get();
  auto arrived = [g, main] {
    if (--g->pending == 0) {
      main->post([g] { g->done(std::move(g->total), std::move(g->process)); });
    }
  };
  for (auto& w : workers_) {
    Worker* wp = w.get();
    wp->post([g, wp, arrived] {
      WorkerStats copy = wp->stats();
      std::lock_guard<std::mutex> lock(g->mu);
      g->total.add(copy);
      arrived();
    });
  }
  queue_->stats([g, arrived](QueueStats qs, WorkerStats ws) {
    std::lock_guard<std::mutex> lock(g->mu);
    g->total.add(ws);
    g->process.queue = std::move(qs);
    arrived();
  });
}

bool Server::queue_admin(QueueAdminRequest req, std::function<void(QueueAdminReply)> done) {
  if (draining_) return false;
  TaskQueue* main = main_tasks_.get();
  queue_->admin(std::move(req), [main, done = std::move(done)](QueueAdminReply r) {
    main->post([done, r = std::move(r)]() mutable { done(std::move(r)); });
  });
  return true;
}

size_t Server::reload_config() {
  log_info("reloading " + config_->path);
  LoadResult loaded = load_config_file(config_->path);
  if (!loaded.errors.empty()) {
    for (const ConfigError& e : loaded.errors) log_error("reload: " + e.str());
    log_error("reload failed: " + std::to_string(loaded.errors.size()) +
              " configuration error(s); still running with the previous configuration");
    ++reloads_failure_;
    return loaded.errors.size();
  }
  // Settings that only a restart can change keep their running values (SPEC 2).
  auto next = std::make_shared<Config>(*loaded.config);
  if (next->workers != config_->workers) {
    log_warn("reload: workers changed from " + std::to_string(config_->workers) + " to " +
             std::to_string(next->workers) + "; this needs a restart (keeping " + std::to_string(config_->workers) + ")");
    next->workers = config_->workers;
    next->workers_auto = config_->workers_auto;
  }
  if (next->storage.dir != config_->storage.dir) {
    log_warn("reload: storage.dir changed; this needs a restart (keeping " + config_->storage.dir + ")");
    next->storage.dir = config_->storage.dir;
  }
  if (next->admin.address != config_->admin.address) {
    log_warn("reload: admin.address changed; this needs a restart (keeping the running one)");
    next->admin = config_->admin;
  }
  // TLS contexts (certificates re-read: renewed ones apply from now on).
  std::string rt_error;
  auto runtime = Runtime::create(next, &rt_error);
  if (!runtime) {
    log_error("reload: " + rt_error + "; still running with the previous configuration");
    ++reloads_failure_;
    return 1;
  }
  // Listeners: bind the added addresses first (a failure leaves everything as it was), then
  // hand them to the workers and close the removed ones. Open connections are not touched.
  std::vector<std::vector<ListenerSocket>> added(config_->workers);
  std::vector<std::string> removed;
  auto has_key = [](const Config& c, const std::string& key) {
    for (size_t i = 0; i < c.listen.size(); ++i) {
      if (listen_key(c, i) == key) return true;
    }
    return false;
  };
  for (size_t i = 0; i < next->listen.size(); ++i) {
    std::string key = listen_key(*next, i);
    if (has_key(*config_, key)) continue;
    std::string error;
    if (!bind_listener(next->listen[i], key, &added, &error)) {
      close_all(added);
      log_error("reload: " + error + "; still running with the previous configuration");
      ++reloads_failure_;
      return 1;
    }
  }
  for (size_t i = 0; i < config_->listen.size(); ++i) {
    std::string key = listen_key(*config_, i);
    if (!has_key(*next, key)) {
      removed.push_back(key);
      log_info("no longer listening on " + config_->listen[i].address);
    }
  }
  {
    // Reopened on every reload, so a reload after rotation also starts a fresh file.
    std::string error;
    if (!access_sink_.reopen(next->log.access, &error)) {
      log_error("reload: " + error + "; keeping the previous access log");
      next->log.access = config_->log.access;
    }
  }
  Log::set_level(next->log.level);
  config_ = next;
  for (size_t i = 0; i < workers_.size(); ++i) {
    Worker* wp = workers_[i].get();
    wp->post([wp, runtime, sockets = std::move(added[i]), removed]() mutable {
      wp->set_runtime(runtime);
      wp->add_listeners(std::move(sockets));
      wp->remove_listeners(removed);
    });
  }
  queue_->set_runtime(runtime);
  ++reloads_success_;
  log_info("configuration reloaded: " + std::to_string(config_->routes.size()) + " route(s)");
  return 0;
}

}  // namespace dechunkd
