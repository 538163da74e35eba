// QueueStore implementation: a segmented write-ahead log plus the in-memory index rebuilt
// from it. The format, recovery rules and compaction policy are in docs/queue-format.md;
// this file follows that document section by section. Single-threaded (store.hpp).
#include "queue/store.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>
#include <set>
#include <tuple>
#include <unordered_map>

#include "queue/crc32c.hpp"
#include "queue/segment.hpp"

namespace dechunkd {

namespace {
using namespace queue;

constexpr const char* kBodyDamaged = "stored body is damaged";
constexpr uint64_t kResyncBudget = 256ull << 20;  // CRC bytes one resync may spend (docs: Recovery)
constexpr uint64_t kNone = UINT64_MAX;
constexpr uint64_t kGarbageRollMin = 1ull << 20;  // compact() seals an all-garbage active segment past this
constexpr int64_t kDedupeSweepEvery = 60'000;

int64_t sat_sub(int64_t a, int64_t b) {
  int64_t r;
  if (__builtin_sub_overflow(a, b, &r)) return b > 0 ? INT64_MIN : INT64_MAX;
  return r;
}

std::string sys_error(const std::string& what, int e) { return what + ": " + std::strerror(e); }

struct Segment {
  Segment() = default;
  Segment(const Segment&) = delete;
  Segment& operator=(const Segment&) = delete;
  ~Segment() {
    if (fd >= 0) ::close(fd);
  }
  uint64_t number = 0;
  std::string path;
  int fd = -1;
  uint32_t salt = 0;
  uint64_t size = 0;              // bytes of the file we account for (valid end for the active one)
  bool dirty = false;             // written since its last fdatasync
  bool header_ok = true;
  uint64_t live_anchor_bytes = 0; // body + Message bytes of unfinished messages anchored here (copy cost)
  uint64_t compaction_bytes = 0;  // bytes compaction wrote here (not new traffic)
  int64_t sealed_seen_ms = INT64_MIN;  // compact()'s clock when it first saw this file sealed
  std::unordered_map<std::string, uint64_t> refs;  // message id -> bytes of its records in this file
  std::vector<std::pair<std::string, std::string>> dedupe_keys;  // keys this file may host (checked on use)
};

struct BodyChunk {
  uint64_t seg = 0;
  uint64_t rec_off = 0;   // where the record's frame starts
  uint32_t rec_len = 0;   // framed size
  uint32_t prefix_len = 0;
  uint64_t body_off = 0;
  uint32_t len = 0;       // body bytes in it
};

struct Msg {
  QueuedMessage m;
  std::vector<Delivery> d;
  std::vector<uint64_t> latest_seg;  // per target: the segment holding its latest state
  uint64_t anchor = 0;               // the segment holding the current Message record (and the body)
  std::vector<BodyChunk> chunks;
  uint64_t anchor_bytes = 0;         // framed Body + Message bytes in the anchor
  uint64_t bytes = 0;                // anchor_bytes + later Delivery records: what bytes() counts
  bool body_lost = false;
  bool finished = false;             // every delivery Delivered or Deleted
};

struct PendingBody {  // recovery: Body records seen before their Message record
  std::vector<BodyChunk> chunks;
  uint64_t covered = 0;
  bool broken = false;
};

struct DedupeEntry {
  std::string id;
  int64_t accepted_ms = 0;
  uint64_t host = 0;  // segment holding the record that keeps this entry across a restart
};

using DedupeKey = std::pair<std::string, std::string>;  // route, key

// An outgoing record: frame, owned payload bytes, then borrowed body bytes.
struct OutRecord {
  RecordType type = RecordType::Message;
  std::string head;
  std::vector<iovec> tail;
  size_t tail_len = 0;
  unsigned char frame[kFrameSize] = {};
  uint64_t framed() const { return kFrameSize + head.size() + tail_len; }
};

bool finished_state(DeliveryState s) { return s == DeliveryState::Delivered || s == DeliveryState::Deleted; }
int64_t dead_time(const Delivery& d) { return std::max(d.last_attempt_ms, d.age_base_ms); }

bool pwritev_all(int fd, std::vector<iovec> iov, uint64_t off, int* err) {
  size_t i = 0;
  while (i < iov.size()) {
    int cnt = static_cast<int>(std::min<size_t>(iov.size() - i, IOV_MAX));
    ssize_t n = ::pwritev(fd, iov.data() + i, cnt, static_cast<off_t>(off));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      *err = n < 0 ? errno : EIO;
      return false;
    }
    off += static_cast<uint64_t>(n);
    size_t left = static_cast<size_t>(n);
    while (i < iov.size() && left >= iov[i].iov_len) left -= iov[i++].iov_len;
    if (left > 0) {
      iov[i].iov_base = static_cast<char*>(iov[i].iov_base) + left;
      iov[i].iov_len -= left;
    }
  }
  return true;
}

bool pread_all(int fd, void* buf, size_t n, uint64_t off, int* err) {
  size_t got = 0;
  while (got < n) {
    ssize_t r = ::pread(fd, static_cast<char*>(buf) + got, n - got, static_cast<off_t>(off + got));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) {
      *err = r < 0 ? errno : EIO;
      return false;
    }
    got += static_cast<size_t>(r);
  }
  return true;
}

uint32_t random_u32() {
  uint32_t v = 0;
  while (::getrandom(&v, sizeof v, 0) < 0 && errno == EINTR) {
  }
  return v;
}

int64_t wall_ms() {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000 + ts.tv_nsec / 1'000'000;
}

bool mkdir_p(const std::string& dir, std::string* error) {
  std::string cur;
  size_t pos = 0;
  while (pos <= dir.size()) {
    size_t next = dir.find('/', pos);
    if (next == std::string::npos) next = dir.size();
    cur = dir.substr(0, next);
    pos = next + 1;
    if (cur.empty()) continue;
    if (::mkdir(cur.c_str(), 0750) != 0 && errno != EEXIST) {
      *error = sys_error("cannot create queue directory " + cur, errno);
      return false;
    }
  }
  struct stat st;
  if (::stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
    *error = "queue directory " + dir + " is not a directory";
    return false;
  }
  return true;
}

class StoreImpl final : public QueueStore {
 public:
  explicit StoreImpl(const StoreOptions& o) : opts_(o), dedupe_retention_ms_(o.dedupe_retention_ms) {
    if (opts_.segment_bytes < 4096) opts_.segment_bytes = 4096;
  }

  ~StoreImpl() override {
    if (failure_.empty() && opts_.fsync != FsyncPolicy::Never) {
      std::string ignored;
      sync_now(&ignored);
    }
    segs_.clear();
    if (dir_fd_ >= 0) ::close(dir_fd_);
  }

  bool open_dir(std::string* error);
  bool recover(RecoveryReport* report, std::string* error);

  bool append_message(const QueuedMessage& m, const std::vector<std::pair<const char*, size_t>>& body, int64_t now_ms,
                      std::string* error) override;
  bool update_delivery(const Delivery& d, std::string* error) override;
  bool sync(std::string* error) override {
    std::string ignored;
    if (!error) error = &ignored;
    if (!usable(error)) return false;
    if (opts_.fsync == FsyncPolicy::Never) return true;
    return sync_now(error);
  }
  const QueuedMessage* message(const std::string& id) const override {
    auto it = msgs_.find(id);
    return it == msgs_.end() ? nullptr : &it->second->m;
  }
  bool read_body(const std::string& message_id, std::string* out, std::string* error) const override;
  std::vector<Delivery> deliveries(DeliveryState state) const override {
    std::vector<Delivery> out;
    for (const auto& [key, m] : order_)
      for (const auto& d : m->d)
        if (d.state == state) out.push_back(d);
    return out;
  }
  std::optional<Delivery> delivery(const std::string& delivery_id) const override;
  std::optional<std::string> dedupe_lookup(const std::string& route, const std::string& key,
                                           int64_t since_ms) const override {
    auto it = dedupe_.find(DedupeKey(route, key));
    if (it == dedupe_.end() || it->second.accepted_ms < since_ms) return std::nullopt;
    return it->second.id;
  }
  uint64_t bytes() const override { return live_bytes_; }
  void compact(int64_t now_ms, int64_t dead_letter_retention_ms) override;

  const CompactionStats& last_compaction() const override { return stats_; }
  void set_dedupe_retention(int64_t ms) override { dedupe_retention_ms_ = ms; }
  void set_limits(FsyncPolicy fsync, uint64_t max_bytes) override {
    opts_.fsync = fsync;
    opts_.max_bytes = max_bytes;
  }
  uint64_t disk_bytes() const override {
    uint64_t n = 0;
    for (const auto& [num, s] : segs_) n += s->size;
    return n;
  }
  std::string failure() const override { return failure_; }

 private:
  bool usable(std::string* error) const {
    if (failure_.empty()) return true;
    *error = failure_;
    return false;
  }
  void poison(const std::string& why) {
    if (failure_.empty())
      failure_ = why + "; the queue store refuses writes until it is reopened (recovery re-reads what the disk holds)";
  }

  // --- files ---
  bool create_segment(uint64_t number, std::string* error);
  bool roll(std::string* error);
  bool maybe_roll(uint64_t incoming, std::string* error);
  bool write_out(std::vector<OutRecord>& recs, std::vector<uint64_t>* offsets, std::string* error);
  bool truncate_active(uint64_t to, std::string* error);
  bool sync_now(std::string* error);
  bool fsync_dir(std::string* error);

  // --- recovery ---
  bool scan_segment(Segment& s, bool may_truncate, RecoveryReport* report, std::string* error);
  bool apply_record(Segment& s, uint64_t off, const Frame& f);
  void note_corrupt(RecoveryReport* report, const std::string& id);
  void note_dedupe(const std::string& route, const std::string& key, const std::string& id, int64_t accepted_ms,
                   uint64_t seg);

  // --- index ---
  void account(Msg& m, bool on) {
    if (m.finished) return;
    Segment& a = *segs_.at(m.anchor);
    if (on) {
      live_bytes_ += m.bytes;
      a.live_anchor_bytes += m.anchor_bytes;
    } else {
      live_bytes_ -= m.bytes;
      a.live_anchor_bytes -= m.anchor_bytes;
    }
  }
  void refresh_finished(Msg& m) {
    m.finished = std::all_of(m.d.begin(), m.d.end(), [](const Delivery& d) { return finished_state(d.state); });
  }
  void set_delivery(Msg& m, uint32_t t, const Delivery& nd) {
    Delivery& cur = m.d[t];
    if (cur.state == DeliveryState::DeadLettered) dead_.erase({dead_time(cur), m.m.id, t});
    cur = nd;
    cur.message_id = m.m.id;
    if (cur.state == DeliveryState::DeadLettered) dead_.insert({dead_time(cur), m.m.id, t});
  }
  void erase_message(const std::string& id);
  bool write_delivery(Msg& m, const Delivery& nd, std::string* error);

  // --- compaction ---
  bool reclaim_segment(uint64_t number, int64_t now_ms, std::string* error);
  bool copy_message(Msg& m, std::vector<BodyChunk>* chunks, uint64_t* written, bool* lost, std::string* error);

  StoreOptions opts_;
  int64_t dedupe_retention_ms_;
  int dir_fd_ = -1;
  bool dir_dirty_ = false;
  std::string failure_;
  std::map<uint64_t, std::unique_ptr<Segment>> segs_;
  Segment* active_ = nullptr;
  uint64_t next_number_ = 1;

  std::unordered_map<std::string, std::unique_ptr<Msg>> msgs_;
  std::map<std::pair<int64_t, std::string>, Msg*> order_;  // acceptance order: (accepted_ms, id)
  std::map<DedupeKey, DedupeEntry> dedupe_;
  std::set<std::tuple<int64_t, std::string, uint32_t>> dead_;  // dead letters by the time they died
  uint64_t live_bytes_ = 0;
  int64_t last_dedupe_sweep_ = 0;
  bool swept_ = false;
  CompactionStats stats_;

  std::unordered_map<std::string, PendingBody> pending_;  // recovery only
};

// ---------------------------------------------------------------------------------------
// Files

bool StoreImpl::open_dir(std::string* error) {
  if (opts_.dir.empty()) {
    *error = "queue directory is not set";
    return false;
  }
  struct stat st;
  bool existed = ::stat(opts_.dir.c_str(), &st) == 0;
  if (!mkdir_p(opts_.dir, error)) return false;
  dir_fd_ = ::open(opts_.dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir_fd_ < 0) {
    *error = sys_error("cannot open queue directory " + opts_.dir, errno);
    return false;
  }
  if (::flock(dir_fd_, LOCK_EX | LOCK_NB) != 0) {
    *error = errno == EWOULDBLOCK ? "queue directory " + opts_.dir + " is already open (another process or store holds it)"
                                  : sys_error("cannot lock queue directory " + opts_.dir, errno);
    return false;
  }
  if (!existed && opts_.fsync != FsyncPolicy::Never) {
    // Make the new directory's own entry durable: fsync its parent.
    std::string parent = opts_.dir;
    while (parent.size() > 1 && parent.back() == '/') parent.pop_back();
    size_t slash = parent.rfind('/');
    parent = slash == std::string::npos ? "." : slash == 0 ? "/" : parent.substr(0, slash);
    int pfd = ::open(parent.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (pfd >= 0) {
      ::fsync(pfd);
      ::close(pfd);
    }
  }
  return true;
}

bool StoreImpl::create_segment(uint64_t number, std::string* error) {
  auto s = std::make_unique<Segment>();
  s->number = number;
  s->path = opts_.dir + "/" + segment_name(number);
  s->salt = random_u32();
  s->fd = ::open(s->path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0640);
  if (s->fd < 0) {
    *error = sys_error("cannot create queue segment " + s->path, errno);
    return false;
  }
  SegmentHeader h;
  h.number = number;
  h.created_ms = wall_ms();
  h.salt = s->salt;
  unsigned char buf[kHeaderSize];
  encode_header(h, buf);
  std::vector<iovec> iov{{buf, kHeaderSize}};
  int e = 0;
  if (!pwritev_all(s->fd, iov, 0, &e)) {
    *error = sys_error("cannot write the header of queue segment " + s->path, e);
    ::unlink(s->path.c_str());
    return false;
  }
  s->size = kHeaderSize;
  s->dirty = true;
  dir_dirty_ = true;
  next_number_ = number + 1;
  active_ = s.get();
  segs_[number] = std::move(s);
  return true;
}

bool StoreImpl::roll(std::string* error) {
  // A sealed segment is complete on disk (policy permitting) before the next one exists, so
  // after a crash only the newest segment can have a torn tail.
  if (active_ && active_->dirty && opts_.fsync != FsyncPolicy::Never) {
    if (::fdatasync(active_->fd) != 0) {
      poison(sys_error("fdatasync of " + active_->path + " failed", errno));
      *error = failure_;
      return false;
    }
    active_->dirty = false;
  }
  return create_segment(next_number_, error);
}

bool StoreImpl::maybe_roll(uint64_t incoming, std::string* error) {
  uint64_t size = active_->size;
  if (size <= kHeaderSize) return true;  // a record larger than a segment gets a segment of its own
  if (size < opts_.segment_bytes && incoming <= opts_.segment_bytes - size) return true;
  return roll(error);
}

bool StoreImpl::truncate_active(uint64_t to, std::string* error) {
  if (::ftruncate(active_->fd, static_cast<off_t>(to)) != 0) {
    std::string why = sys_error("cannot truncate " + active_->path + " back to offset " + std::to_string(to), errno);
    poison(why);
    if (error) *error = failure_;
    return false;
  }
  active_->size = to;
  return true;
}

bool StoreImpl::write_out(std::vector<OutRecord>& recs, std::vector<uint64_t>* offsets, std::string* error) {
  Segment& s = *active_;
  uint64_t start = s.size;
  uint64_t off = start;
  std::vector<iovec> iov;
  iov.reserve(recs.size() * 3);
  for (auto& r : recs) {
    uint64_t payload = r.head.size() + r.tail_len;
    if (payload == 0 || payload > kMaxPayload) {
      *error = "queue record of " + std::to_string(payload) + " bytes is larger than the format allows";
      return false;
    }
    uint32_t crc = crc32c_extend(record_crc_start(s.salt, r.type), r.head.data(), r.head.size());
    for (const auto& v : r.tail) crc = crc32c_extend(crc, v.iov_base, v.iov_len);
    encode_frame(r.frame, static_cast<uint32_t>(payload), r.type, crc);
    if (offsets) offsets->push_back(off);
    off += r.framed();
    iov.push_back({r.frame, kFrameSize});
    iov.push_back({r.head.data(), r.head.size()});
    for (const auto& v : r.tail) iov.push_back(v);
  }
  int e = 0;
  if (!pwritev_all(s.fd, std::move(iov), start, &e)) {
    *error = sys_error("cannot write queue segment " + s.path + " at offset " + std::to_string(start), e);
    std::string terr;
    if (!truncate_active(start, &terr)) *error += "; " + terr;
    return false;
  }
  s.size = off;
  s.dirty = true;
  return true;
}

bool StoreImpl::fsync_dir(std::string* error) {
  if (::fsync(dir_fd_) != 0) {
    poison(sys_error("fsync of queue directory " + opts_.dir + " failed", errno));
    *error = failure_;
    return false;
  }
  dir_dirty_ = false;
  return true;
}

bool StoreImpl::sync_now(std::string* error) {
  if (!usable(error)) return false;
  for (auto& [n, s] : segs_) {
    if (!s->dirty) continue;
    if (::fdatasync(s->fd) != 0) {
      // After a failed fdatasync the kernel may have dropped the dirty pages: retrying could
      // report success for data that is gone, so the store stops (PostgreSQL's "fsyncgate").
      poison(sys_error("fdatasync of " + s->path + " failed", errno));
      *error = failure_;
      return false;
    }
    s->dirty = false;
  }
  if (dir_dirty_) return fsync_dir(error);
  return true;
}

// ---------------------------------------------------------------------------------------
// Recovery

void StoreImpl::note_corrupt(RecoveryReport* report, const std::string& id) {
  ++report->corrupt_records;
  if (!id.empty() && std::find(report->corrupt_message_ids.begin(), report->corrupt_message_ids.end(), id) ==
                         report->corrupt_message_ids.end())
    report->corrupt_message_ids.push_back(id);
}

void StoreImpl::note_dedupe(const std::string& route, const std::string& key, const std::string& id,
                            int64_t accepted_ms, uint64_t seg) {
  DedupeEntry& e = dedupe_[DedupeKey(route, key)];
  if (!e.id.empty() && e.id != id && e.accepted_ms > accepted_ms) return;  // a newer acceptance wins
  e.id = id;
  e.accepted_ms = accepted_ms;
  e.host = seg;
  segs_.at(seg)->dedupe_keys.emplace_back(route, key);
}

bool StoreImpl::apply_record(Segment& s, uint64_t off, const Frame& f) {
  uint64_t framed = kFrameSize + f.len;
  switch (static_cast<RecordType>(f.type)) {
    case RecordType::Body: {
      std::string id;
      uint64_t body_off = 0;
      size_t prefix = 0;
      if (!decode_body_prefix(f.payload, f.len, &id, &body_off, &prefix) || prefix >= f.len) return false;
      PendingBody& p = pending_[id];
      if (body_off == 0) p = PendingBody{};
      uint32_t len = static_cast<uint32_t>(f.len - prefix);
      if (body_off != p.covered) p.broken = true;  // a Body record before this one was lost
      p.chunks.push_back({s.number, off, static_cast<uint32_t>(framed), static_cast<uint32_t>(prefix), body_off, len});
      p.covered = body_off + len;
      s.refs[id] += framed;
      return true;
    }
    case RecordType::Message: {
      auto nm = std::make_unique<Msg>();
      bool lost = false;
      if (!decode_message(f.payload, f.len, &nm->m, &nm->d, &lost)) return false;
      const std::string id = nm->m.id;
      PendingBody body;
      if (auto it = pending_.find(id); it != pending_.end()) {
        body = std::move(it->second);
        pending_.erase(it);
      }
      // The body must be complete and, as the writer guarantees, in the same segment: compaction
      // moves a message by its anchor, so a chunk elsewhere could vanish under it.
      if (!lost && (body.broken || body.covered != nm->m.body_size ||
                    std::any_of(body.chunks.begin(), body.chunks.end(),
                                [&](const BodyChunk& c) { return c.seg != s.number; })))
        lost = true;  // reported once the scan is done
      nm->body_lost = lost;
      if (!lost) nm->chunks = std::move(body.chunks);
      nm->anchor = s.number;
      nm->anchor_bytes = framed;
      for (const auto& c : nm->chunks) nm->anchor_bytes += c.rec_len;
      nm->bytes = nm->anchor_bytes;
      nm->latest_seg.assign(nm->d.size(), s.number);
      auto old = msgs_.find(id);
      if (old != msgs_.end()) {
        order_.erase({old->second->m.accepted_ms, id});  // a compaction copy re-anchors the message
        old->second = std::move(nm);
      } else {
        old = msgs_.emplace(id, std::move(nm)).first;
      }
      Msg& m = *old->second;
      order_[{m.m.accepted_ms, id}] = &m;
      if (!m.m.dedupe_key.empty()) note_dedupe(m.m.route, m.m.dedupe_key, id, m.m.accepted_ms, s.number);
      s.refs[id] += framed;
      return true;
    }
    case RecordType::Delivery: {
      Delivery d;
      if (!decode_delivery(f.payload, f.len, &d)) return false;
      s.refs[d.message_id] += framed;
      auto it = msgs_.find(d.message_id);
      if (it == msgs_.end()) return true;  // its message was compacted away: an orphan, harmless
      Msg& m = *it->second;
      if (d.target_index >= m.d.size()) return false;
      m.d[d.target_index] = d;
      m.latest_seg[d.target_index] = s.number;
      m.bytes += framed;
      return true;
    }
    case RecordType::Dedupe: {
      std::string id, route, key;
      int64_t accepted = 0;
      if (!decode_dedupe(f.payload, f.len, &id, &accepted, &route, &key)) return false;
      note_dedupe(route, key, id, accepted, s.number);
      return true;
    }
  }
  return false;
}

bool StoreImpl::scan_segment(Segment& s, bool may_truncate, RecoveryReport* report, std::string* error) {
  struct stat st;
  if (::fstat(s.fd, &st) != 0) {
    *error = sys_error("cannot stat " + s.path, errno);
    return false;
  }
  uint64_t size = static_cast<uint64_t>(st.st_size);
  SegmentReader rd(s.fd, size, s.path);
  uint64_t off = kHeaderSize;
  while (off < size) {
    Frame f;
    FrameCheck c = check_frame(rd, off, s.salt, &f, error);
    if (c == FrameCheck::IoError) return false;
    if (c == FrameCheck::Ok) {
      if (apply_record(s, off, f)) {
        ++report->records;
      } else {  // intact framing, impossible content: skip it, keep going
        std::string id;
        peek_id(f.payload, f.len, &id);
        note_corrupt(report, id);
      }
      off += kFrameSize + f.len;
      continue;
    }
    // Damage at off. The id, when the payload start is readable, names what was lost.
    std::string id;
    if (size - off > kFrameSize) {
      size_t n = static_cast<size_t>(std::min<uint64_t>(size - off - kFrameSize, 65));
      const unsigned char* p = rd.get(off + kFrameSize, n, error);
      if (!p) return false;
      peek_id(p, n, &id);
    }
    // Find the next intact record: first where the damaged record's length says, then byte by byte.
    uint64_t next = kNone;
    Frame g;
    if (c == FrameCheck::BadCrc) {
      FrameCheck cc = check_frame(rd, off + kFrameSize + f.len, s.salt, &g, error);
      if (cc == FrameCheck::IoError) return false;
      if (cc == FrameCheck::Ok) next = off + kFrameSize + f.len;
    }
    uint64_t budget = kResyncBudget;
    for (uint64_t p = off + 1; next == kNone && p + kFrameSize <= size; ++p) {
      FrameCheck cc = check_frame(rd, p, s.salt, &g, error);
      if (cc == FrameCheck::IoError) return false;
      if (cc == FrameCheck::Ok) next = p;
      if (cc == FrameCheck::BadCrc) {
        if (g.len >= budget) break;  // give up: what remains of this file counts as one damaged region
        budget -= g.len;
      }
    }
    if (next == kNone) {
      if (may_truncate) {  // a torn or garbage tail of the last segment: cut it off
        if (::ftruncate(s.fd, static_cast<off_t>(off)) != 0) {
          *error = sys_error("cannot truncate the torn tail of " + s.path + " at offset " + std::to_string(off), errno);
          return false;
        }
        report->truncated_bytes += size - off;
        s.dirty = true;
        size = off;
      } else {
        note_corrupt(report, id);
      }
      break;
    }
    note_corrupt(report, id);
    off = next;
  }
  s.size = size;
  return true;
}

bool StoreImpl::recover(RecoveryReport* report, std::string* error) {
  std::vector<uint64_t> numbers;
  {
    int dfd = ::dup(dir_fd_);
    DIR* d = dfd >= 0 ? ::fdopendir(dfd) : nullptr;
    if (!d) {
      if (dfd >= 0) ::close(dfd);
      *error = sys_error("cannot list queue directory " + opts_.dir, errno);
      return false;
    }
    while (struct dirent* e = ::readdir(d)) {
      uint64_t n = 0;
      if (parse_segment_name(e->d_name, &n)) numbers.push_back(n);
    }
    ::closedir(d);
  }
  std::sort(numbers.begin(), numbers.end());
  if (!numbers.empty()) next_number_ = numbers.back() + 1;

  // Phase 1: read every header before changing anything, so a file from a newer version
  // refuses the open with the directory untouched.
  std::vector<std::pair<std::unique_ptr<Segment>, HeaderCheck>> files;
  for (uint64_t n : numbers) {
    auto s = std::make_unique<Segment>();
    s->number = n;
    s->path = opts_.dir + "/" + segment_name(n);
    s->fd = ::open(s->path.c_str(), O_RDWR | O_CLOEXEC);
    if (s->fd < 0) {
      *error = sys_error("cannot open queue segment " + s->path, errno);
      return false;
    }
    unsigned char buf[kHeaderSize] = {};
    ssize_t got = ::pread(s->fd, buf, kHeaderSize, 0);
    SegmentHeader h;
    HeaderCheck c = got < 0 ? HeaderCheck::TooShort : decode_header(buf, static_cast<size_t>(got), &h);
    if (c == HeaderCheck::TooShort && got < 0) {
      *error = sys_error("cannot read queue segment " + s->path, errno);
      return false;
    }
    if (c == HeaderCheck::NewerVersion || c == HeaderCheck::UnknownFlags) {
      *error = c == HeaderCheck::NewerVersion
                   ? s->path + ": queue format version " + std::to_string(h.version) +
                         " is newer than this dechunkd reads (version " + std::to_string(kFormatVersion) +
                         "); refusing to open the queue, nothing was changed"
                   : s->path + ": queue segment uses format features this dechunkd does not know (flags " +
                         std::to_string(h.flags) + "); refusing to open the queue, nothing was changed";
      return false;
    }
    s->salt = h.salt;
    s->header_ok = c == HeaderCheck::Ok && h.number == n;
    files.emplace_back(std::move(s), c);
  }
  // The last file with an all-zero header is a creation cut short too (the size reached the
  // disk, the header did not); earlier files with damaged headers are scanned as they are.
  if (!files.empty()) {
    unsigned char buf[kHeaderSize] = {};
    auto& [s, c] = files.back();
    if (c == HeaderCheck::BadMagic && ::pread(s->fd, buf, kHeaderSize, 0) == static_cast<ssize_t>(kHeaderSize) &&
        std::all_of(buf, buf + kHeaderSize, [](unsigned char b) { return b == 0; }))
      c = HeaderCheck::TooShort;
  }
  size_t last_kept = files.size();  // the last file that stays: the only one whose tail may be cut
  for (size_t i = files.size(); i-- > 0;)
    if (files[i].second != HeaderCheck::TooShort) {
      last_kept = i;
      break;
    }

  // Phase 2: scan in order.
  for (size_t i = 0; i < files.size(); ++i) {
    auto& [s, c] = files[i];
    bool last = i == last_kept;
    if (c == HeaderCheck::TooShort) {
      // A segment whose header never reached the disk (a crash while creating it) holds nothing.
      struct stat st;
      uint64_t size = ::fstat(s->fd, &st) == 0 ? static_cast<uint64_t>(st.st_size) : 0;
      if (i > last_kept) report->truncated_bytes += size;
      else ++report->corrupt_records;
      if (::unlink(s->path.c_str()) != 0) {
        *error = sys_error("cannot remove the empty queue segment " + s->path, errno);
        return false;
      }
      s.reset();
      dir_dirty_ = true;
      continue;
    }
    Segment& seg = *s;
    segs_[seg.number] = std::move(s);
    if (!seg.header_ok) ++report->corrupt_records;  // scanned anyway, with the salt as read
    ++report->segments;
    if (!scan_segment(seg, last && seg.header_ok, report, error)) return false;
  }
  pending_.clear();  // Body records whose Message never arrived: an append cut short, never acknowledged

  // Rebuild what follows from the records: damaged bodies, liveness, the dead-letter clock.
  for (auto& [id, mp] : msgs_) {
    Msg& m = *mp;
    if (m.body_lost) {
      if (std::find(report->corrupt_message_ids.begin(), report->corrupt_message_ids.end(), id) ==
          report->corrupt_message_ids.end())
        report->corrupt_message_ids.push_back(id);
      for (auto& d : m.d)
        if (!finished_state(d.state)) {
          d.state = DeliveryState::DeadLettered;
          d.last_error = kBodyDamaged;
        }
    }
    for (uint32_t t = 0; t < m.d.size(); ++t)
      if (m.d[t].state == DeliveryState::DeadLettered) dead_.insert({dead_time(m.d[t]), id, t});
    refresh_finished(m);
    account(m, true);
    if (!m.finished) ++report->messages;
  }

  // The last segment goes on as the active one when it is intact; otherwise start a new one.
  if (!segs_.empty() && segs_.rbegin()->second->header_ok && segs_.rbegin()->first + 1 == next_number_) {
    active_ = segs_.rbegin()->second.get();
  } else if (!roll(error)) {
    return false;
  }
  if (opts_.fsync != FsyncPolicy::Never) return sync_now(error);
  return true;
}

// ---------------------------------------------------------------------------------------
// Writes

bool StoreImpl::append_message(const QueuedMessage& m, const std::vector<std::pair<const char*, size_t>>& body,
                               int64_t now_ms, std::string* error) {
  std::string ignored;
  if (!error) error = &ignored;
  if (!usable(error)) return false;
  if (m.id.empty() || m.id.size() > kMaxIdLen) {
    *error = "message id must have 1 to 255 characters";
    return false;
  }
  if (msgs_.count(m.id)) {
    *error = "message id " + m.id + " is already queued";
    return false;
  }
  if (m.route.size() > kMaxShortString || m.method.size() > kMaxShortString ||
      m.dedupe_key.size() > kMaxShortString) {
    *error = "message " + m.id + ": route, method or dedupe key longer than 65535 bytes";
    return false;
  }
  if (m.target_heads.size() != m.targets.size()) {
    *error = "message " + m.id + ": targets and target_heads differ in length";
    return false;
  }
  uint64_t body_len = 0;
  for (const auto& [p, n] : body) body_len += n;
  if (body_len != m.body_size) {
    *error = "message " + m.id + ": body_size " + std::to_string(m.body_size) + " but " + std::to_string(body_len) +
             " body bytes given";
    return false;
  }

  std::vector<Delivery> ds(m.targets.size());
  for (uint32_t t = 0; t < ds.size(); ++t) {
    ds[t].message_id = m.id;
    ds[t].target_index = t;
    ds[t].next_attempt_ms = now_ms;
    ds[t].age_base_ms = m.accepted_ms;
  }

  // Body records first, the Message record last: the Message record is the commit point.
  std::vector<OutRecord> recs;
  size_t span = 0, span_off = 0;
  for (uint64_t off = 0; off < body_len;) {
    OutRecord r;
    r.type = RecordType::Body;
    r.head = encode_body_prefix(m.id, off);
    size_t want = static_cast<size_t>(std::min<uint64_t>(kBodyChunk, body_len - off));
    while (r.tail_len < want) {
      const auto& [p, n] = body[span];
      size_t take = std::min(n - span_off, want - r.tail_len);
      if (take > 0) r.tail.push_back({const_cast<char*>(p) + span_off, take});
      r.tail_len += take;
      span_off += take;
      if (span_off == n) {
        ++span;
        span_off = 0;
      }
    }
    off += want;
    recs.push_back(std::move(r));
  }
  OutRecord mr;
  mr.type = RecordType::Message;
  mr.head = encode_message(m, ds, false);
  if (mr.head.size() > kMaxPayload) {
    *error = "message " + m.id + ": metadata of " + std::to_string(mr.head.size()) + " bytes exceeds the 16 MiB record limit";
    return false;
  }
  recs.push_back(std::move(mr));
  uint64_t total = 0;
  for (const auto& r : recs) total += r.framed();

  if (total > opts_.max_bytes || live_bytes_ > opts_.max_bytes - total) {
    *error = "queue full";
    return false;
  }
  if (!maybe_roll(total, error)) return false;
  std::vector<uint64_t> offsets;
  if (!write_out(recs, &offsets, error)) return false;

  auto nm = std::make_unique<Msg>();
  Msg& x = *nm;
  x.m = m;
  x.d = std::move(ds);
  x.anchor = active_->number;
  x.latest_seg.assign(x.d.size(), x.anchor);
  uint64_t body_off = 0;
  for (size_t i = 0; i + 1 < recs.size(); ++i) {
    x.chunks.push_back({x.anchor, offsets[i], static_cast<uint32_t>(recs[i].framed()),
                        static_cast<uint32_t>(recs[i].head.size()), body_off, static_cast<uint32_t>(recs[i].tail_len)});
    body_off += recs[i].tail_len;
  }
  x.anchor_bytes = total;
  x.bytes = total;
  active_->refs[m.id] += total;
  msgs_.emplace(m.id, std::move(nm));
  order_[{m.accepted_ms, m.id}] = &x;
  if (!m.dedupe_key.empty()) note_dedupe(m.route, m.dedupe_key, m.id, m.accepted_ms, x.anchor);
  refresh_finished(x);
  account(x, true);
  return true;
}

bool StoreImpl::write_delivery(Msg& m, const Delivery& in, std::string* error) {
  Delivery nd = in;
  nd.message_id = m.m.id;
  if (nd.last_error.size() > kMaxErrorLen) nd.last_error.resize(kMaxErrorLen);
  std::vector<OutRecord> recs(1);
  recs[0].type = RecordType::Delivery;
  recs[0].head = encode_delivery(nd);
  uint64_t framed = recs[0].framed();
  if (!maybe_roll(framed, error)) return false;
  if (!write_out(recs, nullptr, error)) return false;
  account(m, false);
  set_delivery(m, nd.target_index, nd);
  m.latest_seg[nd.target_index] = active_->number;
  m.bytes += framed;
  active_->refs[m.m.id] += framed;
  refresh_finished(m);
  account(m, true);
  return true;
}

bool StoreImpl::update_delivery(const Delivery& d, std::string* error) {
  std::string ignored;
  if (!error) error = &ignored;
  if (!usable(error)) return false;
  auto it = msgs_.find(d.message_id);
  if (it == msgs_.end()) {
    *error = "no queued message " + d.message_id;
    return false;
  }
  if (d.target_index >= it->second->d.size()) {
    *error = "no delivery " + d.delivery_id();
    return false;
  }
  return write_delivery(*it->second, d, error);
}

// ---------------------------------------------------------------------------------------
// Reads

bool StoreImpl::read_body(const std::string& message_id, std::string* out, std::string* error) const {
  std::string ignored;
  if (!error) error = &ignored;
  out->clear();
  auto it = msgs_.find(message_id);
  if (it == msgs_.end()) {
    *error = "no queued message " + message_id;
    return false;
  }
  const Msg& m = *it->second;
  if (m.body_lost) {
    *error = std::string(kBodyDamaged) + " (message " + message_id + ")";
    return false;
  }
  out->reserve(m.m.body_size);
  std::string buf;
  for (const auto& c : m.chunks) {
    const Segment& s = *segs_.at(c.seg);
    buf.resize(c.rec_len);
    int e = 0;
    if (!pread_all(s.fd, buf.data(), c.rec_len, c.rec_off, &e)) {
      *error = sys_error("cannot read the body of " + message_id + " from " + s.path + " at offset " +
                             std::to_string(c.rec_off),
                         e);
      out->clear();
      return false;
    }
    const auto* p = reinterpret_cast<const unsigned char*>(buf.data());
    uint32_t len = static_cast<uint32_t>(p[0] | p[1] << 8 | p[2] << 16 | static_cast<uint32_t>(p[3]) << 24);
    uint32_t want = static_cast<uint32_t>(p[5] | p[6] << 8 | p[7] << 16 | static_cast<uint32_t>(p[8]) << 24);
    uint32_t crc = crc32c_extend(record_crc_start(s.salt, RecordType::Body), p + kFrameSize, c.rec_len - kFrameSize);
    if (len != c.rec_len - kFrameSize || p[4] != static_cast<uint8_t>(RecordType::Body) || crc != want) {
      *error = std::string(kBodyDamaged) + ": " + s.path + " at offset " + std::to_string(c.rec_off) +
               " fails its checksum (message " + message_id + ")";
      out->clear();
      return false;
    }
    out->append(buf, kFrameSize + c.prefix_len, c.len);
  }
  return true;
}

std::optional<Delivery> StoreImpl::delivery(const std::string& delivery_id) const {
  size_t dot = delivery_id.rfind('.');
  if (dot == std::string::npos || dot + 1 == delivery_id.size() || delivery_id.size() - dot > 10) return std::nullopt;
  uint64_t idx = 0;
  for (size_t i = dot + 1; i < delivery_id.size(); ++i) {
    char c = delivery_id[i];
    if (c < '0' || c > '9') return std::nullopt;
    idx = idx * 10 + static_cast<uint64_t>(c - '0');
  }
  auto it = msgs_.find(delivery_id.substr(0, dot));
  if (it == msgs_.end() || idx >= it->second->d.size()) return std::nullopt;
  return it->second->d[idx];
}

// ---------------------------------------------------------------------------------------
// Compaction

void StoreImpl::erase_message(const std::string& id_ref) {
  const std::string id = id_ref;  // id_ref may live inside the message erased below
  auto it = msgs_.find(id);
  if (it == msgs_.end()) return;
  Msg& m = *it->second;
  account(m, false);
  for (uint32_t t = 0; t < m.d.size(); ++t)
    if (m.d[t].state == DeliveryState::DeadLettered) dead_.erase({dead_time(m.d[t]), id, t});
  order_.erase({m.m.accepted_ms, id});
  msgs_.erase(it);
}

// Writes m (body and a Message record with its current delivery states) to the active segment.
// A body that fails its checksum now is dropped and the message marked damaged (*lost).
bool StoreImpl::copy_message(Msg& m, std::vector<BodyChunk>* chunks, uint64_t* written, bool* lost,
                             std::string* error) {
  uint64_t start = active_->size;
  *lost = m.body_lost;
  std::string body_err;
  if (!*lost) {
    for (const auto& c : m.chunks) {
      const Segment& from = *segs_.at(c.seg);
      std::string buf(c.rec_len, '\0');
      int e = 0;
      bool ok = pread_all(from.fd, buf.data(), c.rec_len, c.rec_off, &e);
      const auto* p = reinterpret_cast<const unsigned char*>(buf.data());
      if (ok) {
        uint32_t want = static_cast<uint32_t>(p[5] | p[6] << 8 | p[7] << 16 | static_cast<uint32_t>(p[8]) << 24);
        ok = crc32c_extend(record_crc_start(from.salt, RecordType::Body), p + kFrameSize, c.rec_len - kFrameSize) ==
             want;
      }
      if (!ok) {
        *lost = true;
        break;
      }
      std::vector<OutRecord> recs(1);
      recs[0].type = RecordType::Body;
      recs[0].head.assign(buf, kFrameSize, c.prefix_len + c.len);
      std::vector<uint64_t> offs;
      if (!write_out(recs, &offs, error)) return false;
      chunks->push_back({active_->number, offs[0], c.rec_len, c.prefix_len, c.body_off, c.len});
    }
    if (*lost) {  // drop the partial copy: the Message record below says the body is gone
      if (!truncate_active(start, error)) return false;
      chunks->clear();
    }
  }
  std::vector<Delivery> ds = m.d;
  if (*lost)
    for (auto& d : ds)
      if (!finished_state(d.state)) {
        d.state = DeliveryState::DeadLettered;
        d.last_error = kBodyDamaged;
      }
  std::vector<OutRecord> recs(1);
  recs[0].type = RecordType::Message;
  recs[0].head = encode_message(m.m, ds, *lost);
  if (!write_out(recs, nullptr, error)) {
    std::string ignored;
    truncate_active(start, &ignored);
    return false;
  }
  *written = active_->size - start;
  return true;
}

bool StoreImpl::reclaim_segment(uint64_t number, int64_t now_ms, std::string* error) {
  Segment& s = *segs_.at(number);
  // Plan: what must be rewritten for the file to go (docs/queue-format.md, Compaction).
  std::vector<Msg*> copies, drops;
  std::vector<std::pair<Msg*, std::vector<uint32_t>>> carries;
  std::vector<std::pair<Msg*, uint64_t>> trims;  // anchored earlier: their bytes here go with the file
  uint64_t estimate = 0;
  for (const auto& [id, b] : s.refs) {
    auto it = msgs_.find(id);
    if (it == msgs_.end()) continue;  // already gone: orphans
    Msg& m = *it->second;
    if (m.anchor > number) continue;  // superseded by a later copy
    if (m.anchor == number) {
      if (m.finished) {
        drops.push_back(&m);
      } else {
        copies.push_back(&m);
        estimate += m.anchor_bytes;
      }
      continue;
    }
    trims.emplace_back(&m, b);
    std::vector<uint32_t> ts;  // anchored earlier: keep the states whose latest record is here
    for (uint32_t t = 0; t < m.latest_seg.size(); ++t)
      if (m.latest_seg[t] == number) ts.push_back(t);
    if (!ts.empty()) {
      estimate += 128 * ts.size();
      carries.emplace_back(&m, std::move(ts));
    }
  }
  auto by_order = [](const Msg* a, const Msg* b) {
    return std::tie(a->m.accepted_ms, a->m.id) < std::tie(b->m.accepted_ms, b->m.id);
  };
  std::sort(copies.begin(), copies.end(), by_order);
  std::sort(carries.begin(), carries.end(), [&](const auto& a, const auto& b) { return by_order(a.first, b.first); });
  std::set<DedupeKey> hosted(s.dedupe_keys.begin(), s.dedupe_keys.end());
  std::vector<DedupeKey> dedupe_carry;
  int64_t dedupe_since = sat_sub(now_ms, dedupe_retention_ms_);
  for (const auto& k : hosted) {
    auto it = dedupe_.find(k);
    if (it == dedupe_.end() || it->second.host != number) continue;
    if (it->second.accepted_ms < dedupe_since) {
      dedupe_.erase(it);
      continue;
    }
    auto mit = msgs_.find(it->second.id);
    if (mit != msgs_.end() && mit->second->anchor == number && !mit->second->finished &&
        mit->second->m.dedupe_key == k.second && mit->second->m.route == k.first)
      continue;  // the copied Message record carries it
    dedupe_carry.push_back(k);
    estimate += 64 + k.first.size() + k.second.size();
  }

  // Execute: write everything to the active segment, sync, then delete the file.
  if (!maybe_roll(estimate, error)) return false;
  uint64_t start = active_->size;
  struct Copied {
    Msg* m;
    std::vector<BodyChunk> chunks;
    uint64_t bytes;
    bool lost;
  };
  std::vector<Copied> copied;
  for (Msg* m : copies) {
    Copied c{m, {}, 0, false};
    if (!copy_message(*m, &c.chunks, &c.bytes, &c.lost, error)) {
      std::string ignored;
      truncate_active(start, &ignored);
      return false;
    }
    copied.push_back(std::move(c));
  }
  std::vector<OutRecord> recs;
  for (const auto& [m, ts] : carries)
    for (uint32_t t : ts) {
      OutRecord r;
      r.type = RecordType::Delivery;
      r.head = encode_delivery(m->d[t]);
      recs.push_back(std::move(r));
    }
  for (const auto& k : dedupe_carry) {
    const DedupeEntry& e = dedupe_.at(k);
    OutRecord r;
    r.type = RecordType::Dedupe;
    r.head = encode_dedupe(e.id, e.accepted_ms, k.first, k.second);
    recs.push_back(std::move(r));
  }
  if (!recs.empty() && !write_out(recs, nullptr, error)) {
    std::string ignored;
    truncate_active(start, &ignored);
    return false;
  }
  // Compaction syncs whatever the fsync policy: it must never leave the log less durable.
  if (!sync_now(error)) return false;

  // The new records are durable: the index follows them now, whatever happens to the unlink.
  Segment& a = *active_;
  a.compaction_bytes += a.size - start;
  for (auto& c : copied) {
    Msg& m = *c.m;
    account(m, false);
    m.anchor = a.number;
    m.chunks = std::move(c.chunks);
    m.anchor_bytes = c.bytes;
    m.bytes = c.bytes;
    m.latest_seg.assign(m.d.size(), a.number);
    if (c.lost && !m.body_lost) {
      m.body_lost = true;
      for (uint32_t t = 0; t < m.d.size(); ++t)
        if (!finished_state(m.d[t].state)) {
          Delivery nd = m.d[t];
          nd.state = DeliveryState::DeadLettered;
          nd.last_error = kBodyDamaged;
          set_delivery(m, t, nd);
        }
    }
    a.refs[m.m.id] += c.bytes;
    account(m, true);
    if (!m.m.dedupe_key.empty()) {
      auto it = dedupe_.find(DedupeKey(m.m.route, m.m.dedupe_key));
      if (it != dedupe_.end() && it->second.id == m.m.id) {
        it->second.host = a.number;
        a.dedupe_keys.emplace_back(m.m.route, m.m.dedupe_key);
      }
    }
    stats_.bytes_copied += c.bytes;
  }
  for (const auto& [m, ts] : carries)
    for (uint32_t t : ts) {
      uint64_t framed = kFrameSize + encode_delivery(m->d[t]).size();
      account(*m, false);
      m->latest_seg[t] = a.number;
      m->bytes += framed;
      a.refs[m->m.id] += framed;
      account(*m, true);
      stats_.bytes_copied += framed;
    }
  for (const auto& k : dedupe_carry) {
    DedupeEntry& e = dedupe_.at(k);
    e.host = a.number;
    a.dedupe_keys.push_back(k);
    stats_.bytes_copied += kFrameSize + encode_dedupe(e.id, e.accepted_ms, k.first, k.second).size();
  }

  if (::unlink(s.path.c_str()) != 0) {
    *error = sys_error("cannot delete queue segment " + s.path, errno);
    return false;  // nothing lost: the file's records are superseded, a later pass retries
  }
  // Each deletion is made durable before the next one: later decisions rely on it.
  if (!fsync_dir(error)) return false;
  for (Msg* m : drops) erase_message(m->m.id);
  for (auto [m, b] : trims) {
    account(*m, false);
    m->bytes -= std::min(b, m->bytes);
    account(*m, true);
  }
  stats_.segments_deleted += 1;
  stats_.bytes_reclaimed += s.size;
  segs_.erase(number);
  return true;
}

void StoreImpl::compact(int64_t now_ms, int64_t dead_letter_retention_ms) {
  stats_ = CompactionStats{};
  std::string error;
  if (!usable(&error)) {
    stats_.error = error;
    return;
  }
  // Dead letters past retention become Deleted (a logged state change, like an operator delete).
  int64_t dead_before = sat_sub(now_ms, dead_letter_retention_ms);
  while (!dead_.empty() && std::get<0>(*dead_.begin()) <= dead_before) {
    auto [t0, id, t] = *dead_.begin();
    auto it = msgs_.find(id);
    if (it == msgs_.end() || t >= it->second->d.size()) {  // cannot happen; never loop on it
      dead_.erase(dead_.begin());
      continue;
    }
    Msg& m = *it->second;
    Delivery nd = m.d[t];
    nd.state = DeliveryState::Deleted;
    if (!write_delivery(m, nd, &error)) {
      stats_.error = error;
      return;
    }
    ++stats_.dead_letters_expired;
  }
  // Dedupe keys past the retention are forgotten (their records go with their segments).
  if (!swept_ || now_ms < last_dedupe_sweep_ || sat_sub(now_ms, last_dedupe_sweep_) >= kDedupeSweepEvery) {
    swept_ = true;
    last_dedupe_sweep_ = now_ms;
    int64_t since = sat_sub(now_ms, dedupe_retention_ms_);
    for (auto it = dedupe_.begin(); it != dedupe_.end();) {
      if (it->second.accepted_ms < since && !msgs_.count(it->second.id)) it = dedupe_.erase(it);
      else ++it;
    }
  }
  // An active segment holding nothing live is sealed once enough new traffic went into it
  // (more than compaction itself wrote there, so carried states cannot make this churn).
  uint64_t fresh = active_->size - kHeaderSize - std::min(active_->compaction_bytes, active_->size - kHeaderSize);
  if (active_->live_anchor_bytes == 0 && fresh >= std::min(opts_.segment_bytes, kGarbageRollMin) &&
      fresh >= active_->compaction_bytes) {
    if (!roll(&error)) {
      stats_.error = error;
      return;
    }
  }
  std::vector<uint64_t> sealed;
  for (const auto& [n, s] : segs_)
    if (s.get() != active_) sealed.push_back(n);
  for (uint64_t n : sealed) {
    Segment& s = *segs_.at(n);
    if (s.sealed_seen_ms == INT64_MIN) s.sealed_seen_ms = now_ms;
    // Nothing live anchored here: the file goes now (at most a few states are carried).
    // Otherwise it is rewritten when at least half of it is garbage, so copying the live
    // half pays for itself, and only after the grace period.
    if (s.live_anchor_bytes > 0 &&
        (s.live_anchor_bytes > s.size / 2 || sat_sub(now_ms, s.sealed_seen_ms) < opts_.rewrite_grace_ms))
      continue;
    if (!reclaim_segment(n, now_ms, &error)) {
      stats_.error = error;
      return;
    }
  }
}

}  // namespace

std::unique_ptr<QueueStore> QueueStore::open(const StoreOptions& opts, RecoveryReport* report, std::string* error) {
  RecoveryReport local_report;
  std::string local_error;
  if (!report) report = &local_report;
  if (!error) error = &local_error;
  *report = RecoveryReport{};
  auto store = std::make_unique<StoreImpl>(opts);
  if (!store->open_dir(error) || !store->recover(report, error)) return nullptr;
  return store;
}

}  // namespace dechunkd
