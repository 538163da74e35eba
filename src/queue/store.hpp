// The queue's durable store (SPEC 6, issue 5): an append-only, checksummed, segmented log
// under storage.dir/queue, holding accepted requests once (whatever the fan-out) and the
// per-target delivery state changes. Recovery rebuilds the in-memory index from the log.
// Single-threaded: the queue thread owns the store; nothing here takes a lock.
// File format: docs/queue-format.md.
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "config/config.hpp"

namespace dechunkd {

// An accepted webhook as the queue keeps it: everything needed to build each target's
// request later, even after a reload removed the route (SPEC 6).
struct QueuedMessage {
  std::string id;                        // message id (returned in the 202 body)
  std::string route;                     // route name at acceptance
  int64_t accepted_ms = 0;               // wall clock, ms since the epoch
  std::string method;
  std::string path;                      // the request-target as received (dead-letter view)
  std::vector<std::string> targets;      // per target index: full target URL (with query) at acceptance
  // Per target index: the outbound request head built at acceptance by the proxy path's
  // builder (request line and fields, Content-Length included), without the X-Dechunkd-*
  // fields and without the final empty line; a delivery appends those.
  std::vector<std::string> target_heads;
  std::string head_fields;               // the request's header fields as received, minus checked
                                         // credentials ("Name: value\r\n" lines; dead-letter view)
  std::string dedupe_key;                // empty when none
  uint64_t body_size = 0;
  // The body is stored once, in the log; read_body() returns it.
};

enum class DeliveryState : uint8_t {
  Pending = 0,       // waiting for its next attempt (at next_attempt_ms)
  Delivered = 1,     // a 2xx arrived
  DeadLettered = 2,  // gave up: last_status / last_error say why
  Deleted = 3,       // a dead letter an operator deleted
};

struct Delivery {
  std::string message_id;
  uint32_t target_index = 0;
  DeliveryState state = DeliveryState::Pending;
  uint32_t attempts = 0;             // attempts made (reset by a replay)
  int64_t first_attempt_ms = 0;      // 0 = none yet
  int64_t last_attempt_ms = 0;
  int64_t next_attempt_ms = 0;       // for Pending
  int64_t age_base_ms = 0;           // start of the max_age clock (acceptance, or the last replay)
  int last_status = 0;               // 0 = no response
  std::string last_error;
  std::string delivery_id() const { return message_id + "." + std::to_string(target_index); }
};

struct RecoveryReport {
  uint64_t segments = 0;
  uint64_t records = 0;
  uint64_t messages = 0;             // messages with at least one unfinished delivery
  uint64_t truncated_bytes = 0;      // torn/garbage tail removed from the last segment
  uint64_t corrupt_records = 0;      // checksum failures inside the log (skipped, never fatal)
  std::vector<std::string> corrupt_message_ids;  // when the damaged record's id was readable
};

struct StoreOptions {
  std::string dir;                   // storage.dir + "/queue"
  FsyncPolicy fsync = FsyncPolicy::Always;
  uint64_t max_bytes = 1ull << 30;   // storage.max_queue_size (dead letters included)
  uint64_t segment_bytes = 64ull << 20;  // roll to a new segment beyond this
  // How long a dedupe key outlives its compacted message: the largest dedupe.window of any
  // route (set_dedupe_retention() changes it after a reload).
  int64_t dedupe_retention_ms = 24ll * 3600 * 1000;
  // compact() copies live messages out of a mostly-finished segment only once the segment has
  // been sealed this long (by compact()'s clock): a burst is usually delivered before that,
  // and then the segment goes without copying anything.
  int64_t rewrite_grace_ms = 60'000;
};

// What the last compact() did, for the operator log and metrics.
struct CompactionStats {
  uint64_t segments_deleted = 0;
  uint64_t bytes_reclaimed = 0;       // size of the deleted segment files
  uint64_t bytes_copied = 0;          // bytes compaction wrote (live messages moved, states carried)
  uint64_t dead_letters_expired = 0;  // dead letters past retention, now Deleted
  std::string error;                  // empty unless compaction stopped on an I/O error
};

class QueueStore {
 public:
  // Opens (creating the directory), recovers and indexes the log. nullptr with *error when the
  // directory cannot be used; damage inside the log is reported in *report, never fatal.
  static std::unique_ptr<QueueStore> open(const StoreOptions& opts, RecoveryReport* report, std::string* error);
  virtual ~QueueStore() = default;

  // Appends the message and its body, plus one Pending delivery per target (next attempt now).
  // Returns false (queue full: bytes() + size > max_bytes, or a write error with *error).
  // Durable only after sync().
  virtual bool append_message(const QueuedMessage& m, const std::vector<std::pair<const char*, size_t>>& body,
                              int64_t now_ms, std::string* error) = 0;
  // Records a delivery's new state (attempt result, next attempt, dead letter, replay, delete).
  virtual bool update_delivery(const Delivery& d, std::string* error) = 0;
  // Makes everything appended so far durable (fdatasync per policy; a no-op for `never`).
  // Group commit: callers append many records, then sync once.
  virtual bool sync(std::string* error) = 0;

  // The index (rebuilt at open, kept current by the calls above).
  virtual const QueuedMessage* message(const std::string& id) const = 0;
  virtual bool read_body(const std::string& message_id, std::string* out, std::string* error) const = 0;
  virtual std::vector<Delivery> deliveries(DeliveryState state) const = 0;  // in acceptance order
  virtual std::optional<Delivery> delivery(const std::string& delivery_id) const = 0;
  // A dedupe key accepted at or after since_ms: the message id it got.
  virtual std::optional<std::string> dedupe_lookup(const std::string& route, const std::string& key,
                                                   int64_t since_ms) const = 0;
  virtual uint64_t bytes() const = 0;  // live bytes on disk (what max_queue_size limits)

  // Space reclaim: rewrites or deletes segments whose messages are all finished (delivered, or
  // dead letters deleted or past retention_ms). Cheap to call often.
  virtual void compact(int64_t now_ms, int64_t dead_letter_retention_ms) = 0;

  // Additions beyond the first interface (docs/queue-format.md):
  virtual const CompactionStats& last_compaction() const = 0;
  virtual void set_dedupe_retention(int64_t ms) = 0;
  // storage.fsync and storage.max_queue_size after a reload: from the next write or sync on.
  virtual void set_limits(FsyncPolicy fsync, uint64_t max_bytes) = 0;
  virtual uint64_t disk_bytes() const = 0;   // size of all segment files (bytes() plus reclaimable garbage)
  // Empty while healthy. After an fsync or truncate failure the store refuses every write
  // with this message; destroy it and open() again (recovery re-reads what the disk holds).
  virtual std::string failure() const = 0;
};

// Message ids: time-ordered, unique, URL-safe (e.g. 26 chars of Crockford base32 like ULIDs).
std::string new_message_id(int64_t now_ms);

}  // namespace dechunkd
