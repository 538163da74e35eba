#include "queue/segment.hpp"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>

#include "queue/crc32c.hpp"

namespace dechunkd::queue {

namespace {
void put_le(unsigned char* p, uint64_t v, int n) {
  for (int i = 0; i < n; ++i) p[i] = static_cast<unsigned char>((v >> (8 * i)) & 0xff);
}
uint64_t get_le(const unsigned char* p, int n) {
  uint64_t v = 0;
  for (int i = n - 1; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

constexpr size_t kReadWindow = 1u << 20;

void encode_state(PayloadWriter& w, const Delivery& d) {
  w.u32(d.target_index);
  w.u8(static_cast<uint8_t>(d.state));
  w.u32(d.attempts);
  w.i64(d.first_attempt_ms);
  w.i64(d.last_attempt_ms);
  w.i64(d.next_attempt_ms);
  w.i64(d.age_base_ms);
  w.i32(d.last_status);
  w.str16(std::string_view(d.last_error).substr(0, kMaxErrorLen));
}

bool decode_state(PayloadReader& r, Delivery* d) {
  d->target_index = r.u32();
  uint8_t st = r.u8();
  d->attempts = r.u32();
  d->first_attempt_ms = r.i64();
  d->last_attempt_ms = r.i64();
  d->next_attempt_ms = r.i64();
  d->age_base_ms = r.i64();
  d->last_status = r.i32();
  d->last_error = r.str16();
  if (!r.ok() || st > static_cast<uint8_t>(DeliveryState::Deleted)) return false;
  d->state = static_cast<DeliveryState>(st);
  return true;
}
}  // namespace

void encode_header(const SegmentHeader& h, unsigned char out[kHeaderSize]) {
  std::memcpy(out, kMagic, 8);
  put_le(out + 8, h.version, 4);
  put_le(out + 12, h.flags, 4);
  put_le(out + 16, h.number, 8);
  put_le(out + 24, static_cast<uint64_t>(h.created_ms), 8);
  put_le(out + 32, h.salt, 4);
  put_le(out + 36, crc32c(out, 36), 4);
}

HeaderCheck decode_header(const unsigned char* p, size_t n, SegmentHeader* h) {
  if (n < kHeaderSize) return HeaderCheck::TooShort;
  // Salt and number are handed out even from a damaged header: the scan still tries them.
  h->version = static_cast<uint32_t>(get_le(p + 8, 4));
  h->flags = static_cast<uint32_t>(get_le(p + 12, 4));
  h->number = get_le(p + 16, 8);
  h->created_ms = static_cast<int64_t>(get_le(p + 24, 8));
  h->salt = static_cast<uint32_t>(get_le(p + 32, 4));
  if (std::memcmp(p, kMagic, 8) != 0) return HeaderCheck::BadMagic;
  if (h->version > kFormatVersion) return HeaderCheck::NewerVersion;
  if (h->version == 0) return HeaderCheck::BadVersion;
  if (crc32c(p, 36) != get_le(p + 36, 4)) return HeaderCheck::BadCrc;
  if (h->flags != 0) return HeaderCheck::UnknownFlags;
  return HeaderCheck::Ok;
}

std::string segment_name(uint64_t number) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%020llu.seg", static_cast<unsigned long long>(number));
  return buf;
}

bool parse_segment_name(std::string_view name, uint64_t* number) {
  if (name.size() != 24 || name.substr(20) != ".seg") return false;
  uint64_t v = 0;
  for (size_t i = 0; i < 20; ++i) {
    char c = name[i];
    if (c < '0' || c > '9') return false;
    uint64_t digit = static_cast<uint64_t>(c - '0');
    if (v > (UINT64_MAX - digit) / 10) return false;
    v = v * 10 + digit;
  }
  if (v == 0) return false;
  *number = v;
  return true;
}

uint32_t record_crc_start(uint32_t salt, RecordType type) {
  unsigned char b[5];
  put_le(b, salt, 4);
  b[4] = static_cast<unsigned char>(type);
  return crc32c(b, 5);
}

void encode_frame(unsigned char out[kFrameSize], uint32_t payload_len, RecordType type, uint32_t crc) {
  put_le(out, payload_len, 4);
  out[4] = static_cast<unsigned char>(type);
  put_le(out + 5, crc, 4);
}

uint64_t PayloadReader::get(size_t k) {
  if (!ok_ || n_ - pos_ < k) {
    ok_ = false;
    return 0;
  }
  uint64_t v = get_le(p_ + pos_, static_cast<int>(k));
  pos_ += k;
  return v;
}

std::string PayloadReader::bytes(size_t k) {
  if (!ok_ || n_ - pos_ < k) {
    ok_ = false;
    return {};
  }
  std::string s(reinterpret_cast<const char*>(p_ + pos_), k);
  pos_ += k;
  return s;
}

bool peek_id(const unsigned char* payload, size_t n, std::string* id) {
  if (n < 1) return false;
  size_t len = payload[0];
  if (len == 0 || len > 64 || n < 1 + len) return false;
  for (size_t i = 1; i <= len; ++i) {
    unsigned char c = payload[i];
    bool ok = (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '.' || c == '_' ||
              c == '-';
    if (!ok) return false;
  }
  id->assign(reinterpret_cast<const char*>(payload + 1), len);
  return true;
}

std::string encode_message(const QueuedMessage& m, const std::vector<Delivery>& d, bool body_lost) {
  std::string out;
  out.reserve(64 + m.route.size() + m.method.size() + m.dedupe_key.size() + m.head_fields.size() + m.path.size() + 96 * d.size());
  PayloadWriter w(&out);
  w.str8(m.id);
  w.u8(body_lost ? 1 : 0);
  w.i64(m.accepted_ms);
  w.u64(m.body_size);
  w.str16(m.route);
  w.str16(m.method);
  w.str32(m.path);
  w.str16(m.dedupe_key);
  w.str32(m.head_fields);
  w.u32(static_cast<uint32_t>(m.targets.size()));
  for (const auto& t : m.targets) w.str32(t);
  w.u32(static_cast<uint32_t>(m.target_heads.size()));
  for (const auto& t : m.target_heads) w.str32(t);
  w.u32(static_cast<uint32_t>(d.size()));
  for (const auto& x : d) encode_state(w, x);
  return out;
}

bool decode_message(const unsigned char* p, size_t n, QueuedMessage* m, std::vector<Delivery>* d, bool* body_lost) {
  PayloadReader r(p, n);
  m->id = r.str8();
  uint8_t flags = r.u8();
  m->accepted_ms = r.i64();
  m->body_size = r.u64();
  m->route = r.str16();
  m->method = r.str16();
  m->path = r.str32();
  m->dedupe_key = r.str16();
  m->head_fields = r.str32();
  // Counts are checked against the bytes left so damage cannot ask for a huge allocation.
  uint32_t nt = r.u32();
  if (!r.ok() || nt > n) return false;
  m->targets.clear();
  for (uint32_t i = 0; i < nt && r.ok(); ++i) m->targets.push_back(r.str32());
  uint32_t nr = r.u32();
  if (!r.ok() || nr > n) return false;
  m->target_heads.clear();
  for (uint32_t i = 0; i < nr && r.ok(); ++i) m->target_heads.push_back(r.str32());
  uint32_t nd = r.u32();
  if (!r.ok() || nd != nt || m->id.empty() || (flags & ~1u) != 0) return false;
  d->assign(nd, Delivery{});
  for (uint32_t i = 0; i < nd; ++i) {
    if (!decode_state(r, &(*d)[i]) || (*d)[i].target_index != i) return false;
    (*d)[i].message_id = m->id;
  }
  *body_lost = (flags & 1) != 0;
  return r.done();
}

std::string encode_delivery(const Delivery& d) {
  std::string out;
  PayloadWriter w(&out);
  w.str8(d.message_id);
  encode_state(w, d);
  return out;
}

bool decode_delivery(const unsigned char* p, size_t n, Delivery* d) {
  PayloadReader r(p, n);
  d->message_id = r.str8();
  if (!decode_state(r, d)) return false;
  return r.done() && !d->message_id.empty();
}

std::string encode_body_prefix(const std::string& id, uint64_t body_offset) {
  std::string out;
  PayloadWriter w(&out);
  w.str8(id);
  w.u64(body_offset);
  return out;
}

bool decode_body_prefix(const unsigned char* p, size_t n, std::string* id, uint64_t* body_offset, size_t* prefix_len) {
  PayloadReader r(p, n);
  *id = r.str8();
  *body_offset = r.u64();
  *prefix_len = r.pos();
  return r.ok() && !id->empty();
}

std::string encode_dedupe(const std::string& id, int64_t accepted_ms, const std::string& route, const std::string& key) {
  std::string out;
  PayloadWriter w(&out);
  w.str8(id);
  w.i64(accepted_ms);
  w.str16(route);
  w.str16(key);
  return out;
}

bool decode_dedupe(const unsigned char* p, size_t n, std::string* id, int64_t* accepted_ms, std::string* route,
                   std::string* key) {
  PayloadReader r(p, n);
  *id = r.str8();
  *accepted_ms = r.i64();
  *route = r.str16();
  *key = r.str16();
  return r.done() && !id->empty() && !key->empty();
}

const unsigned char* SegmentReader::get(uint64_t off, size_t n, std::string* error) {
  if (off >= buf_off_ && off - buf_off_ <= buf_len_ && buf_len_ - (off - buf_off_) >= n)
    return buf_.data() + (off - buf_off_);
  size_t want = static_cast<size_t>(std::min<uint64_t>(std::max(n, kReadWindow), size_ - off));
  if (buf_.size() < want) buf_.resize(want);
  size_t got = 0;
  while (got < want) {
    ssize_t r = ::pread(fd_, buf_.data() + got, want - got, static_cast<off_t>(off + got));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) {
      buf_len_ = 0;
      *error = "cannot read " + path_ + " at offset " + std::to_string(off + got) + ": " +
               (r < 0 ? std::strerror(errno) : "unexpected end of file");
      return nullptr;
    }
    got += static_cast<size_t>(r);
  }
  buf_off_ = off;
  buf_len_ = got;
  return buf_.data();
}

FrameCheck check_frame(SegmentReader& r, uint64_t off, uint32_t salt, Frame* f, std::string* error) {
  if (off > r.size() || r.size() - off < kFrameSize) return FrameCheck::Short;
  const unsigned char* h = r.get(off, kFrameSize, error);
  if (!h) return FrameCheck::IoError;
  f->len = static_cast<uint32_t>(get_le(h, 4));
  f->type = h[4];
  uint32_t want = static_cast<uint32_t>(get_le(h + 5, 4));
  if (f->len == 0 || f->len > kMaxPayload) return FrameCheck::BadLength;
  if (!known_type(f->type)) return FrameCheck::BadType;
  if (r.size() - off - kFrameSize < f->len) return FrameCheck::Short;
  // Frame and payload in one window from off: a resync that tries off+1 next stays inside it.
  const unsigned char* rec = r.get(off, kFrameSize + f->len, error);
  if (!rec) return FrameCheck::IoError;
  const unsigned char* p = rec + kFrameSize;
  uint32_t crc = crc32c_extend(record_crc_start(salt, static_cast<RecordType>(f->type)), p, f->len);
  if (crc != want) return FrameCheck::BadCrc;
  f->payload = p;
  return FrameCheck::Ok;
}

}  // namespace dechunkd::queue
