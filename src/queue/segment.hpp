// The queue log's on-disk format (docs/queue-format.md): segment file names and headers,
// record framing, the payload codec of each record type, and a buffered reader for the
// recovery scan. Pure encoding and decoding; the store (store.cpp) owns files and policy.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "queue/store.hpp"

namespace dechunkd::queue {

// Bytes 0..11 of a segment (magic and version) keep their meaning in every future version;
// everything after them is defined by the version.
inline constexpr char kMagic[8] = {'D', 'E', 'C', 'H', 'U', 'N', 'K', 'Q'};
inline constexpr uint32_t kFormatVersion = 1;
inline constexpr size_t kHeaderSize = 40;
inline constexpr size_t kFrameSize = 9;               // length u32, type u8, crc u32
inline constexpr uint32_t kMaxPayload = 16u << 20;    // larger lengths are damage by definition
inline constexpr uint32_t kBodyChunk = 1u << 20;      // body bytes per Body record (the last may be shorter)
inline constexpr size_t kMaxIdLen = 255;
inline constexpr size_t kMaxShortString = 65535;      // route, method, dedupe key, last_error (u16 lengths)
inline constexpr size_t kMaxErrorLen = 4096;          // last_error is cut to this many bytes

enum class RecordType : uint8_t {
  Message = 1,   // metadata + every delivery's state: the commit point of an accepted request
  Body = 2,      // up to kBodyChunk body bytes at a body offset; precede their Message record
  Delivery = 3,  // one delivery's full state; the last one in log order wins
  Dedupe = 4,    // a dedupe key kept alive after its message was compacted away
};
inline bool known_type(uint8_t t) { return t >= 1 && t <= 4; }

struct SegmentHeader {
  uint32_t version = kFormatVersion;
  uint32_t flags = 0;      // none defined in version 1; a set flag refuses the open
  uint64_t number = 0;     // equals the number in the file name
  int64_t created_ms = 0;  // wall clock at creation (informational)
  uint32_t salt = 0;       // random, seeds every record CRC of this segment
};

enum class HeaderCheck {
  Ok,
  TooShort,      // fewer than kHeaderSize bytes
  BadMagic,      // damaged (or not ours)
  BadCrc,        // damaged
  NewerVersion,  // version > kFormatVersion: refuse, never touch
  BadVersion,    // version 0: damaged
  UnknownFlags,  // a version-1 header with flags we do not know: refuse
};

void encode_header(const SegmentHeader& h, unsigned char out[kHeaderSize]);
HeaderCheck decode_header(const unsigned char* p, size_t n, SegmentHeader* h);

std::string segment_name(uint64_t number);  // "00000000000000000001.seg"
bool parse_segment_name(std::string_view name, uint64_t* number);

// Record CRC: crc32c over salt (u32 LE) ‖ type ‖ payload.
uint32_t record_crc_start(uint32_t salt, RecordType type);
void encode_frame(unsigned char out[kFrameSize], uint32_t payload_len, RecordType type, uint32_t crc);

// Little-endian payload building and parsing.
class PayloadWriter {
 public:
  explicit PayloadWriter(std::string* out) : out_(out) {}
  void u8(uint8_t v) { out_->push_back(static_cast<char>(v)); }
  void u16(uint16_t v) { put(v, 2); }
  void u32(uint32_t v) { put(v, 4); }
  void u64(uint64_t v) { put(v, 8); }
  void i32(int32_t v) { put(static_cast<uint32_t>(v), 4); }
  void i64(int64_t v) { put(static_cast<uint64_t>(v), 8); }
  void str8(std::string_view s) { u8(static_cast<uint8_t>(s.size())); out_->append(s); }
  void str16(std::string_view s) { u16(static_cast<uint16_t>(s.size())); out_->append(s); }
  void str32(std::string_view s) { u32(static_cast<uint32_t>(s.size())); out_->append(s); }

 private:
  void put(uint64_t v, int n) {
    for (int i = 0; i < n; ++i) out_->push_back(static_cast<char>((v >> (8 * i)) & 0xff));
  }
  std::string* out_;
};

class PayloadReader {
 public:
  PayloadReader(const unsigned char* p, size_t n) : p_(p), n_(n) {}
  bool ok() const { return ok_; }
  bool done() const { return ok_ && pos_ == n_; }
  size_t pos() const { return pos_; }
  uint8_t u8() { return static_cast<uint8_t>(get(1)); }
  uint16_t u16() { return static_cast<uint16_t>(get(2)); }
  uint32_t u32() { return static_cast<uint32_t>(get(4)); }
  uint64_t u64() { return get(8); }
  int32_t i32() { return static_cast<int32_t>(static_cast<uint32_t>(get(4))); }
  int64_t i64() { return static_cast<int64_t>(get(8)); }
  std::string str8() { return bytes(u8()); }
  std::string str16() { return bytes(u16()); }
  std::string str32() { return bytes(u32()); }

 private:
  uint64_t get(size_t k);
  std::string bytes(size_t k);
  const unsigned char* p_;
  size_t n_;
  size_t pos_ = 0;
  bool ok_ = true;
};

// Every payload starts with the message id (u8 length + bytes), so a damaged record can
// still name its message. Only a plausible id is returned (1..64 chars of [0-9A-Za-z._-]).
bool peek_id(const unsigned char* payload, size_t n, std::string* id);

std::string encode_message(const QueuedMessage& m, const std::vector<Delivery>& d, bool body_lost);
bool decode_message(const unsigned char* p, size_t n, QueuedMessage* m, std::vector<Delivery>* d, bool* body_lost);
std::string encode_delivery(const Delivery& d);
bool decode_delivery(const unsigned char* p, size_t n, Delivery* d);
std::string encode_body_prefix(const std::string& id, uint64_t body_offset);
bool decode_body_prefix(const unsigned char* p, size_t n, std::string* id, uint64_t* body_offset, size_t* prefix_len);
std::string encode_dedupe(const std::string& id, int64_t accepted_ms, const std::string& route, const std::string& key);
bool decode_dedupe(const unsigned char* p, size_t n, std::string* id, int64_t* accepted_ms, std::string* route,
                   std::string* key);

// Sequential reads of one segment file through a window buffer (pread, no mmap: a file
// truncated under us must give an error, not SIGBUS).
class SegmentReader {
 public:
  SegmentReader(int fd, uint64_t size, std::string path) : fd_(fd), size_(size), path_(std::move(path)) {}
  // Bytes [off, off+n) (off+n <= size), valid until the next call; nullptr with *error on an I/O error.
  const unsigned char* get(uint64_t off, size_t n, std::string* error);
  uint64_t size() const { return size_; }

 private:
  int fd_;
  uint64_t size_;
  std::string path_;
  std::vector<unsigned char> buf_;
  uint64_t buf_off_ = 0;
  size_t buf_len_ = 0;
};

enum class FrameCheck { Ok, Short, BadLength, BadType, BadCrc, IoError };

struct Frame {
  uint32_t len = 0;    // payload length
  uint8_t type = 0;
  const unsigned char* payload = nullptr;  // valid until the reader's next call
};

// Checks the record at off: the frame fits, the length is sane, the type known, the CRC matches.
FrameCheck check_frame(SegmentReader& r, uint64_t off, uint32_t salt, Frame* f, std::string* error);

}  // namespace dechunkd::queue
