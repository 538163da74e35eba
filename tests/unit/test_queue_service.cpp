// Queue delivery policy helpers (SPEC 6): Retry-After parsing and backoff with full jitter.
#include <doctest/doctest.h>

#include "queue/queue_service.hpp"

using namespace dechunkd;

TEST_CASE("Retry-After: delta-seconds and IMF-fixdate, anything else ignored") {
  const int64_t now = 784111777000;  // Sun, 06 Nov 1994 08:49:37 GMT
  CHECK(parse_retry_after("0", now) == 0);
  CHECK(parse_retry_after("1", now) == 1000);
  CHECK(parse_retry_after(" 120 ", now) == 120'000);
  CHECK(parse_retry_after("Sun, 06 Nov 1994 08:49:47 GMT", now) == 10'000);
  CHECK(parse_retry_after("Sun, 06 Nov 1994 08:49:30 GMT", now) == 0);  // in the past: now
  CHECK(parse_retry_after("9999999999999", now) > 365LL * 24 * 3600 * 1000);
  for (const char* bad : {"", " ", "-1", "1.5", "soon", "Sun, 06 Nov 1994 08:49:47", "06 Nov 1994 08:49:47 GMT",
                          "Sunday, 06-Nov-94 08:49:37 GMT", "1 2"}) {
    CAPTURE(bad);
    CHECK(parse_retry_after(bad, now) == -1);
  }
}

TEST_CASE("backoff: full jitter between initial_backoff and the doubled cap, never above max_backoff") {
  RetryConfig r;
  r.initial_backoff = Millis(1000);
  r.max_backoff = Millis(10'000);
  CHECK(backoff_delay_ms(r, 1, 0) == 1000);
  CHECK(backoff_delay_ms(r, 1, ~0ull) == 1000);  // the first retry waits initial_backoff
  // After n failures the window is [1s, min(10s, 1s * 2^(n-1))].
  const int64_t caps[] = {1000, 2000, 4000, 8000, 10'000, 10'000, 10'000};
  for (uint32_t n = 1; n <= 7; ++n) {
    CAPTURE(n);
    int64_t lo = INT64_MAX, hi = 0;
    for (uint64_t rnd = 0; rnd < 20'000; rnd += 7) {
      int64_t d = backoff_delay_ms(r, n, rnd * 0x9E3779B97F4A7C15ull);
      lo = std::min(lo, d);
      hi = std::max(hi, d);
    }
    CHECK(lo >= 1000);
    CHECK(hi <= caps[n - 1]);
    if (caps[n - 1] > 1000) CHECK(hi > caps[n - 1] - caps[n - 1] / 10);  // the window is used
  }
  CHECK(backoff_delay_ms(r, 1'000'000, 12345) <= 10'000);  // no overflow on many attempts
  r.max_backoff = r.initial_backoff;
  CHECK(backoff_delay_ms(r, 5, 999) == 1000);
}
