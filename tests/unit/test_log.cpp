// The hot-path formatting helpers (StringWriter, the RFC 3339 time) and the access log's exact
// line: what operators' log pipelines parse.
#include <doctest/doctest.h>

#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>

#include "core/append.hpp"
#include "log/access_log.hpp"
#include "log/log.hpp"

using namespace std::string_literals;

TEST_CASE("StringWriter: appends after what the string holds and trims to what was written") {
  std::string s = "abc";
  {
    dechunkd::StringWriter w(s, 100);
    w.put("de");
    w.put('f');
    w.decimal(-42);
    w.put(std::string_view("\0x", 2));
    w.put(std::string_view());  // a default view (null data) adds nothing
    CHECK(s.size() == 103);  // the room counts until finish
  }
  CHECK(s == "abcdef-42\0x"s);
}

TEST_CASE("StringWriter: a low estimate grows, never writes past the string") {
  std::string s;
  std::string expect;
  {
    dechunkd::StringWriter w(s, 0);
    for (int i = 0; i < 1000; ++i) {
      w.put("0123456789");
      w.decimal(uint64_t{18446744073709551615u});
      w.put(',');
      expect += "0123456789" "18446744073709551615,";
    }
    w.finish();
    CHECK(s == expect);
    w.finish();  // idempotent
    CHECK(s == expect);
  }
  CHECK(s == expect);
}

TEST_CASE("append_rfc3339_ms: milliseconds with leading zeros, UTC") {
  std::string s = ">";
  {
    dechunkd::StringWriter w(s, 0);  // grows as needed
    dechunkd::append_rfc3339_ms(w, 1764967439007);  // 2025-12-05T20:43:59.007Z
  }
  CHECK(s == ">2025-12-05T20:43:59.007Z");
  CHECK(dechunkd::format_rfc3339_ms(0) == "1970-01-01T00:00:00.000Z");
}

namespace {
std::string read_file(const std::string& path) {
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}
}  // namespace

TEST_CASE("access log: the exact line, JSON escaping, null fields, and a field far past the estimate") {
  char dir[] = "/tmp/dechunkd-test-log-XXXXXX";
  REQUIRE(mkdtemp(dir) != nullptr);
  const std::string path = std::string(dir) + "/access.log";
  dechunkd::AccessLogSink sink;
  std::string error;
  REQUIRE(sink.open(path, &error));
  dechunkd::AccessLog log(&sink);
  REQUIRE(log.enabled());

  dechunkd::AccessRecord r;
  r.time_ms = 1764967439123;
  r.request_id = "req-1";
  r.remote = "192.0.2.7:5555";
  r.route = "epilot";
  r.method = "POST";
  r.path = "/hooks/a\"b\\c\x01\xff";
  r.status = 200;
  r.bytes_in = 1024;
  r.chunked = true;
  r.target_status = 201;
  r.target_ms = 12;
  r.duration_ms = 13;
  log.append(r);

  dechunkd::AccessRecord u;  // unmatched, no target called
  u.time_ms = 0;
  u.request_id = "r2";
  u.remote = "[2001:db8::1]:80";
  u.route = "_unmatched";
  u.method = "GET";
  const std::string controls(3000, '\x02');  // escapes to 6 bytes each: far past the estimate
  u.path = controls;
  u.status = 404;
  log.append(u);
  log.flush();

  std::string escaped;
  for (size_t i = 0; i < controls.size(); ++i) escaped += "\\u0002";
  CHECK(read_file(path) ==
        "{\"time\":\"2025-12-05T20:43:59.123Z\",\"request_id\":\"req-1\",\"remote\":\"192.0.2.7:5555\","
        "\"route\":\"epilot\",\"method\":\"POST\",\"path\":\"/hooks/a\\\"b\\\\c\\u0001\\ufffd\",\"status\":200,"
        "\"bytes_in\":1024,\"chunked\":true,\"target_status\":201,\"target_ms\":12,\"duration_ms\":13}\n"
        "{\"time\":\"1970-01-01T00:00:00.000Z\",\"request_id\":\"r2\",\"remote\":\"[2001:db8::1]:80\","
        "\"route\":\"_unmatched\",\"method\":\"GET\",\"path\":\"" + escaped + "\",\"status\":404,"
        "\"bytes_in\":0,\"chunked\":false,\"target_status\":null,\"target_ms\":null,\"duration_ms\":0}\n");
  unlink(path.c_str());
  rmdir(dir);
}
