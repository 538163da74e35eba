// libFuzzer target for the target-response parser (ResponseCodec, http/codec.hpp), fed the way
// ProxyCall feeds it: reads of a size the input chooses, one response after the other while
// the connection stays alive, finish() at the end of the input (the target closed).
//
// Input: byte 0 is a mode byte, the rest is what the target sends.
//   bits 0-4: read size (1..31 bytes per read; 0 = everything in one read)
//   bit 5:    the request was HEAD (no response body, whatever the head declares)
// Readable seeds start with '@' (one read) or 'A'..'_'.
//
// Invariants: never more bytes consumed than given, and all of them on NeedMore; HeadComplete
// at most once per response and before any body byte; the relayed status is a final one in
// 200..999 (1xx are skipped, 101 refused); the reason and header fields carry no control bytes
// such as CR, LF or NUL (they are written to the client as they are); body bytes point into
// the bytes fed; a complete Content-Length body is exactly those bytes; a chunked response ends
// where an independent strict decoder says, with the same body; 1xx/204/304/HEAD responses
// have no body.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "fuzz_check.hpp"
#include "http/codec.hpp"
#include "reference_chunked.hpp"

using namespace dechunkd;

namespace {

constexpr int kMaxResponses = 4;

using fuzz::is_ctl;
using fuzz::is_tchar;

// RFC 9110/9112: reason-phrase and field values are HTAB, SP, VCHAR and obs-text; a control byte
// (CR, LF, NUL, ...) relayed to the client would make the relayed head malformed or split it.
bool no_ctl(std::string_view s) { return std::none_of(s.begin(), s.end(), is_ctl); }

struct Sink : BodySink {
  const char* lo = nullptr;
  const char* hi = nullptr;
  bool head_seen = false;
  std::string body;
  bool on_body_bytes(const char* p, size_t n) override {
    FUZZ_CHECK(lo != nullptr);
    FUZZ_CHECK(p >= lo && p <= hi && n <= static_cast<size_t>(hi - p));
    body.append(p, n);
    return true;
  }
};

void check_head(const ResponseCodec& rc) {
  FUZZ_CHECK(rc.status() >= 200 && rc.status() <= 999);
  FUZZ_CHECK(no_ctl(rc.reason()));
  for (const auto& [name, value] : rc.headers()) {
    FUZZ_CHECK(!name.empty());
    FUZZ_CHECK(std::all_of(name.begin(), name.end(), is_tchar));
    FUZZ_CHECK(no_ctl(value));
  }
  FUZZ_CHECK(!(rc.chunked() && rc.has_content_length()));
}

// raw: the bytes from the first body byte to the end of the input; used: how many of them the
// codec took for this response.
void check_complete(const ResponseCodec& rc, const Sink& sink, std::string_view raw, size_t used) {
  check_head(rc);
  if (rc.no_body()) FUZZ_CHECK(sink.body.empty());
  if (!rc.no_body() && rc.has_content_length()) {
    FUZZ_CHECK(sink.body.size() == rc.content_length());
    FUZZ_CHECK(used == sink.body.size() && raw.substr(0, used) == sink.body);
  }
  if (!rc.no_body() && rc.chunked()) {
    // The response ends where a strict reader says: a reused target connection starts the
    // next response right after it.
    const auto ref = fuzz::reference_dechunk(raw, /*lenient_trailers=*/true);
    FUZZ_CHECK(ref.has_value());
    FUZZ_CHECK(ref->end == used && ref->body == sink.body);
  }
  if (rc.close_delimited())
    FUZZ_CHECK(used == sink.body.size() && raw.substr(0, used) == sink.body);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const size_t read_size = data[0] & 0x1f;
  const bool head_request = (data[0] & 0x20) != 0;
  const char* p0 = reinterpret_cast<const char*>(data + 1);
  const size_t n0 = size - 1;

  ResponseCodec rc;
  Sink sink;
  rc.reset(head_request, &sink);
  int responses = 0;
  bool done = false;      // error, or the connection would not be reused
  size_t body_start = 0;  // offset in the stream of the current response's first body byte
  for (size_t off = 0; off < n0 && !done;) {
    const size_t len = read_size == 0 ? n0 - off : std::min(read_size, n0 - off);
    const char* p = p0 + off;
    size_t left = len;
    off += len;
    while (left > 0 && !done) {
      sink.lo = p;
      sink.hi = p + left;
      const size_t body_before = sink.body.size();
      size_t consumed = left + 1;
      const ResponseCodec::Status st = rc.feed(p, left, &consumed);
      sink.lo = sink.hi = nullptr;
      FUZZ_CHECK(consumed <= left);
      p += consumed;
      left -= consumed;
      switch (st) {
        case ResponseCodec::Status::NeedMore:
          FUZZ_CHECK(left == 0);
          break;
        case ResponseCodec::Status::HeadComplete:
          FUZZ_CHECK(!sink.head_seen);
          FUZZ_CHECK(sink.body.size() == body_before && sink.body.empty());
          sink.head_seen = true;
          body_start = static_cast<size_t>(p - p0);
          check_head(rc);
          break;
        case ResponseCodec::Status::Complete: {
          const size_t end = static_cast<size_t>(p - p0);
          if (!sink.head_seen) body_start = end;  // body-less: complete with its head
          check_complete(rc, sink, std::string_view(p0 + body_start, n0 - body_start),
                         end - body_start);
          ++responses;
          if (!rc.keep_alive() || responses >= kMaxResponses) {
            done = true;
          } else {
            sink.body.clear();
            sink.head_seen = false;
            rc.reset(head_request, &sink);
          }
          break;
        }
        case ResponseCodec::Status::Error:
          FUZZ_CHECK(!rc.error_message().empty());
          done = true;
          break;
      }
    }
  }
  if (!done) {
    // The target closed the connection.
    const ResponseCodec::Status st = rc.finish();
    if (st == ResponseCodec::Status::Complete) {
      FUZZ_CHECK(rc.close_delimited() && sink.head_seen);
      check_complete(rc, sink, std::string_view(p0 + body_start, n0 - body_start), n0 - body_start);
    } else {
      FUZZ_CHECK(st == ResponseCodec::Status::Error);
    }
  }
  return 0;
}
