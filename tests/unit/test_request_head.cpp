// The strict request-head checks (SPEC 4 and 11): every rule with its exact ErrorKind, the order
// of checks, the parsed fields of valid heads, limits at and over their boundary, and scan fed
// every prefix of each head (it must wait, then give the same verdict as the whole head).
#include <doctest/doctest.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "http/request_head.hpp"

using namespace std::string_literals;
using dechunkd::ErrorKind;
using dechunkd::Framing;
using dechunkd::HeadError;
using dechunkd::HeadLimits;
using dechunkd::HeadProgress;
using dechunkd::RequestHead;

namespace {

// What the connection layer would conclude from a buffer: scan, then parse on a complete head.
struct Outcome {
  enum Kind { Accept, NeedMore, Reject } what = NeedMore;
  ErrorKind error = ErrorKind::BadRequest;
  size_t head_len = 0;
};

Outcome run(std::string_view buf, const HeadLimits& lim, RequestHead* head = nullptr) {
  Outcome o;
  size_t len = 0;
  ErrorKind kind = ErrorKind::InternalError;
  switch (dechunkd::scan_request_head(buf, lim, &len, &kind)) {
    case HeadProgress::NeedMore:
      o.what = Outcome::NeedMore;
      return o;
    case HeadProgress::Error:
      o.what = Outcome::Reject;
      o.error = kind;
      return o;
    case HeadProgress::Complete:
      break;
  }
  o.head_len = len;
  RequestHead scratch;
  const auto e = dechunkd::parse_request_head(buf.substr(0, len), lim,
                                              head != nullptr ? head : &scratch);
  if (e) {
    o.what = Outcome::Reject;
    o.error = e->kind;
    REQUIRE(!e->message.empty());
  } else {
    o.what = Outcome::Accept;
  }
  return o;
}

struct Case {
  const char* name;
  std::string head;
  std::optional<ErrorKind> want;  // nullopt: accepted
  bool prefixes_agree = true;     // every prefix yields NeedMore or the final verdict
  HeadLimits lim = {};
};

constexpr auto kBad = ErrorKind::BadRequest;
constexpr auto k501 = ErrorKind::NotImplemented;
constexpr auto k505 = ErrorKind::VersionNotSupported;
constexpr auto k414 = ErrorKind::UriTooLong;
constexpr auto k431 = ErrorKind::HeadersTooLarge;

HeadLimits small_limits() {
  HeadLimits l;
  l.max_uri_size = 16;
  l.max_header_size = 128;
  l.max_headers = 4;
  return l;
}

const std::string kH = "Host: a\r\n";  // the Host every HTTP/1.1 case needs

std::vector<Case> cases() {
  const HeadLimits sl = small_limits();
  const std::string long_uri = "/" + std::string(20, 'u');  // over sl.max_uri_size
  const std::string big = "X-Big: " + std::string(150, 'b') + "\r\n";  // over sl.max_header_size
  return {
      // ---- valid heads ------------------------------------------------------------------
      {"simple GET", "GET / HTTP/1.1\r\n" + kH + "\r\n", std::nullopt},
      {"POST with Content-Length", "POST /x HTTP/1.1\r\n" + kH + "Content-Length: 5\r\n\r\n", std::nullopt},
      {"chunked", "POST /x HTTP/1.1\r\n" + kH + "Transfer-Encoding: chunked\r\n\r\n", std::nullopt},
      {"Chunked in capitals", "POST /x HTTP/1.1\r\n" + kH + "Transfer-Encoding: CHUNKED\r\n\r\n", std::nullopt},
      {"chunked with OWS", "POST /x HTTP/1.1\r\n" + kH + "Transfer-Encoding: \t chunked \t\r\n\r\n", std::nullopt},
      {"HTTP/1.0 without Host", "GET / HTTP/1.0\r\n\r\n", std::nullopt},
      {"HTTP/1.0 with Host", "GET / HTTP/1.0\r\n" + kH + "\r\n", std::nullopt},
      {"leading CRLF ignored", "\r\n\r\nGET / HTTP/1.1\r\n" + kH + "\r\n", std::nullopt},
      {"OPTIONS *", "OPTIONS * HTTP/1.1\r\n" + kH + "\r\n", std::nullopt},
      {"extension method", "M-SEARCH /x HTTP/1.1\r\n" + kH + "\r\n", std::nullopt},
      {"tab inside a value", "GET / HTTP/1.1\r\n" + kH + "X: a\tb\r\n\r\n", std::nullopt},
      {"empty value", "GET / HTTP/1.1\r\n" + kH + "X-Empty:\r\n\r\n", std::nullopt},
      {"obs-text in a value", "GET / HTTP/1.1\r\n" + kH + "X: caf\xc3\xa9 \xff\r\n\r\n", std::nullopt},
      {"visible ASCII in target", "GET /a{b}|c\"d^?q=[1]&r=<2> HTTP/1.1\r\n" + kH + "\r\n", std::nullopt},
      {"bare Upgrade is fine", "GET / HTTP/1.1\r\n" + kH + "Upgrade: websocket\r\n\r\n", std::nullopt},
      {"Connection upgrade without Upgrade", "GET / HTTP/1.1\r\n" + kH + "Connection: upgrade\r\n\r\n", std::nullopt},
      {"Host with port", "GET / HTTP/1.1\r\nHost: example.com:8080\r\n\r\n", std::nullopt},
      {"Host IPv6 literal", "GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n", std::nullopt},
      {"Host empty value", "GET / HTTP/1.1\r\nHost:\r\n\r\n", std::nullopt},
      {"Content-Length zero", "POST / HTTP/1.1\r\n" + kH + "Content-Length: 0\r\n\r\n", std::nullopt},
      {"Content-Length max uint64", "POST / HTTP/1.1\r\n" + kH + "Content-Length: 18446744073709551615\r\n\r\n", std::nullopt},
      {"TE before Host", "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n" + kH + "\r\n", std::nullopt},
      {"Expect 100-continue", "POST / HTTP/1.1\r\n" + kH + "Expect: 100-continue\r\nContent-Length: 1\r\n\r\n", std::nullopt},
      {"Expect other (caller answers 417)", "POST / HTTP/1.1\r\n" + kH + "Expect: something\r\n\r\n", std::nullopt},

      // ---- request line syntax: 400 -----------------------------------------------------
      {"two spaces after method", "GET  / HTTP/1.1\r\n" + kH + "\r\n", kBad},
      {"two spaces before version", "GET /  HTTP/1.1\r\n" + kH + "\r\n", kBad},
      {"leading space", " GET / HTTP/1.1\r\n" + kH + "\r\n", kBad},
      {"tab between parts", "GET\t/ HTTP/1.1\r\n" + kH + "\r\n", kBad},
      {"tab before version", "GET /\tHTTP/1.1\r\n" + kH + "\r\n", kBad},
      {"trailing space after version", "GET / HTTP/1.1 \r\n" + kH + "\r\n", kBad},
      {"no version", "GET /\r\n" + kH + "\r\n", kBad},
      {"no version, trailing space", "GET / \r\n" + kH + "\r\n", kBad},
      {"method only", "GET\r\n\r\n", kBad},
      {"empty target", "GET  HTTP/1.1\r\n" + kH + "\r\n", kBad},
      {"lowercase http", "GET / http/1.1\r\n" + kH + "\r\n", kBad},
      {"version HTTP/1", "GET / HTTP/1\r\n" + kH + "\r\n", kBad},
      {"version HTTP/11", "GET / HTTP/11\r\n" + kH + "\r\n", kBad},
      {"version HTTP/1.1.1", "GET / HTTP/1.1.1\r\n" + kH + "\r\n", kBad},
      {"version HTTP/1.x", "GET / HTTP/1.x\r\n" + kH + "\r\n", kBad},
      {"version FOO/1.1", "GET / FOO/1.1\r\n" + kH + "\r\n", kBad},
      {"version HTTP/10.0", "GET / HTTP/10.0\r\n" + kH + "\r\n", kBad},
      {"version with a space", "GET / HTTP/ 1.1\r\n" + kH + "\r\n", kBad},
      {"method not a token", "GE(T / HTTP/1.1\r\n" + kH + "\r\n", kBad},
      {"NUL in method", "G\0T / HTTP/1.1\r\n"s + kH + "\r\n", kBad},
      {"NUL in target", "GET /a\0b HTTP/1.1\r\n"s + kH + "\r\n", kBad},
      {"DEL in target", "GET /a\x7f HTTP/1.1\r\n" + kH + "\r\n", kBad},
      {"non-ASCII in target", "GET /caf\xc3\xa9 HTTP/1.1\r\n" + kH + "\r\n", kBad},
      {"fragment in target", "GET /a#b HTTP/1.1\r\n" + kH + "\r\n", kBad},
      {"bare LF after request line", "GET / HTTP/1.1\n" + kH + "\r\n", kBad},
      {"bare LF everywhere", "GET / HTTP/1.1\nHost: a\n\n", kBad},
      {"bare CR after request line", "GET / HTTP/1.1\r" + kH + "\r\n", kBad},
      {"bare LF before request line", "\nGET / HTTP/1.1\r\n" + kH + "\r\n", kBad},
      {"bare CR before request line", "\rGET / HTTP/1.1\r\n" + kH + "\r\n", kBad},
      {"request line syntax beats 505", "GET  / HTTP/2.0\r\n\r\n", kBad},

      // ---- version: 505 -----------------------------------------------------------------
      {"HTTP/2.0", "GET / HTTP/2.0\r\n" + kH + "\r\n", k505},
      {"HTTP/0.9", "GET / HTTP/0.9\r\n\r\n", k505},
      {"HTTP/1.2", "GET / HTTP/1.2\r\n" + kH + "\r\n", k505},
      {"HTTP/3.0", "GET / HTTP/3.0\r\n" + kH + "\r\n", k505},
      {"HTTP/2 preface", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", k505},
      {"505 beats field syntax", "GET / HTTP/2.0\r\nHost : a\r\n\r\n", k505},
      {"505 beats CL+TE", "POST / HTTP/2.0\r\n" + kH + "Content-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", k505},
      {"505 beats obs-fold", "GET / HTTP/0.9\r\n folded\r\n\r\n", k505},

      // ---- field syntax: 400 ------------------------------------------------------------
      {"space before colon", "GET / HTTP/1.1\r\nHost : a\r\n\r\n", kBad},
      {"tab before colon", "GET / HTTP/1.1\r\n" + kH + "X\t: 1\r\n\r\n", kBad},
      {"space inside a name", "GET / HTTP/1.1\r\n" + kH + "X Y: 1\r\n\r\n", kBad},
      {"empty header name", "GET / HTTP/1.1\r\n" + kH + ": x\r\n\r\n", kBad},
      {"line without colon", "GET / HTTP/1.1\r\n" + kH + "Foo\r\n\r\n", kBad},
      {"name not a token", "GET / HTTP/1.1\r\n" + kH + "X(Y): 1\r\n\r\n", kBad},
      {"NUL in name", "GET / HTTP/1.1\r\n"s + kH + "X\0Y: 1\r\n\r\n"s, kBad},
      {"NUL in value", "GET / HTTP/1.1\r\n"s + kH + "X: a\0b\r\n\r\n"s, kBad},
      {"control byte in value", "GET / HTTP/1.1\r\n" + kH + "X: a\x01z\r\n\r\n", kBad},
      {"DEL in value", "GET / HTTP/1.1\r\n" + kH + "X: a\x7fz\r\n\r\n", kBad},
      {"ESC in name", "GET / HTTP/1.1\r\n" + kH + "X\x1b: 1\r\n\r\n", kBad},
      {"bare CR in value", "GET / HTTP/1.1\r\n" + kH + "X: a\rb\r\n\r\n", kBad},
      {"bare CR ending a field", "GET / HTTP/1.1\r\n" + kH + "X: a\rY: b\r\n\r\n", kBad},
      {"bare LF ending a field", "GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n", kBad},
      {"bare LF empty line ends head", "GET / HTTP/1.1\r\n" + kH + "\n", kBad},
      {"bare LF empty line, then CRLF", "GET / HTTP/1.1\r\n" + kH + "\n\r\n", kBad},
      {"bare CR empty line", "GET / HTTP/1.1\r\n" + kH + "\r\r\n", kBad},
      {"obs-fold SP", "GET / HTTP/1.1\r\n" + kH + "X: a\r\n b\r\n\r\n", kBad},
      {"obs-fold HTAB", "GET / HTTP/1.1\r\n" + kH + "X: a\r\n\tb\r\n\r\n", kBad},
      {"obs-fold first line", "GET / HTTP/1.1\r\n Host: a\r\n\r\n", kBad},
      {"folded Transfer-Encoding", "POST / HTTP/1.1\r\n" + kH + "Transfer-Encoding: gzip,\r\n chunked\r\n\r\n", kBad},
      {"field syntax beats framing", "POST / HTTP/1.1\r\n" + kH + "Transfer-Encoding: gzip\r\nX : y\r\n\r\n", kBad},

      // ---- framing: CL and TE -----------------------------------------------------------
      {"CL and TE", "POST / HTTP/1.1\r\n" + kH + "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", kBad},
      {"TE then CL", "POST / HTTP/1.1\r\n" + kH + "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n", kBad},
      {"CL and empty TE", "POST / HTTP/1.1\r\n" + kH + "Content-Length: 5\r\nTransfer-Encoding:\r\n\r\n", kBad},
      {"CL and TE gzip: 400 before 501", "POST / HTTP/1.1\r\n" + kH + "Content-Length: 5\r\nTransfer-Encoding: gzip\r\n\r\n", kBad},
      {"TE in HTTP/1.0", "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", kBad},
      {"TE gzip in HTTP/1.0", "POST / HTTP/1.0\r\nTransfer-Encoding: gzip\r\n\r\n", kBad},
      {"CL twice, equal", "POST / HTTP/1.1\r\n" + kH + "Content-Length: 5\r\nContent-Length: 5\r\n\r\n", kBad},
      {"CL twice, differ", "POST / HTTP/1.1\r\n" + kH + "Content-Length: 5\r\nContent-Length: 6\r\n\r\n", kBad},
      {"CL list 5, 5", "POST / HTTP/1.1\r\n" + kH + "Content-Length: 5, 5\r\n\r\n", kBad},
      {"CL trailing comma", "POST / HTTP/1.1\r\n" + kH + "Content-Length: 5,\r\n\r\n", kBad},
      {"CL +5", "POST / HTTP/1.1\r\n" + kH + "Content-Length: +5\r\n\r\n", kBad},
      {"CL -1", "POST / HTTP/1.1\r\n" + kH + "Content-Length: -1\r\n\r\n", kBad},
      {"CL 0x5", "POST / HTTP/1.1\r\n" + kH + "Content-Length: 0x5\r\n\r\n", kBad},
      {"CL empty", "POST / HTTP/1.1\r\n" + kH + "Content-Length:\r\n\r\n", kBad},
      {"CL inner space", "POST / HTTP/1.1\r\n" + kH + "Content-Length: 5 5\r\n\r\n", kBad},
      {"CL 1.5", "POST / HTTP/1.1\r\n" + kH + "Content-Length: 1.5\r\n\r\n", kBad},
      {"CL overflow by one", "POST / HTTP/1.1\r\n" + kH + "Content-Length: 18446744073709551616\r\n\r\n", kBad},
      {"CL overflow huge", "POST / HTTP/1.1\r\n" + kH + "Content-Length: 99999999999999999999999999\r\n\r\n", kBad},
      {"TE , chunked", "POST / HTTP/1.1\r\n" + kH + "Transfer-Encoding: , chunked\r\n\r\n", kBad},
      {"TE chunked,", "POST / HTTP/1.1\r\n" + kH + "Transfer-Encoding: chunked,\r\n\r\n", kBad},
      {"TE empty value", "POST / HTTP/1.1\r\n" + kH + "Transfer-Encoding:\r\n\r\n", kBad},
      {"TE whitespace value", "POST / HTTP/1.1\r\n" + kH + "Transfer-Encoding:   \r\n\r\n", kBad},
      {"TE empty line next to chunked line", "POST / HTTP/1.1\r\n" + kH + "Transfer-Encoding: chunked\r\nTransfer-Encoding:\r\n\r\n", kBad},
      {"TE empty element beats 501", "POST / HTTP/1.1\r\n" + kH + "Transfer-Encoding: gzip, , chunked\r\n\r\n", kBad},
      {"TE chunked, chunked", "POST / HTTP/1.1\r\n" + kH + "Transfer-Encoding: chunked, chunked\r\n\r\n", kBad},
      {"TE chunked + chunked lines", "POST / HTTP/1.1\r\n" + kH + "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", kBad},
      {"TE chunked, gzip", "POST / HTTP/1.1\r\n" + kH + "Transfer-Encoding: chunked, gzip\r\n\r\n", kBad},
      {"TE chunked + gzip lines", "POST / HTTP/1.1\r\n" + kH + "Transfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n", kBad},
      {"TE not-last beats 501", "POST / HTTP/1.1\r\n" + kH + "Transfer-Encoding: gzip, chunked, identity\r\n\r\n", kBad},
      {"TE malformed coding", "POST / HTTP/1.1\r\n" + kH + "Transfer-Encoding: chu nked\r\n\r\n", kBad},
      {"TE quoted garbage", "POST / HTTP/1.1\r\n" + kH + "Transfer-Encoding: \"chunked\"\r\n\r\n", kBad},
      {"TE empty line before chunked line", "POST / HTTP/1.1\r\n" + kH + "Transfer-Encoding: \r\nTransfer-Encoding: chunked\r\n\r\n", kBad},
      {"TE space before colon, with CL", "POST / HTTP/1.1\r\n" + kH + "Transfer-Encoding : chunked\r\nContent-Length: 5\r\n\r\n", kBad},
      {"TE Gzip, Chunked", "POST / HTTP/1.1\r\n" + kH + "Transfer-Encoding: Gzip, Chunked\r\n\r\n", k501},
      {"TE deflate, chunked", "POST / HTTP/1.1\r\n" + kH + "Transfer-Encoding: deflate, chunked\r\n\r\n", k501},
      {"TE gzip, chunked", "POST / HTTP/1.1\r\n" + kH + "Transfer-Encoding: gzip, chunked\r\n\r\n", k501},
      {"TE identity", "POST / HTTP/1.1\r\n" + kH + "Transfer-Encoding: identity\r\n\r\n", k501},
      {"TE identity, chunked", "POST / HTTP/1.1\r\n" + kH + "Transfer-Encoding: identity, chunked\r\n\r\n", k501},
      {"TE gzip alone", "POST / HTTP/1.1\r\n" + kH + "Transfer-Encoding: gzip\r\n\r\n", k501},
      {"TE gzip + chunked lines", "POST / HTTP/1.1\r\n" + kH + "Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n", k501},
      {"TE chunked with a parameter", "POST / HTTP/1.1\r\n" + kH + "Transfer-Encoding: chunked;x=1\r\n\r\n", k501},
      {"TE coding with a quoted parameter", "POST / HTTP/1.1\r\n" + kH + "Transfer-Encoding: foo;q=\"a,b\", chunked\r\n\r\n", k501},
      {"framing beats missing Host", "POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", k501},

      // ---- Host ------------------------------------------------------------------------
      {"HTTP/1.1 without Host", "GET / HTTP/1.1\r\n\r\n", kBad},
      {"Host twice", "GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", kBad},
      {"Host twice in HTTP/1.0", "GET / HTTP/1.0\r\nHost: a\r\nhost: b\r\n\r\n", kBad},
      {"Host with a space", "GET / HTTP/1.1\r\nHost: a b\r\n\r\n", kBad},
      {"Host with a slash", "GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", kBad},
      {"Host with a bad port", "GET / HTTP/1.1\r\nHost: a:8x\r\n\r\n", kBad},
      {"Host list", "GET / HTTP/1.1\r\nHost: a, b\r\n\r\n", kBad},
      {"Host port only", "GET / HTTP/1.1\r\nHost: :80\r\n\r\n", kBad},

      // ---- target forms, CONNECT, Upgrade ---------------------------------------------
      {"absolute-form", "POST http://host/ HTTP/1.1\r\n" + kH + "\r\n", kBad},
      {"absolute-form https", "GET https://host/a?b HTTP/1.1\r\n" + kH + "\r\n", kBad},
      {"authority-form with GET", "GET example.com:80 HTTP/1.1\r\n" + kH + "\r\n", kBad},
      {"relative target", "GET abc HTTP/1.1\r\n" + kH + "\r\n", kBad},
      {"asterisk with GET", "GET * HTTP/1.1\r\n" + kH + "\r\n", kBad},
      {"CONNECT", "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", k501},
      {"CONNECT HTTP/1.0", "CONNECT example.com:443 HTTP/1.0\r\n\r\n", k501},
      {"CONNECT IPv6 authority", "CONNECT [::1]:443 HTTP/1.1\r\nHost: [::1]:443\r\n\r\n", k501},
      {"CONNECT without Host: Host rules first", "CONNECT example.com:443 HTTP/1.1\r\n\r\n", kBad},
      {"Connection upgrade + Upgrade", "GET / HTTP/1.1\r\n" + kH + "Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n", k501},
      {"Connection list with upgrade", "GET / HTTP/1.1\r\n" + kH + "Connection: keep-alive, upgrade\r\nUpgrade: h2c\r\n\r\n", k501},
      {"Upgrade before Connection", "GET / HTTP/1.1\r\n" + kH + "Upgrade: h2c\r\nConnection: UPGRADE\r\n\r\n", k501},
      {"Host rules beat Upgrade", "GET / HTTP/1.1\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n", kBad},

      // ---- limits, complete heads (small limits) --------------------------------------
      {"414 complete", "GET " + long_uri + " HTTP/1.1\r\n" + kH + "\r\n", k414, true, sl},
      {"414 beats 431", "GET " + long_uri + " HTTP/1.1\r\n" + kH + big + "\r\n", k414, true, sl},
      {"414 beats missing Host", "GET " + long_uri + " HTTP/1.1\r\n\r\n", k414, true, sl},
      {"414 beats absolute-form", "GET http://a/" + long_uri + " HTTP/1.1\r\n" + kH + "\r\n", k414, true, sl},
      {"431 by size", "GET / HTTP/1.1\r\n" + kH + big + "\r\n", k431, true, sl},
      {"431 by count", "GET / HTTP/1.1\r\n" + kH + "A: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n\r\n", k431, true, sl},
      {"431 beats missing Host", "GET / HTTP/1.1\r\n" + big + "\r\n", k431, true, sl},
      {"431 beats CONNECT", "CONNECT a:1 HTTP/1.1\r\n" + kH + big + "\r\n", k431, true, sl},
      {"framing beats 431 (fields first)", "POST / HTTP/1.1\r\n" + kH + "Content-Length: 1\r\nTransfer-Encoding: chunked\r\n" + big + "\r\n", kBad, true, sl},
      {"framing 501 beats 431 by count", "POST / HTTP/1.1\r\n" + kH + "Transfer-Encoding: gzip\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n", k501, true, sl},
      // When the limit is crossed before the deciding bytes arrive, early prefixes answer
      // 414/431 at once (SPEC 11); only a head seen whole gets the complete-head order.
      {"framing beats 431 (big field first)", "POST / HTTP/1.1\r\n" + kH + big + "Content-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", kBad, false, sl},
      {"505 beats 414 when complete", "GET " + long_uri + " HTTP/2.0\r\n\r\n", k505, false, sl},
      {"CL+TE beats 414 when complete", "POST " + long_uri + " HTTP/1.1\r\n" + kH + "Content-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", kBad, false, sl},

      // ---- incomplete heads: 414/431 answered at once -----------------------------------
      {"partial: long target, no line end", "GET " + long_uri, k414, true, sl},
      {"partial: long target then version", "GET " + long_uri + " HTTP/1.1\r\nHost: a\r\n", k414, true, sl},
      {"partial: head too big", "GET / HTTP/1.1\r\n" + kH + big, k431, true, sl},
      {"partial: head too big mid-line", "GET / HTTP/1.1\r\n" + kH + "X: " + std::string(200, 'x'), k431, true, sl},
      {"partial: too many fields", "GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\nE: 5\r\n", k431, true, sl},
      {"partial: CL+TE then too big", "POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n" + big, kBad, true, sl},
      {"partial: TE gzip then too big", "POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n" + big, k501, true, sl},
      {"partial: 505 at the request line", "GET / HTTP/2.0\r\nHost: a\r\n", k505},
      {"partial: NUL in a value", "GET / HTTP/1.1\r\nX: \0"s, kBad},
      {"partial: bare LF after request line", "GET / HTTP/1.1\nHo", kBad},
      {"partial: obs-fold", "GET / HTTP/1.1\r\nX: a\r\n ", kBad},
      {"partial: space before colon", "GET / HTTP/1.1\r\nHost :", kBad},
      {"partial: double space", "GET  ", kBad},
      {"partial: bad version start", "GET / X", kBad},
  };
}

std::string describe(const std::string& s) {
  std::string out;
  for (unsigned char c : s) {
    if (c == '\r') out += "\\r";
    else if (c == '\n') out += "\\n";
    else if (c < 0x20 || c >= 0x7f) {
      static constexpr char kHex[] = "0123456789abcdef";
      out += "\\x";
      out += kHex[c >> 4];
      out += kHex[c & 15];
    } else {
      out += static_cast<char>(c);
    }
  }
  return out;
}

}  // namespace

TEST_CASE("request head: table of verdicts, whole and fed byte by byte") {
  int checked = 0;
  for (const Case& c : cases()) {
    const std::string_view name = c.name;
    CAPTURE(name);
    const std::string shown = describe(c.head);
    CAPTURE(shown);
    ++checked;
    const Outcome whole = run(c.head, c.lim);
    if (c.want) {
      REQUIRE(whole.what == Outcome::Reject);
      CHECK(whole.error == *c.want);
    } else {
      REQUIRE(whole.what == Outcome::Accept);
      CHECK(whole.head_len == c.head.size());
    }
    // Every proper prefix: wait, or (when the head says so) already the same verdict.
    for (size_t k = 0; k < c.head.size(); ++k) {
      const Outcome part = run(std::string_view(c.head).substr(0, k), c.lim);
      CAPTURE(k);
      REQUIRE(part.what != Outcome::Accept);
      if (part.what == Outcome::Reject && c.prefixes_agree) CHECK(part.error == whole.error);
    }
    // The same head with a body or the next request behind it: same verdict, same length.
    if (whole.what != Outcome::NeedMore && whole.head_len > 0) {
      const Outcome more = run(c.head + "BODYBYTES\r\n\r\n", c.lim);
      CHECK(more.what == whole.what);
      CHECK(more.head_len == whole.head_len);
    }
  }
  CHECK(checked > 150);
}

TEST_CASE("request head: parsed fields of a valid head") {
  const std::string raw =
      "POST /hooks/a/b?x=1&y=2 HTTP/1.1\r\n"
      "Host: example.com:8443\r\n"
      "Content-Type:application/json \r\n"
      "X-Tab:\t v \t\r\n"
      "content-length: 42\r\n"
      "Expect: 100-Continue\r\n"
      "\r\n";
  RequestHead h;
  h.fields.push_back({"stale", "entry"});  // reset on parse
  REQUIRE_FALSE(dechunkd::parse_request_head(raw, HeadLimits{}, &h));
  CHECK(h.raw == raw);
  CHECK(h.method == "POST");
  CHECK(h.target == "/hooks/a/b?x=1&y=2");
  CHECK(h.path == "/hooks/a/b");
  CHECK(h.query == "x=1&y=2");
  CHECK(h.has_query);
  CHECK(h.version_minor == 1);
  REQUIRE(h.fields.size() == 5);
  CHECK(h.fields[0].name == "Host");
  CHECK(h.fields[0].value == "example.com:8443");
  CHECK(h.fields[1].name == "Content-Type");
  CHECK(h.fields[1].value == "application/json");
  CHECK(h.fields[2].value == "v");
  CHECK(h.fields[3].name == "content-length");
  CHECK(h.fields[4].value == "100-Continue");
  CHECK(h.framing == Framing::ContentLength);
  CHECK(h.content_length == 42);
  CHECK(h.keep_alive);
  CHECK(h.expect_continue);
  CHECK_FALSE(h.expect_other);
  CHECK(h.has_host);
  CHECK(h.host == "example.com:8443");
  // Views point into raw.
  CHECK(h.method.data() == raw.data());
  CHECK(h.fields[0].value.data() >= raw.data());
  CHECK(h.fields[0].value.data() < raw.data() + raw.size());
}

namespace {
// raw must outlive the result (views): string literals here.
RequestHead parse_ok(std::string_view raw) {
  RequestHead h;
  const auto e = dechunkd::parse_request_head(raw, HeadLimits{}, &h);
  CAPTURE(raw);
  REQUIRE_FALSE(e);
  return h;
}
}  // namespace

TEST_CASE("request head: query split") {
  auto h = parse_ok("GET /a? HTTP/1.1\r\nHost: a\r\n\r\n");
  CHECK(h.path == "/a");
  CHECK(h.has_query);
  CHECK(h.query.empty());
  h = parse_ok("GET /a?b?c HTTP/1.1\r\nHost: a\r\n\r\n");
  CHECK(h.path == "/a");
  CHECK(h.query == "b?c");
  h = parse_ok("GET /a/b HTTP/1.1\r\nHost: a\r\n\r\n");
  CHECK(h.path == "/a/b");
  CHECK_FALSE(h.has_query);
  CHECK(h.query.empty());
  h = parse_ok("OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n");
  CHECK(h.path == "*");
}

TEST_CASE("request head: framing values") {
  auto h = parse_ok("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n");
  CHECK(h.framing == Framing::Chunked);
  h = parse_ok("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:  chunked  \r\n\r\n");
  CHECK(h.framing == Framing::Chunked);
  h = parse_ok("POST / HTTP/1.1\r\nHost: a\r\nContent-Length:  5 \r\n\r\n");
  CHECK(h.framing == Framing::ContentLength);
  CHECK(h.content_length == 5);
  h = parse_ok("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 007\r\n\r\n");
  CHECK(h.content_length == 7);
  h = parse_ok("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 18446744073709551615\r\n\r\n");
  CHECK(h.content_length == UINT64_MAX);
  h = parse_ok("GET / HTTP/1.1\r\nHost: a\r\n\r\n");
  CHECK(h.framing == Framing::None);
  CHECK(h.content_length == 0);
}

TEST_CASE("request head: keep-alive from version and Connection") {
  struct KA {
    const char* head;
    bool keep_alive;
  };
  const KA table[] = {
      {"GET / HTTP/1.1\r\nHost: a\r\n\r\n", true},
      {"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", false},
      {"GET / HTTP/1.1\r\nHost: a\r\nConnection: CLOSE\r\n\r\n", false},
      {"GET / HTTP/1.1\r\nHost: a\r\nConnection: foo, Close\r\n\r\n", false},
      {"GET / HTTP/1.1\r\nHost: a\r\nConnection: x\r\nConnection: close\r\n\r\n", false},
      {"GET / HTTP/1.1\r\nHost: a\r\nConnection: closed\r\n\r\n", true},
      {"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\n\r\n", true},
      {"GET / HTTP/1.0\r\n\r\n", false},
      {"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", true},
      {"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", true},
      {"GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n", false},
      {"GET / HTTP/1.0\r\nKeep-Alive: timeout=5\r\n\r\n", false},
      {"GET / HTTP/1.0\r\nConnection: ,, keep-alive ,\r\n\r\n", true},
  };
  for (const KA& k : table) {
    CAPTURE(k.head);
    CHECK(parse_ok(k.head).keep_alive == k.keep_alive);
  }
}

TEST_CASE("request head: Expect") {
  auto h = parse_ok("POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n");
  CHECK(h.expect_continue);
  CHECK_FALSE(h.expect_other);
  h = parse_ok("POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-CONTINUE\r\n\r\n");
  CHECK(h.expect_continue);
  h = parse_ok("POST / HTTP/1.1\r\nHost: a\r\nExpect: 200-ok\r\n\r\n");
  CHECK_FALSE(h.expect_continue);
  CHECK(h.expect_other);
  h = parse_ok("POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue, foo\r\n\r\n");
  CHECK(h.expect_other);
  h = parse_ok("POST / HTTP/1.1\r\nHost: a\r\nExpect:\r\n\r\n");
  CHECK_FALSE(h.expect_continue);
  CHECK_FALSE(h.expect_other);
  // RFC 9110 10.1.1: ignored in HTTP/1.0.
  h = parse_ok("POST / HTTP/1.0\r\nExpect: 100-continue\r\n\r\n");
  CHECK_FALSE(h.expect_continue);
  CHECK_FALSE(h.expect_other);
}

TEST_CASE("request head: Host fields") {
  auto h = parse_ok("GET / HTTP/1.0\r\n\r\n");
  CHECK_FALSE(h.has_host);
  CHECK(h.host.empty());
  h = parse_ok("GET / HTTP/1.1\r\nhOsT:   example.com  \r\n\r\n");
  CHECK(h.has_host);
  CHECK(h.host == "example.com");
  h = parse_ok("GET / HTTP/1.1\r\nHost:\r\n\r\n");
  CHECK(h.has_host);
  CHECK(h.host.empty());
  h = parse_ok("GET / HTTP/1.1\r\nHost: xn--bcher-kva.example:80\r\n\r\n");
  CHECK(h.host == "xn--bcher-kva.example:80");
}

TEST_CASE("request head: limits exactly at and one over the boundary") {
  const HeadLimits base = small_limits();
  // max_uri_size: the request-target itself.
  for (uint64_t extra = 0; extra <= 1; ++extra) {
    const std::string target = "/" + std::string(base.max_uri_size - 1 + extra, 't');
    const std::string raw = "GET " + target + " HTTP/1.1\r\nHost: a\r\n\r\n";
    const Outcome o = run(raw, base);
    CAPTURE(extra);
    if (extra == 0) CHECK(o.what == Outcome::Accept);
    else CHECK((o.what == Outcome::Reject && o.error == k414));
    // Incomplete at the boundary: 414 only once the limit is crossed.
    const std::string partial = "GET " + target;
    const Outcome p = run(partial, base);
    if (extra == 0) CHECK(p.what == Outcome::NeedMore);
    else CHECK((p.what == Outcome::Reject && p.error == k414));
  }
  // max_header_size: request line and field lines with their CRLFs, not the final CRLF.
  for (uint64_t extra = 0; extra <= 1; ++extra) {
    const std::string start = "GET / HTTP/1.1\r\nHost: a\r\nX: ";
    const std::string value(base.max_header_size + extra - start.size() - 2, 'v');
    const std::string lines = start + value + "\r\n";
    REQUIRE(lines.size() == base.max_header_size + extra);
    const Outcome o = run(lines + "\r\n", base);
    CAPTURE(extra);
    if (extra == 0) CHECK(o.what == Outcome::Accept);
    else CHECK((o.what == Outcome::Reject && o.error == k431));
    // Without the final CRLF (and with only its CR): still waiting at the limit.
    const Outcome p = run(lines, base);
    const Outcome pcr = run(lines + "\r", base);
    if (extra == 0) {
      CHECK(p.what == Outcome::NeedMore);
      CHECK(pcr.what == Outcome::NeedMore);
    } else {
      CHECK((p.what == Outcome::Reject && p.error == k431));
      CHECK((pcr.what == Outcome::Reject && pcr.error == k431));
    }
  }
  // max_headers: field count.
  for (uint64_t extra = 0; extra <= 1; ++extra) {
    std::string raw = "GET / HTTP/1.1\r\nHost: a\r\n";
    for (uint64_t i = 1; i < base.max_headers + extra; ++i) raw += "F" + std::to_string(i) + ": v\r\n";
    const Outcome o = run(raw + "\r\n", base);
    const Outcome p = run(raw, base);
    CAPTURE(extra);
    if (extra == 0) {
      CHECK(o.what == Outcome::Accept);
      CHECK(p.what == Outcome::NeedMore);
    } else {
      CHECK((o.what == Outcome::Reject && o.error == k431));
      CHECK((p.what == Outcome::Reject && p.error == k431));
    }
  }
  // Defaults: 8 KiB target accepted, one more byte is 414.
  const HeadLimits def;
  const std::string t8k = "/" + std::string(def.max_uri_size - 1, 'a');
  CHECK(run("GET " + t8k + " HTTP/1.1\r\nHost: a\r\n\r\n", def).what == Outcome::Accept);
  const Outcome over = run("GET " + t8k + "a HTTP/1.1\r\nHost: a\r\n\r\n", def);
  CHECK((over.what == Outcome::Reject && over.error == k414));
}

TEST_CASE("request head: leading CRLFs count toward max_header_size") {
  const HeadLimits lim = small_limits();
  std::string crlfs;
  for (uint64_t i = 0; i < lim.max_header_size; i += 2) crlfs += "\r\n";
  CHECK(run(crlfs, lim).what == Outcome::NeedMore);
  const Outcome over = run(crlfs + "\r\n", lim);
  CHECK((over.what == Outcome::Reject && over.error == k431));
}

TEST_CASE("request head: scan reports the head length and messages") {
  const std::string head = "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\n";
  const std::string buf = head + "abcGET / HTTP/1.1\r\n";
  size_t len = 0;
  ErrorKind kind = ErrorKind::InternalError;
  CHECK(dechunkd::scan_request_head(buf, HeadLimits{}, &len, &kind) == HeadProgress::Complete);
  CHECK(len == head.size());
  HeadError e{ErrorKind::InternalError, ""};
  CHECK(dechunkd::scan_request_head("GET / HTTP/1.1\nX", HeadLimits{}, &len, &e) == HeadProgress::Error);
  CHECK(e.kind == kBad);
  CHECK(e.message.find("bare LF") != std::string_view::npos);
  CHECK(dechunkd::scan_request_head("GET /" + std::string(9000, 'a'), HeadLimits{}, &len, &e) == HeadProgress::Error);
  CHECK(e.kind == k414);
  CHECK(e.message == "the request-target exceeds limits.max_uri_size");
  // Null out-pointers are tolerated.
  CHECK(dechunkd::scan_request_head(head, HeadLimits{}, nullptr, static_cast<ErrorKind*>(nullptr)) == HeadProgress::Complete);
  CHECK(dechunkd::scan_request_head("\n", HeadLimits{}, nullptr, static_cast<ErrorKind*>(nullptr)) == HeadProgress::Error);
  CHECK(dechunkd::scan_request_head("", HeadLimits{}, nullptr, static_cast<ErrorKind*>(nullptr)) == HeadProgress::NeedMore);
}

TEST_CASE("request head: messages name the rule") {
  struct M {
    std::string raw;
    const char* needle;
  };
  const M table[] = {
      {"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
       "Content-Length and Transfer-Encoding are both present"},
      {"POST http://x/ HTTP/1.1\r\nHost: a\r\n\r\n", "absolute-form"},
      {"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n", "obs-fold"},
      {"GET / HTTP/1.1\r\n\r\n", "Host"},
      {"PRI * HTTP/2.0\r\n\r\n", "HTTP/2 connection preface"},
      {"CONNECT a:1 HTTP/1.1\r\nHost: a\r\n\r\n", "CONNECT"},
      {"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", "HTTP/1.0"},
      {"GET / HTTP/1.1\r\nHost : a\r\n\r\n", "colon"},
  };
  for (const M& m : table) {
    RequestHead h;
    const auto e = dechunkd::parse_request_head(m.raw, HeadLimits{}, &h);
    CAPTURE(m.raw);
    REQUIRE(e);
    CHECK(e->message.find(m.needle) != std::string_view::npos);
  }
}

TEST_CASE("request head: parse on input scan would not have delimited") {
  RequestHead h;
  auto e = dechunkd::parse_request_head("GET / HTTP/1.1\r\nHost: a\r\n", HeadLimits{}, &h);
  REQUIRE(e);
  CHECK(e->kind == kBad);
  e = dechunkd::parse_request_head("GET / HTTP/1.1\r\nHost: a\r\n\r\nextra", HeadLimits{}, &h);
  REQUIRE(e);
  CHECK(e->kind == kBad);
  e = dechunkd::parse_request_head("", HeadLimits{}, &h);
  REQUIRE(e);
  CHECK(e->kind == kBad);
  e = dechunkd::parse_request_head("GET / HTTP/1.1\r\nHost: a\r\n\r\n", HeadLimits{}, nullptr);
  CHECK_FALSE(e);
  // The request line is still reported when a later rule fails (for the log).
  e = dechunkd::parse_request_head("POST /p?q HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
                                   HeadLimits{}, &h);
  REQUIRE(e);
  CHECK(e->kind == k501);
  CHECK(h.method == "POST");
  CHECK(h.path == "/p");
}

TEST_CASE("request head: fields past max_headers are not stored") {
  HeadLimits lim;
  lim.max_headers = 2;
  std::string raw = "GET / HTTP/1.1\r\nHost: a\r\n";
  for (int i = 0; i < 50; ++i) raw += "X: y\r\n";
  raw += "\r\n";
  RequestHead h;
  const auto e = dechunkd::parse_request_head(raw, lim, &h);
  REQUIRE(e);
  CHECK(e->kind == k431);
  CHECK(h.fields.size() <= 2);
}

TEST_CASE("iequals") {
  CHECK(dechunkd::iequals("Content-Length", "content-length"));
  CHECK(dechunkd::iequals("", ""));
  CHECK_FALSE(dechunkd::iequals("chunked", "chunke"));
  CHECK_FALSE(dechunkd::iequals("a", "b"));
  CHECK_FALSE(dechunkd::iequals("\xc0", "\xe0"));  // ASCII only
  CHECK_FALSE(dechunkd::iequals("[", "{"));
}

namespace {

// read_request_head (the connection's one-walk path) must answer exactly what scan_request_head
// followed by parse_request_head of the delimited head answers, whatever follows the head.
void check_read_matches_scan_and_parse(std::string_view buf, const HeadLimits& lim) {
  size_t scan_len = 0;
  HeadError scan_err{ErrorKind::InternalError, ""};
  const HeadProgress scan = dechunkd::scan_request_head(buf, lim, &scan_len, &scan_err);

  size_t read_len = 0;
  HeadError read_err{ErrorKind::InternalError, ""};
  std::optional<HeadError> read_bad;
  RequestHead r;
  r.fields.push_back({"stale", "field"});  // a reused RequestHead: nothing of it may survive
  const HeadProgress read = dechunkd::read_request_head(buf, lim, &read_len, &read_err, &r, &read_bad);
  REQUIRE(read == scan);
  if (scan == HeadProgress::Error) {
    CHECK(read_err.kind == scan_err.kind);
    CHECK(read_err.message == scan_err.message);
  }
  if (scan != HeadProgress::Complete) {
    CHECK(r.method.empty());
    CHECK(r.fields.empty());
    return;
  }
  REQUIRE(read_len == scan_len);
  RequestHead p;
  const auto parse_bad = dechunkd::parse_request_head(buf.substr(0, scan_len), lim, &p);
  REQUIRE(read_bad.has_value() == parse_bad.has_value());
  if (parse_bad) {
    CHECK(read_bad->kind == parse_bad->kind);
    CHECK(read_bad->message == parse_bad->message);
  }
  CHECK(r.raw == p.raw);
  CHECK(r.method == p.method);
  CHECK(r.target == p.target);
  CHECK(r.path == p.path);
  CHECK(r.query == p.query);
  CHECK(r.has_query == p.has_query);
  CHECK(r.version_minor == p.version_minor);
  CHECK(r.framing == p.framing);
  CHECK(r.content_length == p.content_length);
  CHECK(r.keep_alive == p.keep_alive);
  CHECK(r.expect_continue == p.expect_continue);
  CHECK(r.expect_other == p.expect_other);
  CHECK(r.host == p.host);
  CHECK(r.has_host == p.has_host);
  REQUIRE(r.fields.size() == p.fields.size());
  for (size_t i = 0; i < r.fields.size(); ++i) {
    CHECK(r.fields[i].name == p.fields[i].name);
    CHECK(r.fields[i].value == p.fields[i].value);
  }
}

}  // namespace

TEST_CASE("request head: random mutations never crash and scan/parse agree") {
  // A small deterministic fuzz: mutate valid heads, check totality (ASan/UBSan catch the rest)
  // and that a Complete scan followed by parse equals parse of the delimited head.
  const std::string seeds[] = {
      "POST /hooks/a?x=1 HTTP/1.1\r\nHost: a:1\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
      "GET / HTTP/1.0\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
      "\r\nPUT /x HTTP/1.1\r\nHost: [::1]\r\nUpgrade: h2c\r\nConnection: upgrade\r\n\r\n",
  };
  const char alphabet[] = {'\r', '\n', ' ', '\t', ':', ',', '\0', 'a', '/', '?', '#', '"', '\x7f', '\xff', '1', ';', '='};
  uint64_t state = 0x9e3779b97f4a7c15ULL;
  auto next = [&]() {
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    return state;
  };
  HeadLimits lim = small_limits();
  lim.max_header_size = 96;
  for (int iter = 0; iter < 20000; ++iter) {
    std::string s = seeds[next() % 3];
    const int edits = 1 + static_cast<int>(next() % 4);
    for (int k = 0; k < edits && !s.empty(); ++k) {
      const size_t pos = next() % s.size();
      switch (next() % 3) {
        case 0: s[pos] = alphabet[next() % sizeof(alphabet)]; break;
        case 1: s.erase(pos, 1 + next() % 3); break;
        default: s.insert(pos, 1, alphabet[next() % sizeof(alphabet)]); break;
      }
    }
    size_t len = 0;
    ErrorKind kind{};
    const HeadProgress p = dechunkd::scan_request_head(s, lim, &len, &kind);
    RequestHead h;
    const auto direct = dechunkd::parse_request_head(s, lim, &h);
    if (p == HeadProgress::Complete) {
      REQUIRE(len <= s.size());
      const auto delimited = dechunkd::parse_request_head(std::string_view(s).substr(0, len), lim, &h);
      if (len == s.size()) {
        CHECK(delimited.has_value() == direct.has_value());
        if (delimited && direct) CHECK(delimited->kind == direct->kind);
      }
      if (!delimited) {
        // Accepted heads satisfy the invariants the caller relies on.
        CHECK((h.version_minor == 0 || h.version_minor == 1));
        CHECK(((!h.target.empty() && h.target[0] == '/') || h.target == "*"));
        CHECK(h.fields.size() <= lim.max_headers);
      }
    } else if (p == HeadProgress::Error) {
      CHECK(direct.has_value());  // bytes scan rejects are never a valid head
    }
    check_read_matches_scan_and_parse(s, lim);
    check_read_matches_scan_and_parse(s + "GET /next HTTP/1.1\r\n\r\n", lim);  // a pipelined rest
  }
}

TEST_CASE("request head: read_request_head is scan then parse, for every prefix") {
  const std::string heads[] = {
      "POST /hooks/a?x=1 HTTP/1.1\r\nHost: a:1\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello",
      "GET / HTTP/1.0\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\nabcde",
      "\r\nPUT /x HTTP/1.1\r\nHost: [::1]\r\nUpgrade: h2c\r\nConnection: upgrade\r\n\r\n",
      "POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
      "GET /" + std::string(100, 'a') + " HTTP/1.1\r\nHost: a\r\n\r\n",
      "GET / HTTP/1.1\r\nHost: a\r\nX: \x01\r\n\r\n",
  };
  for (const HeadLimits& lim : {HeadLimits{}, small_limits()}) {
    for (const std::string& h : heads) {
      for (size_t n = 0; n <= h.size(); ++n) check_read_matches_scan_and_parse(std::string_view(h).substr(0, n), lim);
    }
  }
}

TEST_CASE("request head: parsed in place, then moved with only the head's bytes") {
  // The connection parses the head inside its read block and keeps a copy of the head alone.
  const std::string block =
      "POST /hooks/a?x=1 HTTP/1.1\r\nHost: gw.example:8080\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhello";
  dechunkd::HeadLimits lim{16 * 1024, 100, 8 * 1024};
  size_t len = 0;
  dechunkd::HeadError err{dechunkd::ErrorKind::BadRequest, ""};
  std::optional<dechunkd::HeadError> bad;
  dechunkd::RequestHead h;
  REQUIRE(dechunkd::read_request_head(block, lim, &len, &err, &h, &bad) == dechunkd::HeadProgress::Complete);
  REQUIRE_FALSE(bad);
  std::string copy = block.substr(0, len);
  dechunkd::rebase_request_head(h, block.data(), len, copy.data());
  auto inside = [&](std::string_view v) { return v.empty() || (v.data() >= copy.data() && v.data() + v.size() <= copy.data() + copy.size()); };
  CHECK(h.raw == copy);
  CHECK(h.method == "POST");
  CHECK(h.target == "/hooks/a?x=1");
  CHECK(h.path == "/hooks/a");
  CHECK(h.query == "x=1");
  CHECK(h.host == "gw.example:8080");
  for (auto v : {h.raw, h.method, h.target, h.path, h.query, h.host}) CHECK(inside(v));
  REQUIRE(h.fields.size() == 3);
  CHECK(h.fields[2].name == "X-A");
  CHECK(h.fields[2].value == "b");
  for (const auto& f : h.fields) {
    CHECK(inside(f.name));
    CHECK(inside(f.value));
  }
}
