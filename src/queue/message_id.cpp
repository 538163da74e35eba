// new_message_id (store.hpp): ULID-style ids, 48-bit milliseconds then 80 random bits, in
// Crockford base32. Within one process ids are strictly increasing: a clock that stands
// still or steps back reuses the last millisecond and increments the random part.
#include <sys/random.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <mutex>

#include "queue/store.hpp"

namespace dechunkd {

namespace {
constexpr char kCrockford[] = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";
constexpr uint64_t kMaxMs = (uint64_t{1} << 48) - 1;

struct IdState {
  std::mutex mu;
  uint64_t last_ms = 0;
  uint8_t rnd[10] = {};  // the 80 random bits of the last id, big-endian
  bool have = false;
};

IdState& id_state() {
  static IdState s;
  return s;
}

void fill_random(uint8_t* p, size_t n) {
  size_t got = 0;
  while (got < n) {
    ssize_t r = ::getrandom(p + got, n - got, 0);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;
    got += static_cast<size_t>(r);
  }
  if (got < n) {
    // getrandom cannot fail on Linux >= 3.17 once the pool is up; keep ids unique anyway.
    uint64_t x = static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count()) ^
                 reinterpret_cast<uintptr_t>(p);
    for (size_t i = got; i < n; ++i) {
      x = x * 6364136223846793005ull + 1442695040888963407ull;
      p[i] = static_cast<uint8_t>(x >> 56);
    }
  }
}

// Adds one to the 80-bit big-endian number; false on wrap-around.
bool increment(uint8_t* rnd) {
  for (int i = 9; i >= 0; --i)
    if (++rnd[i] != 0) return true;
  return false;
}
}  // namespace

std::string new_message_id(int64_t now_ms) {
  uint64_t ms = now_ms < 0 ? 0 : std::min<uint64_t>(static_cast<uint64_t>(now_ms), kMaxMs);
  uint8_t bytes[16];
  {
    IdState& s = id_state();
    std::lock_guard<std::mutex> lock(s.mu);
    if (s.have && ms <= s.last_ms) {
      ms = s.last_ms;
      if (!increment(s.rnd)) {  // 2^80 ids in one millisecond: borrow the next one
        ms = std::min(ms + 1, kMaxMs);
        fill_random(s.rnd, sizeof s.rnd);
      }
    } else {
      fill_random(s.rnd, sizeof s.rnd);
      // Leave headroom so increments within this millisecond practically never wrap.
      s.rnd[0] &= 0x7f;
    }
    s.last_ms = ms;
    s.have = true;
    for (int i = 0; i < 6; ++i) bytes[i] = static_cast<uint8_t>(ms >> (8 * (5 - i)));
    std::memcpy(bytes + 6, s.rnd, 10);
  }
  // 128 bits -> 26 base32 digits; the first digit carries the top 3 bits.
  std::string out(26, '0');
  unsigned __int128 v = 0;
  for (uint8_t b : bytes) v = (v << 8) | b;
  for (int i = 25; i >= 0; --i) {
    out[static_cast<size_t>(i)] = kCrockford[static_cast<unsigned>(v & 31)];
    v >>= 5;
  }
  return out;
}

}  // namespace dechunkd
