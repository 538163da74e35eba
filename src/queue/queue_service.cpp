#include "queue/queue_service.hpp"

#include <openssl/evp.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>
#include <ctime>
#include <fcntl.h>
#include <map>
#include <mutex>
#include <set>
#include <unordered_map>

#include "config/config_detail.hpp"
#include "core/append.hpp"
#include "http/request_head.hpp"
#include "log/log.hpp"
#include "server/runtime.hpp"
#include "server/worker.hpp"
#include "upstream/upstream.hpp"

namespace dechunkd {

namespace {
constexpr int64_t kBatchSyncMs = 10;           // fsync: batch (SPEC 6)
constexpr int64_t kHousekeepingMs = 1000;      // compaction and clocks
constexpr int64_t kRetentionScanMs = 60'000;   // dead-letter retention
constexpr int kQueueFullRetryAfterS = 30;      // a full queue drains at the targets' pace
constexpr int kStorageFailedRetryAfterS = 60;
constexpr size_t kDefaultPageLimit = 100;
constexpr size_t kMaxPageLimit = 10'000;
// Bodies of attempts in flight are held in memory: past this sum no further attempt starts
// (one always may, so a larger body still goes), which bounds the queue thread's memory.
constexpr uint64_t kInFlightBodyBudget = 64ull << 20;

const char* fsync_name(FsyncPolicy p) {
  return p == FsyncPolicy::Always ? "always" : p == FsyncPolicy::Batch ? "batch" : "never";
}

std::string lane_key(const std::string& route, uint32_t index, const std::string& url) {
  std::string k = route;
  k += '\n';
  append_decimal(k, index);
  k += '\n';
  k += url;
  return k;
}

std::string base64(std::string_view in) {
  std::string out(4 * ((in.size() + 2) / 3) + 1, '\0');
  int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                          reinterpret_cast<const unsigned char*>(in.data()), static_cast<int>(in.size()));
  out.resize(n > 0 ? static_cast<size_t>(n) : 0);
  return out;
}

void json_str(std::string& out, std::string_view s) {
  out += '"';
  json_escape(out, s);
  out += '"';
}

void json_time(std::string& out, int64_t ms) {
  if (ms <= 0) {
    out += "null";
    return;
  }
  json_str(out, format_rfc3339_ms(ms));
}

// The URL without its query, as labels and the admin JSON show it (SPEC 8).
std::string redact(const std::string& url_text) {
  Url u;
  if (!config_detail::parse_url(url_text, u)) return u.redacted();
  size_t q = url_text.find('?');
  return q == std::string::npos ? url_text : url_text.substr(0, q);
}

std::string query_param(std::string_view query, std::string_view name) {
  while (!query.empty()) {
    size_t amp = query.find('&');
    std::string_view part = query.substr(0, amp);
    size_t eq = part.find('=');
    if (part.substr(0, eq) == name) return std::string(eq == std::string_view::npos ? "" : part.substr(eq + 1));
    if (amp == std::string_view::npos) break;
    query.remove_prefix(amp + 1);
  }
  return "";
}

bool has_param(std::string_view query, std::string_view name) {
  while (!query.empty()) {
    size_t amp = query.find('&');
    std::string_view part = query.substr(0, amp);
    if (part.substr(0, part.find('=')) == name) return true;
    if (amp == std::string_view::npos) break;
    query.remove_prefix(amp + 1);
  }
  return false;
}

// "<message id>.<index>" -> parts; false when malformed.
bool split_delivery_id(std::string_view id, std::string* mid, uint32_t* index) {
  size_t dot = id.rfind('.');
  if (dot == std::string_view::npos || dot == 0 || dot + 1 == id.size() || id.size() - dot > 7) return false;
  uint32_t v = 0;
  for (char c : id.substr(dot + 1)) {
    if (c < '0' || c > '9') return false;
    v = v * 10 + static_cast<uint32_t>(c - '0');
  }
  mid->assign(id.substr(0, dot));
  *index = v;
  return true;
}

uint64_t splitmix(uint64_t& s) {
  uint64_t z = (s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
}  // namespace

QueueSubmission::QueueSubmission(QueueSubmission&& o) noexcept
    : msg(std::move(o.msg)), spill_fd(o.spill_fd), spill_len(o.spill_len), body(std::move(o.body)),
      accept_status(o.accept_status), dedupe_window_ms(o.dedupe_window_ms) {
  o.spill_fd = -1;
}

QueueSubmission::~QueueSubmission() {
  if (spill_fd >= 0) ::close(spill_fd);
}

int64_t parse_retry_after(std::string_view v, int64_t now_ms) {
  while (!v.empty() && (v.front() == ' ' || v.front() == '\t')) v.remove_prefix(1);
  while (!v.empty() && (v.back() == ' ' || v.back() == '\t')) v.remove_suffix(1);
  if (v.empty()) return -1;
  if (std::all_of(v.begin(), v.end(), [](char c) { return c >= '0' && c <= '9'; })) {
    if (v.size() > 9) return 999'999'999LL * 1000;  // absurdly far: the max_age clock decides
    int64_t s = 0;
    for (char c : v) s = s * 10 + (c - '0');
    return s * 1000;
  }
  // HTTP-date: IMF-fixdate "Sun, 06 Nov 1994 08:49:37 GMT" (the only form senders must use).
  std::string text(v);
  std::tm tm{};
  const char* end = strptime(text.c_str(), "%a, %d %b %Y %H:%M:%S GMT", &tm);
  if (!end || *end != '\0') return -1;
  int64_t at = static_cast<int64_t>(timegm(&tm)) * 1000;
  return std::max<int64_t>(0, at - now_ms);
}

int64_t backoff_delay_ms(const RetryConfig& retry, uint32_t failed_attempts, uint64_t rnd) {
  int64_t lo = retry.initial_backoff.count();
  int64_t cap = retry.max_backoff.count();
  int64_t hi = lo;
  for (uint32_t i = 1; i < failed_attempts && hi < cap; ++i) hi = hi > cap / 2 ? cap : hi * 2;
  hi = std::min(std::max(hi, lo), std::max(cap, lo));
  if (hi <= lo) return lo;
  return lo + static_cast<int64_t>(rnd % static_cast<uint64_t>(hi - lo + 1));
}

// ---------------------------------------------------------------------------------------------

namespace {
// Deliveries of one route's target: the unit of max_in_flight and of FIFO order.
struct Lane {
  std::string route;           // route name at acceptance
  uint32_t index = 0;          // target index in that route
  std::string url;             // full target URL at acceptance (query included: never logged)
  std::string label;           // without query
  std::map<std::string, Delivery> waiting;          // by message id = acceptance order
  std::set<std::pair<int64_t, std::string>> due;    // (next attempt, message id) of waiting
  std::map<std::string, int64_t> in_flight;         // message id -> accepted_ms
  std::map<std::string, int64_t> accepted;          // waiting message id -> accepted_ms
  uint64_t dead = 0;
  uint64_t delivered = 0, retried = 0, dead_lettered = 0;
  // Resolved against the running config (refreshed on reload).
  std::shared_ptr<const Runtime> runtime;
  const TargetConfig* target = nullptr;
  RetryConfig retry;
  uint64_t max_in_flight = 8;
  std::string resolve_error;   // why target is null

  void add_waiting(const Delivery& d, int64_t accepted_ms) {
    due.emplace(d.next_attempt_ms, d.message_id);
    accepted[d.message_id] = accepted_ms;
    waiting[d.message_id] = d;
  }
  Delivery take_waiting(std::map<std::string, Delivery>::iterator it) {
    Delivery d = std::move(it->second);
    due.erase({d.next_attempt_ms, d.message_id});
    accepted.erase(d.message_id);
    waiting.erase(it);
    return d;
  }
};
}  // namespace

class DeliveryAttempt;

class QueueService::Impl {
 public:
  Impl(std::shared_ptr<const Runtime> rt, SharedState& shared) : runtime_(std::move(rt)), shared_(shared) {
    worker_ = std::make_unique<Worker>(UINT_MAX, shared_, runtime_, std::vector<ListenerSocket>{}, nullptr);
    event_base* b = worker_->base();
    commit_ev_.reset(event_new(b, -1, 0, on_commit, this));
    sync_timer_.reset(event_new(b, -1, 0, on_sync_timer, this));
    pump_ev_.reset(event_new(b, -1, 0, on_pump, this));
    housekeeping_.reset(event_new(b, -1, EV_PERSIST, on_housekeeping, this));
    drain_timer_.reset(event_new(b, -1, 0, on_drain_timer, this));
    rng_ = static_cast<uint64_t>(wall_clock_ms()) ^ (static_cast<uint64_t>(getpid()) << 40);
  }
  ~Impl();

  bool open_store(std::string* error);
  void run() { worker_->run(); }
  Worker& worker() { return *worker_; }

  // Queue-thread side of the entry points.
  void submit(QueueSubmission sub, std::function<void(QueueAck)> done);
  void set_runtime(std::shared_ptr<const Runtime> rt);
  QueueAdminReply admin(const QueueAdminRequest& req);
  QueueStats stats();
  void begin_drain();
  void shutdown(bool now);

  void attempt_done(DeliveryAttempt* a, int status, const std::string& error, int64_t retry_after_ms);
  void body_read(DeliveryAttempt* a);  // a recorded attempt's call is over
  // Why the queue cannot accept (readyz), empty while healthy. Any thread.
  std::string failure() const {
    std::lock_guard<std::mutex> lock(health_mu_);
    return health_;
  }
  void record_upstream(const Lane& lane, int64_t ms) {
    WorkerStats& ws = worker_->stats();
    ws.upstream(ws.route(lane.route, "queue"), lane.label).observe(static_cast<double>(ms) / 1000.0);
  }

 private:
  struct Awaiting {
    QueueAck ack;
    std::function<void(QueueAck)> done;
    std::string new_message;   // appended by this submission: schedule after the sync
  };
  struct Incoming {
    QueueSubmission sub;
    std::function<void(QueueAck)> done;
  };

  static void on_commit(evutil_socket_t, short, void* arg) { static_cast<Impl*>(arg)->commit(); }
  static void on_sync_timer(evutil_socket_t, short, void* arg) { static_cast<Impl*>(arg)->sync_and_release(); }
  static void on_pump(evutil_socket_t, short, void* arg) { static_cast<Impl*>(arg)->pump(); }
  static void on_housekeeping(evutil_socket_t, short, void* arg) { static_cast<Impl*>(arg)->housekeeping(); }
  static void on_drain_timer(evutil_socket_t, short, void* arg) { static_cast<Impl*>(arg)->drain_deadline(); }

  void schedule_commit() { event_active(commit_ev_.get(), EV_TIMEOUT, 0); }
  void schedule_pump() { event_active(pump_ev_.get(), EV_TIMEOUT, 0); }
  void commit();
  void maybe_sync();
  void sync_and_release();
  void refuse_storage(std::vector<Awaiting>& list, const std::string& why);
  void pump();
  void start_attempt(Lane& lane, std::map<std::string, Delivery>::iterator it, int64_t now);
  void finish_delivery(Lane& lane, Delivery& d, const char* result, int status,
                       const std::string& error, const std::string& next);
  void dead_letter(Lane& lane, Delivery& d, int64_t now, const std::string& why);
  bool write_state(const Delivery& d);
  void retire(std::unique_ptr<DeliveryAttempt> a);
  void cut_reading();
  bool body_fits(const std::string& message_id) const {
    const QueuedMessage* m = store_->message(message_id);
    return (attempts_.empty() && reading_.empty()) || !m ||
           body_bytes_in_flight_ + m->body_size <= kInFlightBodyBudget;
  }
  void housekeeping();
  void expire_dead_letters(int64_t now);
  void drain_deadline();
  void maybe_finish();
  void finish();

  Lane& lane_for(const std::string& route, uint32_t index, const std::string& url);
  Lane* find_lane(const QueuedMessage& m, uint32_t index);
  void resolve(Lane& lane);
  const RouteConfig* queue_route(const std::string& name) const;
  bool paused(const std::string& route) const { return paused_.count(route) > 0; }
  bool save_paused(std::string* error);
  void load_paused();

  QueueAdminReply list_queue();
  QueueAdminReply list_dead_letters(const QueueAdminRequest& req);
  QueueAdminReply show_dead_letter(const std::string& id);
  QueueAdminReply replay(const std::string& id);
  QueueAdminReply replay_all(const QueueAdminRequest& req);
  QueueAdminReply remove_dead_letter(const std::string& id);
  QueueAdminReply pause(const std::string& route, bool on);
  void dead_letter_json(std::string& out, const Delivery& d, const QueuedMessage& m);
  // The dead letter with this delivery id and its message, or nullptr.
  const QueuedMessage* find_dead_letter(const std::string& id, std::optional<Delivery>* d) const {
    if (!store_) return nullptr;
    *d = store_->delivery(id);
    if (!*d || (*d)->state != DeliveryState::DeadLettered) return nullptr;
    return store_->message((*d)->message_id);
  }
  bool sync_now_for_admin(QueueAdminReply* err);

  std::shared_ptr<const Runtime> runtime_;
  SharedState& shared_;
  std::unique_ptr<Worker> worker_;
  std::unique_ptr<QueueStore> store_;
  std::string store_error_;    // why store_ is null or failed (for 503s)
  mutable std::mutex health_mu_;
  std::string health_;         // failure() for other threads
  void set_health(const std::string& why) {
    std::lock_guard<std::mutex> lock(health_mu_);
    health_ = why;
  }
  uint64_t corrupt_records_ = 0;
  EventPtr commit_ev_, sync_timer_, pump_ev_, housekeeping_, drain_timer_;
  std::vector<Incoming> incoming_;
  std::vector<Awaiting> awaiting_;   // written, waiting for the sync that makes them durable
  bool dirty_ = false;               // written since the last sync
  int64_t last_sync_ms_ = 0;
  std::map<std::string, std::unique_ptr<Lane>> lanes_;
  std::unordered_map<DeliveryAttempt*, std::unique_ptr<DeliveryAttempt>> attempts_;
  // Recorded at their response head, still reading the rest of the body (never while draining_).
  std::unordered_map<DeliveryAttempt*, std::unique_ptr<DeliveryAttempt>> reading_;
  std::set<std::string> paused_;
  std::map<std::string, std::shared_ptr<const Runtime>> orphan_runtimes_;  // by URL
  int64_t last_retention_scan_ = 0;
  uint64_t body_bytes_in_flight_ = 0;  // bodies held by attempts_ and reading_ (kInFlightBodyBudget)
  bool draining_ = false;
  bool stopping_ = false;
  bool finished_ = false;
  uint64_t rng_;
};

// One attempt of one delivery: the ExchangeSink of a ProxyCall. The final response head decides
// the outcome (its status, and Retry-After on 429/503) and the attempt is recorded right then, so
// its lane may start the next delivery. The rest of the body is then read and dropped, so the
// keep-alive connection can be pooled, for at most the target's response timeout counted from
// the head (upstream_idle still bounds each gap); past that the call is cancelled. A body that
// breaks off after the head does not change the recorded outcome.
class DeliveryAttempt : public ExchangeSink, public Deferred {
 public:
  enum class State {
    Waiting,  // the call runs; no final response head yet (1xx heads are skipped by the codec)
    Reading,  // recorded at the head; the call reads and drops the rest of the body
    Over,     // recorded, and the call ended or was cancelled
  };

  DeliveryAttempt(QueueService::Impl& svc, Lane& lane, Delivery d, std::string body)
      : svc_(svc), lane_(lane), d_(std::move(d)), body_(std::move(body)) {}

  void start(Worker& w, ExchangeRequest&& req) {
    const std::string* body = &body_;
    req.add_body = [body](OutQueue& q) {
      if (!body->empty()) q.add_copy(body->data(), body->size());
    };
    body_timer_.emplace(w.base(), on_body_timeout, this);
    call_ = std::make_unique<ProxyCall>(w, *this);
    call_->prepare() = std::move(req);
    call_->start();
  }
  // Also from inside the call's callbacks: ProxyCall checks for it after each call into us.
  void cancel() {
    state_ = State::Over;
    if (body_timer_) body_timer_->clear();
    if (call_) call_->cancel();
  }

  void relay_head(const ResponseCodec& resp) override {
    if (state_ != State::Waiting) return;
    status_ = resp.status();
    if (status_ == 429 || status_ == 503) {
      for (const auto& [name, value] : resp.headers()) {
        if (iequals(name, "retry-after")) retry_after_ms_ = parse_retry_after(value, wall_clock_ms());
      }
    }
    state_ = State::Reading;
    body_timer_->set(call_->response_timeout());
    svc_.attempt_done(this, status_, "", retry_after_ms_);
  }
  void relay_body(const Span&) override {}
  void flush_relayed() override {}
  void relay_end() override { body_over(); }
  void upstream_failed(ErrorKind, const std::string& reason) override {
    if (state_ == State::Reading) {
      log_debug("queue: route=" + lane_.route + " target=" + lane_.label + " delivery_id=" + d_.delivery_id() +
                ": the rest of the response body was not read (" + reason + "); the outcome stands");
      body_over();
      return;
    }
    if (state_ != State::Waiting) return;
    state_ = State::Over;
    svc_.attempt_done(this, 0, reason, -1);
  }
  bool client_backlogged() const override { return false; }
  void set_target_status(int status, int64_t ms) override {
    status_ = status;
    svc_.record_upstream(lane_, ms);
  }

  State state() const { return state_; }
  Lane& lane() { return lane_; }
  Delivery& delivery() { return d_; }
  uint64_t body_size() const { return body_.size(); }

 private:
  static void on_body_timeout(void* arg) {
    auto* self = static_cast<DeliveryAttempt*>(arg);
    if (self->state_ != State::Reading) return;
    log_debug("queue: route=" + self->lane_.route + " target=" + self->lane_.label + " delivery_id=" +
              self->d_.delivery_id() + ": the rest of the response body took longer than the response timeout; "
              "connection closed");
    self->call_->cancel();
    self->body_over();
  }
  void body_over() {
    if (state_ != State::Reading) return;
    state_ = State::Over;
    body_timer_->clear();
    svc_.body_read(this);
  }
  QueueService::Impl& svc_;
  Lane& lane_;
  Delivery d_;
  std::string body_;
  std::optional<Deadline> body_timer_;  // armed at the head: the response timeout for the rest
  std::unique_ptr<ProxyCall> call_;     // destroyed before body_ and body_timer_
  State state_ = State::Waiting;
  int status_ = 0;
  int64_t retry_after_ms_ = -1;
};

QueueService::Impl::~Impl() {
  for (auto& [p, a] : attempts_) a->cancel();
  for (auto& [p, a] : reading_) a->cancel();
  attempts_.clear();
  reading_.clear();
  lanes_.clear();
}

// ---------------------------------------------------------------------------------------------
// Opening, lanes and config

bool QueueService::Impl::open_store(std::string* error) {
  const Config& c = *runtime_->config;
  StoreOptions opts;
  opts.dir = c.storage.dir + "/queue";
  opts.fsync = c.storage.fsync;
  opts.max_bytes = c.storage.max_queue_size;
  int64_t window = 0;
  for (const RouteConfig& r : c.routes) {
    if (r.dedupe) window = std::max<int64_t>(window, r.dedupe->window.count());
  }
  opts.dedupe_retention_ms = window;
  RecoveryReport report;
  store_ = QueueStore::open(opts, &report, error);
  if (!store_) {
    *error = "queue: cannot open " + opts.dir + ": " + *error;
    return false;
  }
  if (report.truncated_bytes > 0) {
    log_warn("queue recovery: truncated " + std::to_string(report.truncated_bytes) +
             " byte(s) of a torn or garbage tail at the end of the newest segment (never acknowledged)");
  }
  if (report.corrupt_records > 0) {
    corrupt_records_ = report.corrupt_records;
    std::string ids;
    for (const std::string& id : report.corrupt_message_ids) ids += (ids.empty() ? "" : ", ") + id;
    log_error("queue recovery: " + std::to_string(report.corrupt_records) +
              " damaged record(s) skipped (checksum mismatch)" +
              (ids.empty() ? std::string("; no message id was readable") : "; message id(s): " + ids) +
              ". Check the disk; the rest of the queue is intact");
  }
  load_paused();
  int64_t now = wall_clock_ms();
  uint64_t pending = 0, dead = 0;
  for (const Delivery& d : store_->deliveries(DeliveryState::Pending)) {
    const QueuedMessage* m = store_->message(d.message_id);
    if (!m || d.target_index >= m->targets.size()) continue;
    lane_for(m->route, d.target_index, m->targets[d.target_index]).add_waiting(d, m->accepted_ms);
    ++pending;
  }
  for (const Delivery& d : store_->deliveries(DeliveryState::DeadLettered)) {
    const QueuedMessage* m = store_->message(d.message_id);
    if (!m || d.target_index >= m->targets.size()) continue;
    ++lane_for(m->route, d.target_index, m->targets[d.target_index]).dead;
    ++dead;
  }
  last_sync_ms_ = now;
  log_info("queue: " + opts.dir + ": " + std::to_string(report.segments) + " segment(s), " +
           std::to_string(pending) + " pending deliver" + (pending == 1 ? "y" : "ies") + ", " + std::to_string(dead) +
           " dead letter(s), " + std::to_string(store_->bytes()) + " bytes; fsync " + fsync_name(opts.fsync));
  arm_timer(housekeeping_.get(), std::chrono::milliseconds(kHousekeepingMs));
  schedule_pump();
  return true;
}

const RouteConfig* QueueService::Impl::queue_route(const std::string& name) const {
  for (const RouteConfig& r : runtime_->config->routes) {
    if (r.name == name && r.mode == RouteMode::Queue) return &r;
  }
  return nullptr;
}

Lane& QueueService::Impl::lane_for(const std::string& route, uint32_t index, const std::string& url) {
  auto& slot = lanes_[lane_key(route, index, url)];
  if (!slot) {
    slot = std::make_unique<Lane>();
    slot->route = route;
    slot->index = index;
    slot->url = url;
    slot->label = redact(url);
    resolve(*slot);
  }
  return *slot;
}

Lane* QueueService::Impl::find_lane(const QueuedMessage& m, uint32_t index) {
  if (index >= m.targets.size()) return nullptr;
  auto it = lanes_.find(lane_key(m.route, index, m.targets[index]));
  return it == lanes_.end() ? nullptr : it->second.get();
}

// A lane delivers with the running config's settings for its target: the route's own target
// when the route still has it, else any route's target with the same URL, else a target with
// default settings for that URL (SPEC 6: pending deliveries keep their target after a reload).
void QueueService::Impl::resolve(Lane& lane) {
  lane.target = nullptr;
  lane.resolve_error.clear();
  lane.runtime = runtime_;
  lane.retry = RetryConfig{};
  lane.max_in_flight = TargetConfig{}.max_in_flight;
  if (const RouteConfig* r = queue_route(lane.route)) {
    lane.retry = r->retry;
    if (lane.index < r->targets.size() && r->targets[lane.index].url.text == lane.url) {
      lane.target = &r->targets[lane.index];
    }
  }
  if (!lane.target) {
    for (const RouteConfig& r : runtime_->config->routes) {
      for (const TargetConfig& t : r.targets) {
        if (t.url.text == lane.url && !lane.target) lane.target = &t;
      }
    }
  }
  if (lane.target) {
    lane.max_in_flight = std::max<uint64_t>(1, lane.target->max_in_flight);
    return;
  }
  auto& orphan = orphan_runtimes_[lane.url];
  if (!orphan) {
    // Only the target matters: no listeners (their certificates are not read again).
    auto cfg = std::make_shared<Config>(*runtime_->config);
    cfg->listen.clear();
    RouteConfig r;
    r.name = lane.route;
    r.path = "/";
    r.mode = RouteMode::Queue;
    TargetConfig t;
    if (auto err = config_detail::parse_url(lane.url, t.url)) {
      lane.resolve_error = "the stored target URL cannot be used: " + *err;
      return;
    }
    r.targets.push_back(std::move(t));
    cfg->routes.assign(1, std::move(r));
    std::string error;
    orphan = Runtime::create(cfg, &error);
    if (!orphan) {
      lane.resolve_error = error;
      return;
    }
    // Said once per URL, when its first lane is made (before its deliveries are counted in): the
    // lane may hold pending deliveries, dead letters, or both.
    log_info("queue: route " + lane.route + " target " + lane.label +
             " is no longer configured; its stored deliveries (pending ones, and dead letters when replayed) "
             "go on with default target settings");
  }
  lane.runtime = orphan;
  lane.target = &orphan->config->routes.front().targets.front();
}

void QueueService::Impl::set_runtime(std::shared_ptr<const Runtime> rt) {
  const StorageConfig was = runtime_->config->storage;
  runtime_ = std::move(rt);
  worker_->set_runtime(runtime_);
  if (!store_) {
    bool wanted = false;
    for (const RouteConfig& r : runtime_->config->routes) wanted |= r.mode == RouteMode::Queue;
    std::string error;
    if (wanted && !open_store(&error)) {
      store_error_ = error;
      set_health(error);
      log_error(error + "; queue routes answer 503 until this is fixed and dechunkd restarted");
    }
  }
  orphan_runtimes_.clear();
  for (auto& [k, lane] : lanes_) resolve(*lane);
  if (store_) {
    int64_t window = 0;
    for (const RouteConfig& r : runtime_->config->routes) {
      if (r.dedupe) window = std::max<int64_t>(window, r.dedupe->window.count());
    }
    store_->set_dedupe_retention(window);
    // A reload applies storage.fsync and storage.max_queue_size (SPEC 2: only storage.dir needs a
    // restart). Submissions waiting for a batch fsync are answered by the pending sync either way.
    const StorageConfig& now = runtime_->config->storage;
    store_->set_limits(now.fsync, now.max_queue_size);
    if (now.fsync != was.fsync || now.max_queue_size != was.max_queue_size) {
      log_info(std::string("queue: reload applied storage.fsync ") + fsync_name(now.fsync) + ", storage.max_queue_size " +
               std::to_string(now.max_queue_size) + " bytes");
    }
  }
  schedule_pump();
}

// Paused routes live in storage.dir/queue/paused, one name a line, replaced atomically.
void QueueService::Impl::load_paused() {
  std::string path = runtime_->config->storage.dir + "/queue/paused";
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return;
  std::string text;
  char buf[4096];
  ssize_t n;
  while ((n = ::read(fd, buf, sizeof buf)) > 0) text.append(buf, static_cast<size_t>(n));
  ::close(fd);
  size_t pos = 0;
  while (pos < text.size()) {
    size_t nl = text.find('\n', pos);
    if (nl == std::string::npos) nl = text.size();
    if (nl > pos) paused_.insert(text.substr(pos, nl - pos));
    pos = nl + 1;
  }
  for (const std::string& r : paused_) log_info("queue: route " + r + " is paused (POST /routes/" + r + "/resume)");
}

bool QueueService::Impl::save_paused(std::string* error) {
  std::string dir = runtime_->config->storage.dir + "/queue";
  std::string path = dir + "/paused", tmp = path + ".tmp";
  std::string text;
  for (const std::string& r : paused_) text += r + "\n";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
  if (fd < 0) {
    *error = "cannot write " + tmp + ": " + std::strerror(errno);
    return false;
  }
  bool ok = ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size()) && ::fsync(fd) == 0;
  int saved = errno;
  ::close(fd);
  if (!ok || ::rename(tmp.c_str(), path.c_str()) != 0) {
    *error = "cannot write " + path + ": " + std::strerror(ok ? errno : saved);
    return false;
  }
  int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
  return true;
}

// ---------------------------------------------------------------------------------------------
// Accepting: group commit

void QueueService::Impl::submit(QueueSubmission sub, std::function<void(QueueAck)> done) {
  incoming_.push_back(Incoming{std::move(sub), std::move(done)});
  schedule_commit();
}

void QueueService::Impl::commit() {
  if (incoming_.empty()) {
    maybe_sync();
    return;
  }
  std::vector<Incoming> batch;
  batch.swap(incoming_);
  int64_t now = wall_clock_ms();
  for (Incoming& in : batch) {
    QueueAck ack;
    QueuedMessage& m = in.sub.msg;
    std::string why;
    if (!store_) {
      why = store_error_.empty() ? "the queue store is not open" : store_error_;
    } else if (!store_->failure().empty()) {
      why = "the queue store failed: " + store_->failure();
    }
    if (!why.empty()) {
      in.done(QueueAck{503, "", why + "; restart dechunkd once storage.dir is healthy", kStorageFailedRetryAfterS});
      continue;
    }
    if (!m.dedupe_key.empty()) {
      if (auto id = store_->dedupe_lookup(m.route, m.dedupe_key, now - in.sub.dedupe_window_ms)) {
        // A repeat: the same answer and id once the original is durable (it may be in this batch).
        awaiting_.push_back(Awaiting{QueueAck{in.sub.accept_status, *id, "", 0}, std::move(in.done), ""});
        continue;
      }
    }
    m.id = new_message_id(now);
    m.accepted_ms = now;
    std::vector<std::pair<const char*, size_t>> body;
    // A spilled body is mapped, not read: its pages are the temp file's page cache.
    struct Mapping {
      void* p = MAP_FAILED;
      size_t n = 0;
      ~Mapping() {
        if (p != MAP_FAILED) ::munmap(p, n);
      }
    } spilled;
    if (in.sub.spill_fd >= 0 && in.sub.spill_len > 0) {
      spilled.n = static_cast<size_t>(in.sub.spill_len);
      spilled.p = ::mmap(nullptr, spilled.n, PROT_READ, MAP_SHARED, in.sub.spill_fd, 0);
      if (spilled.p == MAP_FAILED) {
        std::string why = std::string("mapping the spilled body failed: ") + std::strerror(errno);
        log_error("queue: route " + m.route + ": " + why);
        in.done(QueueAck{503, "", why, kStorageFailedRetryAfterS});
        continue;
      }
      body.emplace_back(static_cast<const char*>(spilled.p), spilled.n);
    }
    if (!in.sub.body.empty()) body.emplace_back(in.sub.body.data(), in.sub.body.size());
    std::string error;
    if (!store_->append_message(m, body, now, &error)) {
      if (error == "queue full") {
        in.done(QueueAck{503, "", "the queue is full (storage.max_queue_size); deliveries must catch up first",
                         kQueueFullRetryAfterS});
      } else {
        log_error("queue: route " + m.route + ": writing an accepted request failed: " + error);
        in.done(QueueAck{503, "", "the queue store failed: " + error, kStorageFailedRetryAfterS});
      }
      continue;
    }
    dirty_ = true;
    awaiting_.push_back(Awaiting{QueueAck{in.sub.accept_status, m.id, "", 0}, std::move(in.done), m.id});
  }
  maybe_sync();
}

void QueueService::Impl::maybe_sync() {
  FsyncPolicy policy = runtime_->config->storage.fsync;
  if (!store_) return;
  if (policy == FsyncPolicy::Batch && dirty_) {
    int64_t wait = last_sync_ms_ + kBatchSyncMs - wall_clock_ms();
    if (wait > 0) {
      if (!event_pending(sync_timer_.get(), EV_TIMEOUT, nullptr)) {
        arm_timer(sync_timer_.get(), std::chrono::milliseconds(wait));
      }
      return;
    }
  }
  sync_and_release();
}

// Makes every write so far durable (one fdatasync for the whole batch: group commit), then
// answers the submissions it covered and schedules their deliveries.
void QueueService::Impl::sync_and_release() {
  if (!store_) return;
  if (dirty_) {
    std::string error;
    bool ok = store_->sync(&error);
    last_sync_ms_ = wall_clock_ms();
    dirty_ = false;
    if (!ok) {
      log_error("queue: fsync of " + runtime_->config->storage.dir + "/queue failed: " + error +
                "; accepted requests of this batch are refused with 503 and the queue stops accepting "
                "until dechunkd is restarted");
      refuse_storage(awaiting_, "the queue store failed: " + error);
      set_health("the queue store failed: " + error);
      return;
    }
  }
  std::vector<Awaiting> list;
  list.swap(awaiting_);
  for (Awaiting& a : list) {
    if (!a.new_message.empty()) {
      const QueuedMessage* m = store_->message(a.new_message);
      for (uint32_t i = 0; m && i < m->targets.size(); ++i) {
        if (auto d = store_->delivery(a.new_message + "." + std::to_string(i))) {
          lane_for(m->route, i, m->targets[i]).add_waiting(*d, m->accepted_ms);
        }
      }
    }
    a.done(std::move(a.ack));
  }
  if (!list.empty()) schedule_pump();
  maybe_finish();
}

void QueueService::Impl::refuse_storage(std::vector<Awaiting>& list, const std::string& why) {
  std::vector<Awaiting> l;
  l.swap(list);
  for (Awaiting& a : l) a.done(QueueAck{503, "", why, kStorageFailedRetryAfterS});
}

bool QueueService::Impl::write_state(const Delivery& d) {
  std::string error;
  if (!store_->update_delivery(d, &error)) {
    log_error("queue: recording delivery " + d.delivery_id() + " failed: " + error +
              " (it may be attempted again after a restart)");
    return false;
  }
  dirty_ = true;
  schedule_commit();
  return true;
}

// ---------------------------------------------------------------------------------------------
// Delivering

void QueueService::Impl::pump() {
  if (draining_ || !store_) return;
  int64_t now = wall_clock_ms();
  int64_t wake = INT64_MAX;
  for (auto& [key, lp] : lanes_) {
    Lane& lane = *lp;
    if (paused(lane.route) || lane.waiting.empty()) continue;
    if (lane.max_in_flight <= 1) {
      // FIFO: only the oldest delivery may go, and only when nothing is in flight. A head that
      // is dead-lettered without an attempt (max_age) lets the next one go at once.
      while (lane.in_flight.empty() && !lane.waiting.empty()) {
        auto it = lane.waiting.begin();
        if (it->second.next_attempt_ms > now) {
          wake = std::min(wake, it->second.next_attempt_ms);
          break;
        }
        if (!body_fits(it->first)) break;  // an attempt's end pumps again
        start_attempt(lane, it, now);
      }
      continue;
    }
    while (lane.in_flight.size() < lane.max_in_flight && !lane.due.empty()) {
      auto [at, id] = *lane.due.begin();
      if (at > now) {
        wake = std::min(wake, at);
        break;
      }
      auto it = lane.waiting.find(id);
      if (it == lane.waiting.end()) {  // never expected: drop a stale schedule entry
        lane.due.erase(lane.due.begin());
        continue;
      }
      if (!body_fits(id)) break;  // an attempt's end pumps again
      start_attempt(lane, it, now);
    }
  }
  if (wake != INT64_MAX) arm_timer(pump_ev_.get(), std::chrono::milliseconds(std::max<int64_t>(1, wake - now)));
}

void QueueService::Impl::start_attempt(Lane& lane, std::map<std::string, Delivery>::iterator it, int64_t now) {
  int64_t accepted_ms = lane.accepted[it->first];
  Delivery d = lane.take_waiting(it);
  if (now >= d.age_base_ms + lane.retry.max_age.count()) {
    dead_letter(lane, d, now, "max_age (" + format_duration(lane.retry.max_age) + ") passed before the next attempt" +
                                  (d.last_error.empty() ? "" : "; last error: " + d.last_error));
    return;
  }
  const QueuedMessage* m = store_->message(d.message_id);
  std::string body, error;
  if (!m || d.target_index >= m->target_heads.size()) {
    dead_letter(lane, d, now, "the stored message is damaged (no request head)");
    return;
  }
  if (!store_->read_body(d.message_id, &body, &error)) {
    log_error("queue: delivery " + d.delivery_id() + ": reading the stored body failed: " + error);
    dead_letter(lane, d, now, "the stored body cannot be read: " + error);
    return;
  }
  if (!lane.target) {
    // Not deliverable with this config: count it as a failed attempt and retry later.
    ++d.attempts;
    d.last_attempt_ms = now;
    if (!d.first_attempt_ms) d.first_attempt_ms = now;
    d.last_status = 0;
    d.last_error = lane.resolve_error;
    lane.in_flight.emplace(d.message_id, accepted_ms);
    auto a = std::make_unique<DeliveryAttempt>(*this, lane, std::move(d), std::string());
    DeliveryAttempt* raw = a.get();
    attempts_.emplace(raw, std::move(a));
    attempt_done(raw, 0, lane.resolve_error, -1);
    return;
  }
  ++d.attempts;
  if (!d.first_attempt_ms) d.first_attempt_ms = now;
  d.last_attempt_ms = now;
  // The stored head ends with its last field line; the delivery fields go before a final
  // Content-Length, which stays last as on every outbound request (SPEC 4).
  std::string head = m->target_heads[d.target_index];
  std::string fields = "X-Dechunkd-Message-Id: ";
  fields += d.message_id;
  fields += "\r\nX-Dechunkd-Delivery-Id: ";
  fields += d.delivery_id();
  fields += "\r\nX-Dechunkd-Attempt: ";
  append_decimal(fields, d.attempts);
  fields += "\r\n";
  const size_t cl = head.rfind("\r\nContent-Length: ");
  const bool cl_last = cl != std::string::npos && head.find("\r\n", cl + 2) == head.size() - 2;
  head.insert(cl_last ? cl + 2 : head.size(), fields);
  head += "\r\n";
  ExchangeRequest req;
  req.runtime = lane.runtime;
  req.target = lane.target;
  req.route_name = lane.route;
  req.request_id = d.delivery_id();
  req.head_request = m->method == "HEAD";
  req.head = std::move(head);
  req.log_failures = false;  // the attempt's own log line says it
  lane.in_flight.emplace(d.message_id, accepted_ms);
  body_bytes_in_flight_ += body.size();
  auto a = std::make_unique<DeliveryAttempt>(*this, lane, std::move(d), std::move(body));
  DeliveryAttempt* raw = a.get();
  attempts_.emplace(raw, std::move(a));
  raw->start(*worker_, std::move(req));
}

void QueueService::Impl::attempt_done(DeliveryAttempt* a, int status, const std::string& error,
                                      int64_t retry_after_ms) {
  auto owned = attempts_.find(a);
  if (owned == attempts_.end()) return;
  std::unique_ptr<DeliveryAttempt> keep = std::move(owned->second);
  attempts_.erase(owned);
  Lane& lane = a->lane();
  Delivery& d = a->delivery();
  int64_t now = wall_clock_ms();
  auto acc = lane.in_flight.find(d.message_id);
  int64_t accepted_ms = acc == lane.in_flight.end() ? now : acc->second;
  if (acc != lane.in_flight.end()) lane.in_flight.erase(acc);
  d.last_status = status;
  if (status >= 200 && status < 300) {
    d.state = DeliveryState::Delivered;
    d.last_error.clear();
    ++lane.delivered;
    finish_delivery(lane, d, "delivered", status, "", "-");
  } else {
    std::string err = error;
    if (err.empty()) {
      err = "the target answered " + std::to_string(status);
      std::string_view reason = status_reason(status);
      if (!reason.empty()) err += " " + std::string(reason);
    }
    d.last_error = err;
    const RetryConfig& rc = lane.retry;
    bool retryable = status == 0 || std::find(rc.on.begin(), rc.on.end(), status) != rc.on.end();
    int64_t age_end = d.age_base_ms + rc.max_age.count();
    if (!retryable) {
      dead_letter(lane, d, now, err + " (not in retry.on)");
    } else if (d.attempts >= rc.max_attempts) {
      dead_letter(lane, d, now, err + " (max_attempts " + std::to_string(rc.max_attempts) + " reached)");
    } else {
      int64_t delay = (retry_after_ms >= 0 && (status == 429 || status == 503))
                          ? retry_after_ms
                          : backoff_delay_ms(rc, d.attempts, splitmix(rng_));
      if (now + delay >= age_end) {
        // The next attempt would come after max_age: give up now, with this attempt's outcome.
        dead_letter(lane, d, now, err + " (max_age " + format_duration(rc.max_age) + " ends before the next attempt)");
        retire(std::move(keep));
        schedule_pump();
        maybe_finish();
        return;
      }
      d.next_attempt_ms = now + delay;
      d.state = DeliveryState::Pending;
      ++lane.retried;
      finish_delivery(lane, d, "retry", status, err, format_rfc3339_ms(d.next_attempt_ms));
      lane.add_waiting(d, accepted_ms);
    }
  }
  retire(std::move(keep));
  schedule_pump();
  maybe_finish();
}

// A recorded attempt whose call still reads the response body goes on in reading_ (not while
// draining: nothing then waits for the connection); any other is freed once the current callback
// returns (the call may still be on the stack). The body budget is released here, when the call
// is over, not at the head: the attempt keeps its request body (and the call its copy of the
// bytes not yet sent: a target may answer before it has read the whole request) until then, and
// the response timeout bounds how long that is.
void QueueService::Impl::retire(std::unique_ptr<DeliveryAttempt> a) {
  if (a->state() == DeliveryAttempt::State::Reading) {
    if (!draining_) {
      DeliveryAttempt* raw = a.get();
      reading_.emplace(raw, std::move(a));
      return;
    }
    a->cancel();
  }
  body_bytes_in_flight_ -= a->body_size();
  worker_->defer_delete(std::move(a));
}

void QueueService::Impl::body_read(DeliveryAttempt* a) {
  auto it = reading_.find(a);
  if (it == reading_.end()) return;
  std::unique_ptr<DeliveryAttempt> keep = std::move(it->second);
  reading_.erase(it);
  retire(std::move(keep));
  schedule_pump();  // its body budget is free
}

// Stopping: attempts already recorded only read on for the connection's sake.
void QueueService::Impl::cut_reading() {
  std::vector<std::unique_ptr<DeliveryAttempt>> cut;
  for (auto& [p, a] : reading_) cut.push_back(std::move(a));
  reading_.clear();
  for (auto& a : cut) {
    a->cancel();
    retire(std::move(a));
  }
}

void QueueService::Impl::dead_letter(Lane& lane, Delivery& d, int64_t now, const std::string& why) {
  d.state = DeliveryState::DeadLettered;
  d.next_attempt_ms = now;  // for a dead letter: when it became one (dead_letter_retention counts from it)
  d.last_error = why;
  ++lane.dead;
  ++lane.dead_lettered;
  finish_delivery(lane, d, "dead_letter", d.last_status, why, "-");
}

// Records the new state and writes the attempt's log line (SPEC 6).
void QueueService::Impl::finish_delivery(Lane& lane, Delivery& d, const char* result, int status,
                                         const std::string& error, const std::string& next) {
  write_state(d);
  std::string line = "delivery route=" + lane.route + " target=" + lane.label + " delivery_id=" + d.delivery_id() +
                     " attempt=" + std::to_string(d.attempts) + " status=" +
                     (status > 0 ? std::to_string(status) : std::string("-")) + " result=" + result + " next=" + next;
  if (!error.empty() && !(status >= 200 && status < 300)) {
    std::string e;
    json_escape(e, error);
    line += " error=\"" + e + "\"";
  }
  if (std::string_view(result) == "dead_letter") {
    log_warn(line);
  } else {
    log_info(line);
  }
}

// ---------------------------------------------------------------------------------------------
// Housekeeping and stopping

void QueueService::Impl::housekeeping() {
  if (!store_) return;
  int64_t now = wall_clock_ms();
  if (now - last_retention_scan_ >= kRetentionScanMs) {
    last_retention_scan_ = now;
    expire_dead_letters(now);
  }
  // Dead letters expire above, per route; compaction only reclaims space.
  store_->compact(now, INT64_MAX);
  const CompactionStats& cs = store_->last_compaction();
  if (!cs.error.empty()) log_error("queue: compaction stopped: " + cs.error);
  if (dirty_) schedule_commit();
}

void QueueService::Impl::expire_dead_letters(int64_t now) {
  for (Delivery d : store_->deliveries(DeliveryState::DeadLettered)) {
    const QueuedMessage* m = store_->message(d.message_id);
    if (!m) continue;
    const RouteConfig* r = queue_route(m->route);
    int64_t retention = (r ? r->retry : RetryConfig{}).dead_letter_retention.count();
    int64_t since = std::max({d.next_attempt_ms, d.last_attempt_ms, d.age_base_ms});
    if (since + retention > now) continue;
    d.state = DeliveryState::Deleted;
    if (!write_state(d)) return;
    if (Lane* lane = find_lane(*m, d.target_index); lane && lane->dead > 0) --lane->dead;
    log_info("queue: dead letter " + d.delivery_id() + " of route " + m->route + " expired (dead_letter_retention)");
  }
}

void QueueService::Impl::begin_drain() {
  if (draining_) return;
  draining_ = true;
  event_del(pump_ev_.get());
  cut_reading();
  arm_timer(drain_timer_.get(), runtime_->config->timeouts.drain);
}

void QueueService::Impl::drain_deadline() {
  if (!attempts_.empty()) {
    log_warn("queue: " + std::to_string(attempts_.size()) +
             " delivery attempt(s) cut by the stop; they are attempted again after the restart");
  }
  std::vector<std::unique_ptr<DeliveryAttempt>> cut;
  for (auto& [p, a] : attempts_) {
    a->cancel();
    cut.push_back(std::move(a));
  }
  attempts_.clear();
  body_bytes_in_flight_ = 0;
  for (auto& a : cut) worker_->defer_delete(std::move(a));
  maybe_finish();
}

void QueueService::Impl::shutdown(bool now) {
  stopping_ = true;
  if (!draining_) begin_drain();
  if (now) drain_deadline();
  // Whatever the workers submitted last is committed before we go.
  commit();
  maybe_finish();
}

void QueueService::Impl::maybe_finish() {
  if (!stopping_ || finished_ || !attempts_.empty() || !incoming_.empty()) return;
  finish();
}

void QueueService::Impl::finish() {
  finished_ = true;
  // The last sync: what it covers is acknowledged (the answers are posted, if anyone listens).
  if (store_) sync_and_release();
  refuse_storage(awaiting_, "dechunkd is stopping");
  event_del(housekeeping_.get());
  event_del(sync_timer_.get());
  event_del(drain_timer_.get());
  event_base_loopexit(worker_->base(), nullptr);
}

// ---------------------------------------------------------------------------------------------
// Admin (SPEC 8, 11)

namespace {
QueueAdminReply error_reply(ErrorKind kind, std::string message) {
  QueueAdminReply r;
  r.error = true;
  r.kind = kind;
  r.status = error_status(kind);
  r.message = std::move(message);
  return r;
}
QueueAdminReply json_reply(int status, std::string body) {
  QueueAdminReply r;
  r.status = status;
  r.body = std::move(body);
  return r;
}
QueueAdminReply method_not_allowed(const char* allow) {
  QueueAdminReply r = error_reply(ErrorKind::MethodNotAllowed, "this admin endpoint does not accept this method");
  r.allow = allow;
  return r;
}
}  // namespace

QueueAdminReply QueueService::Impl::admin(const QueueAdminRequest& req) {
  const std::string& p = req.path;
  if (p == "/queue") {
    if (req.method != "GET") return method_not_allowed("GET");
    return list_queue();
  }
  if (p == "/dead-letters") {
    if (req.method != "GET") return method_not_allowed("GET");
    return list_dead_letters(req);
  }
  if (p == "/dead-letters/replay") {
    if (req.method != "POST") return method_not_allowed("POST");
    return replay_all(req);
  }
  const std::string dl = "/dead-letters/";
  if (p.compare(0, dl.size(), dl) == 0) {
    std::string rest = p.substr(dl.size());
    const std::string rp = "/replay";
    if (rest.size() > rp.size() && rest.compare(rest.size() - rp.size(), rp.size(), rp) == 0) {
      if (req.method != "POST") return method_not_allowed("POST");
      return replay(rest.substr(0, rest.size() - rp.size()));
    }
    if (rest.empty() || rest.find('/') != std::string::npos) return error_reply(ErrorKind::NotFound, "no such admin endpoint");
    if (req.method == "GET") return show_dead_letter(rest);
    if (req.method == "DELETE") return remove_dead_letter(rest);
    return method_not_allowed("GET, DELETE");
  }
  const std::string rt = "/routes/";
  if (p.compare(0, rt.size(), rt) == 0) {
    std::string rest = p.substr(rt.size());
    size_t slash = rest.find('/');
    if (slash != std::string::npos && slash > 0) {
      std::string name = rest.substr(0, slash), action = rest.substr(slash + 1);
      if (action == "pause" || action == "resume") {
        if (req.method != "POST") return method_not_allowed("POST");
        return pause(name, action == "pause");
      }
    }
  }
  return error_reply(ErrorKind::NotFound, "no such admin endpoint");
}

QueueAdminReply QueueService::Impl::list_queue() {
  std::string out = "{\"routes\":[";
  std::set<std::string> shown;
  bool first_route = true;
  auto lane_json = [&](std::string& o, const std::string& label, const Lane* lane) {
    o += "{\"target\":";
    json_str(o, label);
    o += ",\"pending\":";
    append_decimal(o, lane ? lane->waiting.size() : 0);
    o += ",\"in_flight\":";
    append_decimal(o, lane ? lane->in_flight.size() : 0);
    o += ",\"dead_letters\":";
    append_decimal(o, lane ? lane->dead : 0);
    o += '}';
  };
  auto route_json = [&](const std::string& name, const RouteConfig* r) {
    if (!first_route) out += ',';
    first_route = false;
    out += "{\"route\":";
    json_str(out, name);
    out += ",\"paused\":";
    out += paused(name) ? "true" : "false";
    out += ",\"targets\":[";
    bool first = true;
    std::set<std::string> keys;
    if (r) {
      for (uint32_t i = 0; i < r->targets.size(); ++i) {
        std::string key = lane_key(name, i, r->targets[i].url.text);
        keys.insert(key);
        auto it = lanes_.find(key);
        if (!first) out += ',';
        first = false;
        lane_json(out, r->targets[i].url.redacted(), it == lanes_.end() ? nullptr : it->second.get());
      }
    }
    for (auto& [key, lane] : lanes_) {
      if (lane->route != name || keys.count(key)) continue;
      if (!first) out += ',';
      first = false;
      lane_json(out, lane->label, lane.get());
    }
    out += "]}";
    shown.insert(name);
  };
  for (const RouteConfig& r : runtime_->config->routes) {
    if (r.mode == RouteMode::Queue) route_json(r.name, &r);
  }
  for (auto& [key, lane] : lanes_) {
    if (!shown.count(lane->route)) route_json(lane->route, nullptr);
  }
  out += "]}";
  return json_reply(200, std::move(out));
}

void QueueService::Impl::dead_letter_json(std::string& out, const Delivery& d, const QueuedMessage& m) {
  out += "{\"id\":";
  json_str(out, d.delivery_id());
  out += ",\"message_id\":";
  json_str(out, d.message_id);
  out += ",\"route\":";
  json_str(out, m.route);
  out += ",\"target\":";
  json_str(out, d.target_index < m.targets.size() ? redact(m.targets[d.target_index]) : std::string());
  out += ",\"attempts\":";
  append_decimal(out, d.attempts);
  out += ",\"last_status\":";
  if (d.last_status > 0) {
    append_decimal(out, static_cast<uint64_t>(d.last_status));
  } else {
    out += "null";
  }
  out += ",\"last_error\":";
  json_str(out, d.last_error);
  out += ",\"first_attempt\":";
  json_time(out, d.first_attempt_ms);
  out += ",\"last_attempt\":";
  json_time(out, d.last_attempt_ms);
}

QueueAdminReply QueueService::Impl::list_dead_letters(const QueueAdminRequest& req) {
  if (!store_) return json_reply(200, "{\"dead_letters\":[]}");
  std::string route = query_param(req.query, "route");
  bool by_route = has_param(req.query, "route");
  size_t limit = kDefaultPageLimit;
  if (has_param(req.query, "limit")) {
    std::string v = query_param(req.query, "limit");
    if (v.empty() || v.size() > 6 || !std::all_of(v.begin(), v.end(), [](char c) { return c >= '0' && c <= '9'; }) ||
        std::stoul(v) == 0) {
      return error_reply(ErrorKind::BadRequest, "limit must be a whole number from 1 to " + std::to_string(kMaxPageLimit));
    }
    limit = std::min<size_t>(std::stoul(v), kMaxPageLimit);
  }
  std::string after_mid;
  uint32_t after_index = 0;
  bool has_after = has_param(req.query, "after");
  if (has_after && !split_delivery_id(query_param(req.query, "after"), &after_mid, &after_index)) {
    return error_reply(ErrorKind::BadRequest, "after must be a dead letter id (<message id>.<target index>)");
  }
  std::vector<Delivery> all = store_->deliveries(DeliveryState::DeadLettered);
  std::sort(all.begin(), all.end(), [](const Delivery& a, const Delivery& b) {
    return a.message_id != b.message_id ? a.message_id < b.message_id : a.target_index < b.target_index;
  });
  std::string out = "{\"dead_letters\":[";
  size_t n = 0;
  for (const Delivery& d : all) {
    if (has_after && (d.message_id < after_mid || (d.message_id == after_mid && d.target_index <= after_index))) continue;
    const QueuedMessage* m = store_->message(d.message_id);
    if (!m || (by_route && m->route != route)) continue;
    if (n == limit) break;
    if (n++) out += ',';
    dead_letter_json(out, d, *m);
    out += '}';
  }
  out += "]}";
  return json_reply(200, std::move(out));
}

QueueAdminReply QueueService::Impl::show_dead_letter(const std::string& id) {
  std::optional<Delivery> d;
  const QueuedMessage* m = find_dead_letter(id, &d);
  if (!m) return error_reply(ErrorKind::NotFound, "no dead letter with this id");
  std::string body, error;
  bool have_body = store_->read_body(d->message_id, &body, &error);
  std::string out;
  dead_letter_json(out, *d, *m);
  out += ",\"method\":";
  json_str(out, m->method);
  out += ",\"path\":";
  json_str(out, m->path);
  out += ",\"headers\":[";
  std::string_view fields = m->head_fields;
  bool first = true;
  while (!fields.empty()) {
    size_t eol = fields.find("\r\n");
    std::string_view line = fields.substr(0, eol);
    fields.remove_prefix(eol == std::string_view::npos ? fields.size() : eol + 2);
    size_t colon = line.find(':');
    if (colon == std::string_view::npos) continue;
    std::string_view value = line.substr(colon + 1);
    while (!value.empty() && (value.front() == ' ' || value.front() == '\t')) value.remove_prefix(1);
    if (!first) out += ',';
    first = false;
    out += '[';
    json_str(out, line.substr(0, colon));
    out += ',';
    json_str(out, value);
    out += ']';
  }
  out += "],\"body\":";
  if (have_body) {
    json_str(out, base64(body));
  } else {
    out += "null,\"body_error\":";
    json_str(out, error);
  }
  out += '}';
  return json_reply(200, std::move(out));
}

bool QueueService::Impl::sync_now_for_admin(QueueAdminReply* err) {
  if (!dirty_ || runtime_->config->storage.fsync == FsyncPolicy::Never) return true;
  std::string error;
  bool ok = store_->sync(&error);
  dirty_ = false;
  last_sync_ms_ = wall_clock_ms();
  if (!ok) {
    *err = error_reply(ErrorKind::InternalError, "the queue store failed: " + error);
    refuse_storage(awaiting_, "the queue store failed: " + error);
    set_health("the queue store failed: " + error);
    return false;
  }
  sync_and_release();
  return true;
}

QueueAdminReply QueueService::Impl::replay(const std::string& id) {
  std::optional<Delivery> d;
  const QueuedMessage* m = find_dead_letter(id, &d);
  if (!m) return error_reply(ErrorKind::NotFound, "no dead letter with this id");
  int64_t now = wall_clock_ms();
  // Replay (SPEC 6): attempts and the max_age clock start again; the delivery id stays.
  d->state = DeliveryState::Pending;
  d->attempts = 0;
  d->next_attempt_ms = now;
  d->age_base_ms = now;
  if (!write_state(*d)) return error_reply(ErrorKind::InternalError, "the queue store refused the change; see the log");
  Lane& lane = lane_for(m->route, d->target_index, m->targets[d->target_index]);
  if (lane.dead > 0) --lane.dead;
  lane.add_waiting(*d, m->accepted_ms);
  log_info("queue: dead letter " + id + " of route " + m->route + " replayed");
  QueueAdminReply err;
  if (!sync_now_for_admin(&err)) return err;
  schedule_pump();
  return json_reply(202, "{\"replayed\":1}");
}

QueueAdminReply QueueService::Impl::replay_all(const QueueAdminRequest& req) {
  bool by_route = has_param(req.query, "route");
  std::string route = query_param(req.query, "route");
  uint64_t n = 0;
  if (store_) {
    int64_t now = wall_clock_ms();
    for (Delivery d : store_->deliveries(DeliveryState::DeadLettered)) {
      const QueuedMessage* m = store_->message(d.message_id);
      if (!m || (by_route && m->route != route) || d.target_index >= m->targets.size()) continue;
      d.state = DeliveryState::Pending;
      d.attempts = 0;
      d.next_attempt_ms = now;
      d.age_base_ms = now;
      if (!write_state(d)) break;
      Lane& lane = lane_for(m->route, d.target_index, m->targets[d.target_index]);
      if (lane.dead > 0) --lane.dead;
      lane.add_waiting(d, m->accepted_ms);
      ++n;
    }
  }
  if (n > 0) {
    log_info("queue: " + std::to_string(n) + " dead letter(s)" + (by_route ? " of route " + route : std::string()) +
             " replayed");
    QueueAdminReply err;
    if (!sync_now_for_admin(&err)) return err;
    schedule_pump();
  }
  std::string body = "{\"replayed\":";
  append_decimal(body, n);
  body += '}';
  return json_reply(202, std::move(body));
}

QueueAdminReply QueueService::Impl::remove_dead_letter(const std::string& id) {
  std::optional<Delivery> d;
  const QueuedMessage* m = find_dead_letter(id, &d);
  if (!m) return error_reply(ErrorKind::NotFound, "no dead letter with this id");
  d->state = DeliveryState::Deleted;
  if (!write_state(*d)) return error_reply(ErrorKind::InternalError, "the queue store refused the change; see the log");
  if (Lane* lane = find_lane(*m, d->target_index); lane && lane->dead > 0) --lane->dead;
  log_info("queue: dead letter " + id + " of route " + m->route + " deleted");
  QueueAdminReply err;
  if (!sync_now_for_admin(&err)) return err;
  return json_reply(204, "");
}

QueueAdminReply QueueService::Impl::pause(const std::string& route, bool on) {
  const RouteConfig* found = nullptr;
  for (const RouteConfig& r : runtime_->config->routes) {
    if (r.name == route) found = &r;
  }
  // A route a reload removed still has its pending deliveries (SPEC 6): it can be paused and
  // resumed as long as the queue knows it.
  bool queued_only = !found && (paused_.count(route) > 0 ||
                                std::any_of(lanes_.begin(), lanes_.end(),
                                            [&](const auto& kv) { return kv.second->route == route; }));
  if (!found && !queued_only) return error_reply(ErrorKind::NotFound, "no route named '" + route + "'");
  if (found && found->mode != RouteMode::Queue) {
    return error_reply(ErrorKind::Conflict, "route '" + route + "' is not a queue route; only queue routes can be paused");
  }
  if (!store_) return error_reply(ErrorKind::Overloaded, store_error_.empty() ? "the queue store is not open" : store_error_);
  bool changed = on ? paused_.insert(route).second : paused_.erase(route) > 0;
  if (changed) {
    std::string error;
    if (!save_paused(&error)) {
      if (on) {
        paused_.erase(route);
      } else {
        paused_.insert(route);
      }
      return error_reply(ErrorKind::InternalError, "the pause state could not be saved: " + error);
    }
    log_info("queue: route " + route + (on ? " paused (still accepting)" : " resumed"));
    if (!on) schedule_pump();
  }
  QueueAdminReply r;
  r.status = 204;
  return r;
}

QueueStats QueueService::Impl::stats() {
  QueueStats s;
  s.enabled = store_ != nullptr;
  s.corrupt_records = corrupt_records_;
  if (!store_) return s;
  s.bytes = store_->bytes();
  int64_t now = wall_clock_ms();
  // Every configured queue target appears, also before its first message.
  for (const RouteConfig& r : runtime_->config->routes) {
    if (r.mode != RouteMode::Queue) continue;
    for (uint32_t i = 0; i < r.targets.size(); ++i) lane_for(r.name, i, r.targets[i].url.text);
  }
  std::map<std::pair<std::string, std::string>, QueueTargetStats> by_label;
  for (auto& [key, lp] : lanes_) {
    const Lane& l = *lp;
    QueueTargetStats& t = by_label[{l.route, l.label}];
    t.route = l.route;
    t.target = l.label;
    t.pending += l.waiting.size();
    t.in_flight += l.in_flight.size();
    t.dead_letters += l.dead;
    t.delivered += l.delivered;
    t.retried += l.retried;
    t.dead_lettered += l.dead_lettered;
    int64_t oldest = INT64_MAX;
    for (const auto& [id, ms] : l.in_flight) oldest = std::min(oldest, ms);
    for (const auto& [id, ms] : l.accepted) {
      oldest = std::min(oldest, ms);
      break;  // ordered by message id, which is time-ordered
    }
    if (oldest != INT64_MAX) {
      t.oldest_pending_seconds = std::max(t.oldest_pending_seconds, static_cast<double>(now - oldest) / 1000.0);
    }
  }
  for (auto& [k, t] : by_label) s.targets.push_back(std::move(t));
  return s;
}

// ---------------------------------------------------------------------------------------------
// The thread-safe facade

QueueService::QueueService(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

QueueService::~QueueService() {
  if (thread_.joinable()) shutdown(true);
}

std::unique_ptr<QueueService> QueueService::create(std::shared_ptr<const Runtime> runtime, SharedState& shared,
                                                   std::string* error) {
  auto impl = std::make_unique<Impl>(runtime, shared);
  bool wanted = false;
  for (const RouteConfig& r : runtime->config->routes) wanted |= r.mode == RouteMode::Queue;
  struct stat st {};
  std::string dir = runtime->config->storage.dir + "/queue";
  if (!wanted && ::stat(dir.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) wanted = true;
  if (wanted && !impl->open_store(error)) return nullptr;
  return std::unique_ptr<QueueService>(new QueueService(std::move(impl)));
}

void QueueService::start() {
  Impl* impl = impl_.get();
  thread_ = std::thread([impl] { impl->run(); });
}

void QueueService::submit(QueueSubmission sub, std::function<void(QueueAck)> done) {
  Impl* impl = impl_.get();
  // Task closures must be copyable; the submission owns a descriptor, so it travels by pointer.
  auto owned = std::make_shared<QueueSubmission>(std::move(sub));
  impl->worker().post([impl, owned, d = std::move(done)]() mutable { impl->submit(std::move(*owned), std::move(d)); });
}

void QueueService::set_runtime(std::shared_ptr<const Runtime> rt) {
  Impl* impl = impl_.get();
  impl->worker().post([impl, rt = std::move(rt)]() mutable { impl->set_runtime(std::move(rt)); });
}

void QueueService::admin(QueueAdminRequest req, std::function<void(QueueAdminReply)> done) {
  Impl* impl = impl_.get();
  impl->worker().post([impl, r = std::move(req), d = std::move(done)] { d(impl->admin(r)); });
}

void QueueService::stats(std::function<void(QueueStats, WorkerStats)> done) {
  Impl* impl = impl_.get();
  impl->worker().post([impl, d = std::move(done)] { d(impl->stats(), impl->worker().stats()); });
}

std::string QueueService::failure() const { return impl_->failure(); }

void QueueService::begin_drain() {
  Impl* impl = impl_.get();
  impl->worker().post([impl] { impl->begin_drain(); });
}

void QueueService::shutdown(bool now) {
  if (!thread_.joinable()) return;
  Impl* impl = impl_.get();
  impl->worker().post([impl, now] { impl->shutdown(now); });
  thread_.join();
}

}  // namespace dechunkd
