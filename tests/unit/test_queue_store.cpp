// Queue store (SPEC 6, docs/queue-format.md): round trips, recovery from torn tails and
// damage at every byte, fan-out storing the body once, queue full, compaction, dedupe,
// ids, and a seeded crash-consistency property test.
#include <doctest/doctest.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <set>

#include "queue/crc32c.hpp"
#include "queue/segment.hpp"
#include "queue/store.hpp"

using namespace dechunkd;
namespace fs = std::filesystem;

namespace {

struct TempDir {
  std::string path;
  TempDir() {
    char tmpl[] = "/tmp/dechunkd-qstore-XXXXXX";
    char* p = ::mkdtemp(tmpl);
    REQUIRE(p != nullptr);
    path = std::string(p) + "/queue";  // the store creates it
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(fs::path(path).parent_path(), ec);
  }
};

StoreOptions options(const std::string& dir, FsyncPolicy p = FsyncPolicy::Never) {
  StoreOptions o;
  o.dir = dir;
  o.fsync = p;
  return o;
}

std::unique_ptr<QueueStore> open_ok(const StoreOptions& o, RecoveryReport* rep = nullptr) {
  RecoveryReport local;
  std::string err;
  auto s = QueueStore::open(o, rep ? rep : &local, &err);
  INFO(err);
  REQUIRE(s != nullptr);
  return s;
}

std::string pattern_body(size_t n, uint32_t seed) {
  std::string s(n, '\0');
  std::mt19937 rng(seed);
  for (auto& c : s) c = static_cast<char>(rng() & 0xff);
  return s;
}

QueuedMessage make_msg(const std::string& id, size_t targets, const std::string& body, int64_t accepted = 1000,
                       const std::string& dedupe = "") {
  QueuedMessage m;
  m.id = id;
  m.route = "audit-fanout";
  m.accepted_ms = accepted;
  m.method = "POST";
  m.path = "/hooks/in?x=1";
  for (size_t i = 0; i < targets; ++i) {
    m.targets.push_back("http://10.0.0." + std::to_string(i) + ":8000/ingest?sig=abc");
    m.target_heads.push_back("POST /ingest?sig=abc HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n");
  }
  m.head_fields = "Content-Type: application/json\r\nX-Custom: v\r\n";
  m.dedupe_key = dedupe;
  m.body_size = body.size();
  return m;
}

// Splits a body into uneven spans, as read blocks would.
std::vector<std::pair<const char*, size_t>> spans(const std::string& body, size_t piece = 7777) {
  std::vector<std::pair<const char*, size_t>> v;
  for (size_t off = 0; off < body.size(); off += piece) v.emplace_back(body.data() + off, std::min(piece, body.size() - off));
  return v;
}

void append_ok(QueueStore& s, const QueuedMessage& m, const std::string& body, int64_t now = 2000) {
  std::string err;
  bool ok = s.append_message(m, spans(body), now, &err);
  INFO(err);
  REQUIRE(ok);
}

void update_ok(QueueStore& s, const Delivery& d) {
  std::string err;
  bool ok = s.update_delivery(d, &err);
  INFO(err);
  REQUIRE(ok);
}

void sync_ok(QueueStore& s) {
  std::string err;
  REQUIRE(s.sync(&err));
}

std::string body_of(const QueueStore& s, const std::string& id) {
  std::string out, err;
  bool ok = s.read_body(id, &out, &err);
  INFO(err);
  REQUIRE(ok);
  return out;
}

bool same(const Delivery& a, const Delivery& b) {
  return a.message_id == b.message_id && a.target_index == b.target_index && a.state == b.state &&
         a.attempts == b.attempts && a.first_attempt_ms == b.first_attempt_ms &&
         a.last_attempt_ms == b.last_attempt_ms && a.next_attempt_ms == b.next_attempt_ms &&
         a.age_base_ms == b.age_base_ms && a.last_status == b.last_status && a.last_error == b.last_error;
}

bool same(const QueuedMessage& a, const QueuedMessage& b) {
  return a.id == b.id && a.route == b.route && a.accepted_ms == b.accepted_ms && a.method == b.method &&
         a.targets == b.targets && a.target_heads == b.target_heads && a.path == b.path && a.head_fields == b.head_fields &&
         a.dedupe_key == b.dedupe_key && a.body_size == b.body_size;
}

std::vector<std::string> segment_files(const std::string& dir) {
  std::vector<std::string> v;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.path().extension() == ".seg") v.push_back(e.path().string());
  std::sort(v.begin(), v.end());
  return v;
}

uint64_t file_size(const std::string& p) { return fs::file_size(p); }

std::string read_file(const std::string& p) {
  std::ifstream f(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

void write_file(const std::string& p, const std::string& data) {
  std::ofstream f(p, std::ios::binary | std::ios::trunc);
  f.write(data.data(), static_cast<std::streamsize>(data.size()));
}

void flip_byte(const std::string& p, uint64_t off, unsigned char mask = 0x5a) {
  std::string d = read_file(p);
  REQUIRE(off < d.size());
  d[off] = static_cast<char>(d[off] ^ mask);
  write_file(p, d);
}

Delivery attempted(Delivery d, DeliveryState st, int status, int64_t at, const std::string& err = "") {
  d.state = st;
  d.attempts += 1;
  if (d.first_attempt_ms == 0) d.first_attempt_ms = at;
  d.last_attempt_ms = at;
  d.next_attempt_ms = at + 1000;
  d.last_status = status;
  d.last_error = err;
  return d;
}

uint64_t body_record_size(const std::string& id, size_t len) { return 9 + 1 + id.size() + 8 + len; }

}  // namespace

TEST_CASE("crc32c: known values, hardware and table paths agree") {
  using dechunkd::queue::crc32c;
  using dechunkd::queue::crc32c_extend;
  using dechunkd::queue::crc32c_extend_portable;
  CHECK(crc32c("123456789", 9) == 0xE3069283u);
  CHECK(crc32c("", 0) == 0u);
  std::string zeros(32, '\0');
  CHECK(crc32c(zeros.data(), 32) == 0x8A9136AAu);  // RFC 3720 B.4
  std::string data = pattern_body(5000, 7);
  for (size_t start : {0, 1, 3, 7}) {
    for (size_t len : {0, 1, 7, 8, 9, 63, 64, 65, 1000, 4993}) {
      uint32_t a = crc32c_extend(0, data.data() + start, len);
      uint32_t b = crc32c_extend_portable(0, data.data() + start, len);
      CHECK(a == b);
      // extending in two pieces equals one pass
      size_t half = len / 3;
      CHECK(crc32c_extend(crc32c_extend(0, data.data() + start, half), data.data() + start + half, len - half) == a);
    }
  }
}

TEST_CASE("segment format: header round trip, names, version refusal") {
  using namespace dechunkd::queue;
  SegmentHeader h;
  h.number = 42;
  h.created_ms = 1700000000123;
  h.salt = 0xdeadbeef;
  unsigned char buf[kHeaderSize];
  encode_header(h, buf);
  CHECK(std::memcmp(buf, "DECHUNKQ", 8) == 0);
  SegmentHeader g;
  CHECK(decode_header(buf, kHeaderSize, &g) == HeaderCheck::Ok);
  CHECK(g.number == 42);
  CHECK(g.created_ms == 1700000000123);
  CHECK(g.salt == 0xdeadbeef);
  CHECK(decode_header(buf, kHeaderSize - 1, &g) == HeaderCheck::TooShort);
  buf[20] ^= 1;
  CHECK(decode_header(buf, kHeaderSize, &g) == HeaderCheck::BadCrc);
  buf[20] ^= 1;
  buf[8] = 2;  // a future version: refused whatever its CRC says
  CHECK(decode_header(buf, kHeaderSize, &g) == HeaderCheck::NewerVersion);
  buf[0] = 'X';
  CHECK(decode_header(buf, kHeaderSize, &g) == HeaderCheck::BadMagic);

  uint64_t n = 0;
  CHECK(segment_name(7) == "00000000000000000007.seg");
  CHECK(parse_segment_name("00000000000000000007.seg", &n));
  CHECK(n == 7);
  CHECK_FALSE(parse_segment_name("00000000000000000000.seg", &n));
  CHECK_FALSE(parse_segment_name("0000000000000000007.seg", &n));
  CHECK_FALSE(parse_segment_name("00000000000000000007.tmp", &n));
  CHECK_FALSE(parse_segment_name("99999999999999999999.seg", &n));  // overflows 64 bits
}

TEST_CASE("append + reopen: fields, binary and multi-MiB bodies, deliveries") {
  TempDir t;
  std::string all_bytes;
  for (int i = 0; i < 256; ++i) all_bytes.push_back(static_cast<char>(i));
  std::string big = pattern_body(5 * 1024 * 1024 + 123, 1);  // six Body records
  std::string exact(1 << 20, 'x');                              // exactly one chunk
  {
    auto s = open_ok(options(t.path, FsyncPolicy::Always));
    CHECK((fs::status(t.path).permissions() & (fs::perms::others_all | fs::perms::group_write)) == fs::perms::none);
    append_ok(*s, make_msg("M1", 2, all_bytes, 1000, "k1"), all_bytes, 1500);
    append_ok(*s, make_msg("M2", 1, big, 1001), big);
    append_ok(*s, make_msg("M3", 3, "", 1002), "");
    append_ok(*s, make_msg("M4", 1, exact, 1003), exact);
    sync_ok(*s);
    CHECK(body_of(*s, "M2") == big);
  }
  RecoveryReport rep;
  auto s = open_ok(options(t.path, FsyncPolicy::Always), &rep);
  CHECK(rep.segments == 1);
  CHECK(rep.messages == 4);
  CHECK(rep.corrupt_records == 0);
  CHECK(rep.truncated_bytes == 0);
  CHECK(same(*s->message("M1"), make_msg("M1", 2, all_bytes, 1000, "k1")));
  CHECK(same(*s->message("M2"), make_msg("M2", 1, big, 1001)));
  CHECK(body_of(*s, "M1") == all_bytes);
  CHECK(body_of(*s, "M2") == big);
  CHECK(body_of(*s, "M3").empty());
  CHECK(body_of(*s, "M4") == exact);
  auto pending = s->deliveries(DeliveryState::Pending);
  REQUIRE(pending.size() == 7);
  CHECK(pending[0].delivery_id() == "M1.0");
  CHECK(pending[1].delivery_id() == "M1.1");
  CHECK(pending[2].delivery_id() == "M2.0");
  CHECK(pending[6].delivery_id() == "M4.0");
  auto d = s->delivery("M1.1");
  REQUIRE(d);
  CHECK(d->state == DeliveryState::Pending);
  CHECK(d->next_attempt_ms == 1500);
  CHECK(d->age_base_ms == 1000);
  CHECK(d->attempts == 0);
  CHECK_FALSE(s->delivery("M1.2"));
  CHECK_FALSE(s->delivery("nope.0"));
  CHECK_FALSE(s->delivery("M1"));
  CHECK(s->message("nope") == nullptr);
  std::string out, err;
  CHECK_FALSE(s->read_body("nope", &out, &err));
}

TEST_CASE("append: refuses bad input with a clear error") {
  TempDir t;
  auto s = open_ok(options(t.path));
  std::string err;
  auto m = make_msg("A", 1, "abc");
  CHECK_FALSE(s->append_message(m, spans("ab"), 1, &err));
  CHECK(err.find("body_size") != std::string::npos);
  append_ok(*s, m, "abc");
  CHECK_FALSE(s->append_message(m, spans("abc"), 1, &err));
  CHECK(err.find("already queued") != std::string::npos);
  auto bad = make_msg("", 1, "");
  CHECK_FALSE(s->append_message(bad, {}, 1, &err));
  Delivery d;
  d.message_id = "A";
  d.target_index = 5;
  CHECK_FALSE(s->update_delivery(d, &err));
  CHECK(err.find("A.5") != std::string::npos);
  d.message_id = "B";
  CHECK_FALSE(s->update_delivery(d, &err));
}

TEST_CASE("fan-out stores the body once") {
  TempDir t;
  auto s = open_ok(options(t.path));
  std::string body = pattern_body(512 * 1024, 3);
  uint64_t b0 = s->disk_bytes();
  append_ok(*s, make_msg("ONE", 1, body), body);
  uint64_t b1 = s->disk_bytes();
  append_ok(*s, make_msg("EIGHT", 8, body), body);
  uint64_t b2 = s->disk_bytes();
  uint64_t one = b1 - b0, eight = b2 - b1;
  CHECK(one >= body.size());
  CHECK(one < body.size() + 1024);
  CHECK(eight < one + 8 * 200);  // seven more targets cost their URLs and states, not the body
  CHECK(file_size(segment_files(t.path)[0]) == b2);
  CHECK(s->bytes() == one + eight);
}

TEST_CASE("delivery updates survive reopen, the last one wins") {
  TempDir t;
  Delivery last;
  {
    StoreOptions o = options(t.path, FsyncPolicy::Batch);
    o.segment_bytes = 4096;  // updates spread over several segments
    auto s = open_ok(o);
    append_ok(*s, make_msg("A", 2, "hello"), "hello");
    Delivery d = *s->delivery("A.0");
    for (int i = 0; i < 60; ++i) {
      d = attempted(d, DeliveryState::Pending, 503, 10'000 + i, "upstream said 503");
      update_ok(*s, d);
    }
    d = attempted(d, DeliveryState::DeadLettered, 400, 20'000, "status 400 is not retried");
    update_ok(*s, d);
    last = d;
    Delivery d1 = attempted(*s->delivery("A.1"), DeliveryState::Delivered, 200, 10'500);
    update_ok(*s, d1);
    sync_ok(*s);
    CHECK(segment_files(t.path).size() > 1);
  }
  auto s = open_ok(options(t.path));
  CHECK(same(*s->delivery("A.0"), last));
  CHECK(s->delivery("A.1")->state == DeliveryState::Delivered);
  auto dead = s->deliveries(DeliveryState::DeadLettered);
  REQUIRE(dead.size() == 1);
  CHECK(dead[0].last_error == "status 400 is not retried");
  CHECK(dead[0].attempts == 61);
  CHECK(s->deliveries(DeliveryState::Pending).empty());
}

TEST_CASE("torn tail: a cut at every byte of the last records keeps everything before it") {
  TempDir t;
  std::string seg;
  uint64_t s0 = 0, s_body = 0, s1 = 0, s2 = 0;
  Delivery a_before;
  const std::string cbody = pattern_body(100, 9);
  {
    auto s = open_ok(options(t.path));
    append_ok(*s, make_msg("A", 1, "aaaa"), "aaaa");
    append_ok(*s, make_msg("B", 2, "bbbbbb", 1001, "kb"), "bbbbbb");
    a_before = *s->delivery("A.0");
    seg = segment_files(t.path)[0];
    s0 = file_size(seg);
    append_ok(*s, make_msg("C", 1, cbody), cbody);
    s_body = s0 + body_record_size("C", cbody.size());
    s1 = file_size(seg);
    update_ok(*s, attempted(a_before, DeliveryState::Delivered, 200, 5000));
    s2 = file_size(seg);
  }
  const std::string full = read_file(seg);
  REQUIRE(full.size() == s2);
  for (uint64_t cut = s0; cut <= s2; ++cut) {
    CAPTURE(cut);
    write_file(seg, full.substr(0, cut));
    RecoveryReport rep;
    auto s = open_ok(options(t.path), &rep);
    uint64_t boundary = cut >= s2 ? s2 : cut >= s1 ? s1 : cut >= s_body ? s_body : s0;
    CHECK(rep.truncated_bytes == cut - boundary);
    CHECK(rep.corrupt_records == 0);
    CHECK(file_size(seg) == boundary);
    CHECK(body_of(*s, "A") == "aaaa");
    CHECK(body_of(*s, "B") == "bbbbbb");
    CHECK(s->dedupe_lookup("audit-fanout", "kb", 0) == std::optional<std::string>("B"));
    if (cut >= s1) {
      CHECK(body_of(*s, "C") == cbody);
    } else {
      CHECK(s->message("C") == nullptr);
    }
    CHECK(s->delivery("A.0")->state == (cut == s2 ? DeliveryState::Delivered : DeliveryState::Pending));
    if (cut % 16 == 0) {  // the recovered log takes new records, and they survive
      append_ok(*s, make_msg("D", 1, "dd"), "dd");
      s.reset();
      RecoveryReport rep2;
      auto s2r = open_ok(options(t.path), &rep2);
      CHECK(rep2.truncated_bytes == 0);
      CHECK(rep2.corrupt_records == 0);
      CHECK(body_of(*s2r, "D") == "dd");
    }
  }
}

TEST_CASE("garbage after the last record is truncated") {
  for (size_t n : {1, 8, 9, 10, 100, 5000}) {
    for (bool zeros : {false, true}) {
      CAPTURE(n);
      CAPTURE(zeros);
      TempDir t;
      {
        auto s = open_ok(options(t.path));
        append_ok(*s, make_msg("A", 1, "abc"), "abc");
        update_ok(*s, attempted(*s->delivery("A.0"), DeliveryState::Pending, 503, 7000));
      }
      std::string seg = segment_files(t.path)[0];
      uint64_t good = file_size(seg);
      std::string data = read_file(seg) + (zeros ? std::string(n, '\0') : pattern_body(n, static_cast<uint32_t>(n)));
      write_file(seg, data);
      RecoveryReport rep;
      auto s = open_ok(options(t.path), &rep);
      CHECK(rep.truncated_bytes == n);
      CHECK(rep.corrupt_records == 0);
      CHECK(file_size(seg) == good);
      CHECK(body_of(*s, "A") == "abc");
      CHECK(s->delivery("A.0")->last_status == 503);
    }
  }
}

TEST_CASE("a flipped byte anywhere inside an earlier message is skipped and counted, others intact") {
  TempDir t;
  const std::string bbody = pattern_body(64, 11);
  std::string seg;
  uint64_t sb = 0, sb_msg = 0, sc = 0;
  {
    auto s = open_ok(options(t.path));
    append_ok(*s, make_msg("AAAAAAAA", 1, "first"), "first");
    seg = segment_files(t.path)[0];
    sb = file_size(seg);
    append_ok(*s, make_msg("BBBBBBBB", 2, bbody, 1001), bbody);
    sb_msg = sb + body_record_size("BBBBBBBB", bbody.size());
    sc = file_size(seg);
    append_ok(*s, make_msg("CCCCCCCC", 1, "third", 1002), "third");
    update_ok(*s, attempted(*s->delivery("AAAAAAAA.0"), DeliveryState::DeadLettered, 410, 9000, "gone"));
  }
  const std::string full = read_file(seg);
  for (uint64_t off = sb; off < sc; ++off) {
    CAPTURE(off);
    std::string d = full;
    d[off] = static_cast<char>(d[off] ^ 0x20);
    write_file(seg, d);
    RecoveryReport rep;
    auto s = open_ok(options(t.path), &rep);
    CHECK(rep.corrupt_records == 1);
    CHECK(rep.truncated_bytes == 0);
    CHECK(body_of(*s, "AAAAAAAA") == "first");
    CHECK(body_of(*s, "CCCCCCCC") == "third");
    CHECK(s->delivery("AAAAAAAA.0")->last_error == "gone");
    if (off < sb_msg) {  // a Body record: the message is kept as a dead letter, its body unreadable
      REQUIRE(s->message("BBBBBBBB") != nullptr);
      CHECK(std::count(rep.corrupt_message_ids.begin(), rep.corrupt_message_ids.end(), "BBBBBBBB") == 1);
      auto bd = s->delivery("BBBBBBBB.1");
      CHECK(bd->state == DeliveryState::DeadLettered);
      CHECK(bd->last_error == "stored body is damaged");
      std::string out, err;
      CHECK_FALSE(s->read_body("BBBBBBBB", &out, &err));
      CHECK(err.find("stored body is damaged") != std::string::npos);
      CHECK(rep.messages == 3);
    } else {  // the Message record: the message is gone; the id is reported when readable
      CHECK(s->message("BBBBBBBB") == nullptr);
      if (off >= sb_msg + 10 + 8) CHECK(rep.corrupt_message_ids == std::vector<std::string>{"BBBBBBBB"});
    }
  }
}

TEST_CASE("damage inside an earlier segment and a damaged segment header") {
  TempDir t;
  StoreOptions o = options(t.path);
  o.segment_bytes = 4096;
  std::vector<std::string> ids;
  {
    auto s = open_ok(o);
    for (int i = 0; i < 12; ++i) {
      ids.push_back("M" + std::to_string(100 + i));
      std::string b = pattern_body(1500, static_cast<uint32_t>(i));
      append_ok(*s, make_msg(ids.back(), 1, b, 1000 + i), b);
    }
  }
  auto files = segment_files(t.path);
  REQUIRE(files.size() >= 4);
  // Garbage at the end of the first segment (it is not the last): counted, not cut.
  {
    std::string d = read_file(files[0]) + pattern_body(77, 5);
    write_file(files[0], d);
  }
  RecoveryReport rep;
  {
    auto s = open_ok(o, &rep);
    CHECK(rep.corrupt_records == 1);
    CHECK(rep.truncated_bytes == 0);
    for (size_t i = 0; i < ids.size(); ++i) CHECK(body_of(*s, ids[i]) == pattern_body(1500, static_cast<uint32_t>(i)));
  }
  // A damaged header in the second segment: reported, its records still read (the salt survived).
  flip_byte(files[1], 20);
  {
    auto s = open_ok(o, &rep);
    CHECK(rep.corrupt_records == 2);
    for (size_t i = 0; i < ids.size(); ++i) CHECK(s->message(ids[i]) != nullptr);
  }
}

TEST_CASE("a newer format version refuses the open and changes nothing") {
  TempDir t;
  {
    auto s = open_ok(options(t.path));
    append_ok(*s, make_msg("A", 1, "x"), "x");
  }
  std::string seg = segment_files(t.path)[0];
  std::string d = read_file(seg);
  d[8] = 2;
  d += "trailing bytes a version 1 reader would cut";
  write_file(seg, d);
  RecoveryReport rep;
  std::string err;
  auto s = QueueStore::open(options(t.path), &rep, &err);
  CHECK(s == nullptr);
  CHECK(err.find(seg) != std::string::npos);
  CHECK(err.find("version 2") != std::string::npos);
  CHECK(read_file(seg) == d);
  CHECK(segment_files(t.path).size() == 1);
}

TEST_CASE("a second open of the same directory is refused") {
  TempDir t;
  auto s = open_ok(options(t.path));
  std::string err;
  RecoveryReport rep;
  CHECK(QueueStore::open(options(t.path), &rep, &err) == nullptr);
  CHECK(err.find("already open") != std::string::npos);
}

TEST_CASE("a torn segment creation is removed") {
  TempDir t;
  {
    auto s = open_ok(options(t.path));
    append_ok(*s, make_msg("A", 1, "x"), "x");
  }
  write_file(t.path + "/00000000000000000002.seg", std::string(40, '\0'));
  RecoveryReport rep;
  auto s = open_ok(options(t.path), &rep);
  CHECK(rep.truncated_bytes == 40);
  CHECK(rep.corrupt_records == 0);
  s.reset();
  write_file(t.path + "/00000000000000000009.seg", "DECH");
  s = open_ok(options(t.path), &rep);
  CHECK(rep.truncated_bytes == 4);
  CHECK(rep.corrupt_records == 0);
  CHECK(body_of(*s, "A") == "x");
  append_ok(*s, make_msg("B", 1, "y"), "y");
  s.reset();
  s = open_ok(options(t.path), &rep);
  CHECK(rep.corrupt_records == 0);
  CHECK(body_of(*s, "B") == "y");
}

TEST_CASE("queue full: refused with 'queue full', dead letters count, finished messages free space") {
  TempDir t;
  StoreOptions o = options(t.path);
  o.max_bytes = 20'000;
  auto s = open_ok(o);
  std::string body(3000, 'q');
  int n = 0;
  std::string err;
  while (s->append_message(make_msg("F" + std::to_string(n), 1, body), spans(body), 1, &err)) ++n;
  CHECK(err == "queue full");
  CHECK(n == 6);
  CHECK(s->bytes() <= o.max_bytes);
  uint64_t before = s->bytes();
  // A dead letter still counts.
  update_ok(*s, attempted(*s->delivery("F0.0"), DeliveryState::DeadLettered, 400, 100));
  CHECK_FALSE(s->append_message(make_msg("X", 1, body), spans(body), 1, &err));
  CHECK(s->bytes() > before);
  // Delivered messages stop counting at once (their disk space goes at compaction).
  update_ok(*s, attempted(*s->delivery("F1.0"), DeliveryState::Delivered, 200, 100));
  update_ok(*s, attempted(*s->delivery("F2.0"), DeliveryState::Delivered, 200, 100));
  append_ok(*s, make_msg("X", 1, body), body);
  s.reset();
  s = open_ok(o);
  CHECK(s->message("X") != nullptr);
  CHECK(s->bytes() <= o.max_bytes);
  std::string bigger(5000, 'y');
  CHECK_FALSE(s->append_message(make_msg("Y", 1, bigger), spans(bigger), 1, &err));
  CHECK(err == "queue full");
}

TEST_CASE("segments roll at segment_bytes") {
  TempDir t;
  StoreOptions o = options(t.path);
  o.segment_bytes = 8192;
  auto s = open_ok(o);
  for (int i = 0; i < 20; ++i) append_ok(*s, make_msg("R" + std::to_string(i), 1, std::string(1000, 'r')), std::string(1000, 'r'));
  std::string big(20000, 'B');  // larger than a segment: gets one of its own
  append_ok(*s, make_msg("BIG", 1, big), big);
  append_ok(*s, make_msg("AFTER", 1, "a"), "a");
  auto files = segment_files(t.path);
  CHECK(files.size() >= 4);
  int oversized = 0;
  for (const auto& f : files)
    if (file_size(f) > o.segment_bytes) ++oversized;
  CHECK(oversized == 1);
  s.reset();
  RecoveryReport rep;
  s = open_ok(o, &rep);
  CHECK(rep.segments == files.size());
  CHECK(body_of(*s, "BIG") == big);
  CHECK(rep.messages == 22);
}

TEST_CASE("compaction deletes finished segments, keeps and moves pending ones, survives reopen") {
  TempDir t;
  StoreOptions o = options(t.path);
  o.segment_bytes = 8192;
  std::map<std::string, std::string> bodies;
  auto s = open_ok(o);
  for (int i = 0; i < 40; ++i) {
    std::string id = "C" + std::to_string(1000 + i);
    bodies[id] = pattern_body(900 + i, static_cast<uint32_t>(i));
    append_ok(*s, make_msg(id, 2, bodies[id], 1000 + i, "key" + std::to_string(i)), bodies[id]);
  }
  size_t segs_before = segment_files(t.path).size();
  REQUIRE(segs_before >= 5);
  // Finish everything except C1005 (pending, early segment) and C1030 (dead letter).
  for (int i = 0; i < 40; ++i) {
    std::string id = "C" + std::to_string(1000 + i);
    if (i == 5) continue;
    for (uint32_t tgt = 0; tgt < 2; ++tgt) {
      Delivery d = *s->delivery(id + "." + std::to_string(tgt));
      if (i == 30 && tgt == 1) update_ok(*s, attempted(d, DeliveryState::DeadLettered, 400, 50'000));
      else update_ok(*s, attempted(d, DeliveryState::Delivered, 200, 50'000));
    }
  }
  uint64_t disk_before = s->disk_bytes();
  std::string first_file;  // the segment that holds C1005's Message record
  for (const std::string& f : segment_files(t.path)) {
    std::ifstream in(f, std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (first_file.empty() && bytes.find("C1005") != std::string::npos) first_file = f;
  }
  REQUIRE(!first_file.empty());
  s->compact(60'000, 1'000'000);
  CHECK(s->last_compaction().error.empty());
  CHECK(s->last_compaction().segments_deleted >= 3);  // the finished ones go at once
  CHECK(fs::exists(first_file));                      // C1005 is not copied during the grace
  CHECK(body_of(*s, "C1005") == bodies["C1005"]);
  s->compact(60'000 + o.rewrite_grace_ms, 1'000'000);  // after the grace: C1005's file is rewritten
  CHECK(s->last_compaction().error.empty());
  CHECK(s->last_compaction().segments_deleted >= 1);
  CHECK(s->last_compaction().bytes_copied > 900);
  CHECK_FALSE(fs::exists(first_file));
  CHECK(s->disk_bytes() < disk_before / 2);
  CHECK(segment_files(t.path).size() < segs_before);
  CHECK(s->message("C1001") == nullptr);
  CHECK(body_of(*s, "C1005") == bodies["C1005"]);
  CHECK(body_of(*s, "C1030") == bodies["C1030"]);
  CHECK(s->delivery("C1030.1")->state == DeliveryState::DeadLettered);
  CHECK(s->delivery("C1030.0")->state == DeliveryState::Delivered);
  // Dedupe keys outlive their compacted messages.
  CHECK(s->dedupe_lookup("audit-fanout", "key1", 0) == std::optional<std::string>("C1001"));
  auto pending_before = s->deliveries(DeliveryState::Pending);
  s.reset();

  RecoveryReport rep;
  s = open_ok(o, &rep);
  CHECK(rep.corrupt_records == 0);
  CHECK(rep.truncated_bytes == 0);
  CHECK(rep.messages == 2);
  CHECK(s->message("C1001") == nullptr);  // finished messages do not come back
  CHECK(body_of(*s, "C1005") == bodies["C1005"]);
  CHECK(body_of(*s, "C1030") == bodies["C1030"]);
  CHECK(s->delivery("C1030.0")->state == DeliveryState::Delivered);
  auto pending_after = s->deliveries(DeliveryState::Pending);
  REQUIRE(pending_after.size() == pending_before.size());
  for (size_t i = 0; i < pending_after.size(); ++i) CHECK(same(pending_after[i], pending_before[i]));
  CHECK(s->dedupe_lookup("audit-fanout", "key1", 0) == std::optional<std::string>("C1001"));
  CHECK(s->dedupe_lookup("audit-fanout", "key39", 0) == std::optional<std::string>("C1039"));

  // Dead letters past retention are dropped; once everything is finished the disk empties.
  update_ok(*s, attempted(*s->delivery("C1005.0"), DeliveryState::Delivered, 200, 60'000));
  update_ok(*s, attempted(*s->delivery("C1005.1"), DeliveryState::Delivered, 200, 60'000));
  s->compact(60'000 + 1'000'000, 1'000'000);
  CHECK(s->last_compaction().dead_letters_expired == 1);
  CHECK(s->delivery("C1030.1")->state == DeliveryState::Deleted);
  CHECK(s->deliveries(DeliveryState::DeadLettered).empty());
  CHECK(s->bytes() == 0);
  s->compact(60'000 + 1'000'001, 1'000'000);
  CHECK(s->disk_bytes() < 8192 + 4096);
  s.reset();
  s = open_ok(o, &rep);
  CHECK(rep.messages == 0);
  CHECK(s->deliveries(DeliveryState::Pending).empty());
  CHECK(s->deliveries(DeliveryState::DeadLettered).empty());
  CHECK(rep.corrupt_records == 0);
}

TEST_CASE("compaction: an update in a later segment never resurrects a finished message") {
  TempDir t;
  StoreOptions o = options(t.path);
  o.segment_bytes = 4096;
  auto s = open_ok(o);
  // P pins the first segment (live); F is finished, its final state lives in a later segment.
  append_ok(*s, make_msg("P", 1, std::string(3000, 'p')), std::string(3000, 'p'));
  append_ok(*s, make_msg("F", 1, std::string(100, 'f')), std::string(100, 'f'));
  Delivery f = *s->delivery("F.0");
  for (int i = 0; i < 80; ++i) {  // fill segments with F's retries and then its success
    f = attempted(f, DeliveryState::Pending, 503, 1000 + i);
    update_ok(*s, f);
  }
  f = attempted(f, DeliveryState::Delivered, 200, 5000);
  update_ok(*s, f);
  for (int i = 0; i < 30; ++i) append_ok(*s, make_msg("Z" + std::to_string(i), 1, std::string(600, 'z')), std::string(600, 'z'));
  s->compact(10'000, 1'000'000);
  CHECK(s->last_compaction().error.empty());
  CHECK(s->last_compaction().segments_deleted > 0);
  s.reset();
  s = open_ok(o);
  if (auto d = s->delivery("F.0")) CHECK(d->state == DeliveryState::Delivered);
  CHECK(s->delivery("P.0")->state == DeliveryState::Pending);
  CHECK(body_of(*s, "P") == std::string(3000, 'p'));
}

TEST_CASE("dedupe: within and after the window, across reopen and compaction") {
  TempDir t;
  StoreOptions o = options(t.path);
  o.segment_bytes = 4096;
  o.dedupe_retention_ms = 100'000;
  {
    auto s = open_ok(o);
    append_ok(*s, make_msg("D1", 1, "one", 10'000, "evt-1"), "one");
    CHECK(s->dedupe_lookup("audit-fanout", "evt-1", 5'000) == std::optional<std::string>("D1"));
    CHECK(s->dedupe_lookup("audit-fanout", "evt-1", 10'000) == std::optional<std::string>("D1"));
    CHECK_FALSE(s->dedupe_lookup("audit-fanout", "evt-1", 10'001));  // window passed
    CHECK_FALSE(s->dedupe_lookup("other-route", "evt-1", 0));
    CHECK_FALSE(s->dedupe_lookup("audit-fanout", "evt-2", 0));
    // After the window the same key may be accepted again; the newer message wins.
    append_ok(*s, make_msg("D2", 1, "two", 50'000, "evt-1"), "two");
    CHECK(s->dedupe_lookup("audit-fanout", "evt-1", 20'000) == std::optional<std::string>("D2"));
    for (int i = 0; i < 10; ++i) append_ok(*s, make_msg("Y" + std::to_string(i), 1, std::string(900, 'y'), 60'000), std::string(900, 'y'));
    for (const auto& d : s->deliveries(DeliveryState::Pending)) update_ok(*s, attempted(d, DeliveryState::Delivered, 200, 1));
    s->compact(60'000, 1'000'000);
    CHECK(s->message("D2") == nullptr);
    CHECK(s->dedupe_lookup("audit-fanout", "evt-1", 20'000) == std::optional<std::string>("D2"));
  }
  {
    auto s = open_ok(o);
    CHECK(s->message("D2") == nullptr);
    CHECK(s->dedupe_lookup("audit-fanout", "evt-1", 20'000) == std::optional<std::string>("D2"));
    // Finish everything and compact past the retention: the key goes too.
    for (const auto& d : s->deliveries(DeliveryState::Pending)) update_ok(*s, attempted(d, DeliveryState::Delivered, 200, 1));
    s->compact(50'000 + 100'001, 1'000'000);
    s->compact(50'000 + 100'002, 1'000'000);
    CHECK_FALSE(s->dedupe_lookup("audit-fanout", "evt-1", 0));
  }
  // A record of the key may remain on disk until its segment goes; callers always ask with
  // since = now - window, and the retention is at least every window.
  auto s = open_ok(o);
  CHECK_FALSE(s->dedupe_lookup("audit-fanout", "evt-1", 50'001));
}

TEST_CASE("a write error truncates back and leaves the store usable") {
  TempDir t;
  auto s = open_ok(options(t.path));
  append_ok(*s, make_msg("A", 1, "before"), "before");
  std::string seg = segment_files(t.path)[0];
  uint64_t good = file_size(seg);
  struct rlimit old;
  REQUIRE(getrlimit(RLIMIT_FSIZE, &old) == 0);
  auto old_handler = signal(SIGXFSZ, SIG_IGN);
  struct rlimit lim = old;
  lim.rlim_cur = good + 1000;  // the next body does not fit
  REQUIRE(setrlimit(RLIMIT_FSIZE, &lim) == 0);
  std::string body = pattern_body(5000, 4);
  std::string err;
  bool ok = s->append_message(make_msg("B", 1, body), spans(body), 1, &err);
  setrlimit(RLIMIT_FSIZE, &old);
  signal(SIGXFSZ, old_handler);
  CHECK_FALSE(ok);
  CHECK(err.find(seg) != std::string::npos);
  CHECK(file_size(seg) == good);
  CHECK(s->message("B") == nullptr);
  CHECK(s->failure().empty());
  append_ok(*s, make_msg("C", 1, body), body);
  s.reset();
  RecoveryReport rep;
  s = open_ok(options(t.path), &rep);
  CHECK(rep.corrupt_records == 0);
  CHECK(rep.truncated_bytes == 0);
  CHECK(body_of(*s, "A") == "before");
  CHECK(body_of(*s, "C") == body);
}

TEST_CASE("read_body notices damage that happened after the open") {
  TempDir t;
  auto s = open_ok(options(t.path));
  std::string body = pattern_body(3000, 8);
  append_ok(*s, make_msg("A", 1, body), body);
  flip_byte(segment_files(t.path)[0], 40 + 9 + 1 + 1 + 8 + 100);  // inside the body bytes
  std::string out, err;
  CHECK_FALSE(s->read_body("A", &out, &err));
  CHECK(err.find("stored body is damaged") != std::string::npos);
  CHECK(err.find(".seg") != std::string::npos);
}

TEST_CASE("message ids: 26 chars, unique and strictly increasing (100k)") {
  const std::string alphabet = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";
  std::string prev;
  std::set<std::string> seen;
  int64_t now = 1'700'000'000'000;
  for (int i = 0; i < 100'000; ++i) {
    if (i % 1000 == 0) now += 1;
    if (i == 50'000) now -= 5000;  // the clock steps back: still increasing
    std::string id = new_message_id(now);
    REQUIRE(id.size() == 26);
    REQUIRE(id.find_first_not_of(alphabet) == std::string::npos);
    REQUIRE(id > prev);
    prev = id;
    seen.insert(id);
  }
  CHECK(seen.size() == 100'000);
  // Time order across milliseconds: the first 10 characters are the timestamp.
  std::string a = new_message_id(1'800'000'000'000), b = new_message_id(1'800'000'000'001);
  CHECK(a.substr(0, 10) < b.substr(0, 10));
  CHECK(new_message_id(0).size() == 26);
}

// Random appends, updates, syncs and compactions, then a crash: the active segment is cut at a
// random point at or after what the last sync made durable, sometimes with garbage after it.
// After reopening, everything synced is there and nothing unsynced appears half-made.
// DECHUNKD_QSTORE_ROUNDS and DECHUNKD_QSTORE_SEED run it longer or differently (a soak).
TEST_CASE("crash consistency property (seeded)") {
  const char* env_rounds = ::getenv("DECHUNKD_QSTORE_ROUNDS");
  const char* env_seed = ::getenv("DECHUNKD_QSTORE_SEED");
  const int rounds = env_rounds ? std::atoi(env_rounds) : 40;
  std::mt19937 rng(env_seed ? static_cast<uint32_t>(std::strtoul(env_seed, nullptr, 10)) : 20240611u);
  uint64_t total_deleted = 0, total_copied = 0, total_lost_unlinks = 0;
  for (int round = 0; round < rounds; ++round) {
    CAPTURE(round);
    TempDir t;
    StoreOptions o = options(t.path);
    o.segment_bytes = 2048 + rng() % 8192;
    o.rewrite_grace_ms = rng() % 2 ? 0 : 500;
    const int64_t retention = rng() % 3000;  // dead letters expire within the run
    struct Model {
      QueuedMessage m;
      std::string body;
      std::vector<std::vector<Delivery>> history;  // per target: states since the last sync point
      bool appended_after_sync = true;
      bool dropped = false;  // compaction removed it (checked to be legitimate when it happened)
    };
    std::map<std::string, Model> model;
    std::string synced_seg;
    uint64_t synced_size = 0;
    int64_t now = 1'000'000;
    bool unlink_lost = false;  // the crash came before compaction's last unlink reached the disk
    auto mark_synced = [&](QueueStore& s) {
      for (auto& [id, md] : model) {
        md.appended_after_sync = false;
        for (size_t tgt = 0; tgt < md.history.size(); ++tgt) {
          auto cur = s.delivery(id + "." + std::to_string(tgt));
          md.history[tgt].assign(1, cur ? *cur : md.history[tgt].back());
        }
      }
      auto files = segment_files(t.path);
      synced_seg = files.back();
      synced_size = file_size(synced_seg);
    };
    {
      auto s = open_ok(o);
      mark_synced(*s);
      int ops = 20 + static_cast<int>(rng() % 120);
      for (int op = 0; op < ops; ++op) {
        now += 1 + rng() % 50;
        unsigned r = rng() % 100;
        if (r < 40 || model.empty()) {
          std::string id = new_message_id(now);
          size_t n = rng() % 4 == 0 ? 1500 + rng() % 3000 : rng() % 300;
          std::string body = pattern_body(n, static_cast<uint32_t>(rng()));
          size_t targets = 1 + rng() % 3;
          QueuedMessage m = make_msg(id, targets, body, now, rng() % 3 == 0 ? "k" + std::to_string(rng() % 5) : "");
          std::string err;
          if (!s->append_message(m, spans(body, 1 + rng() % 2000), now, &err)) FAIL(err);
          Model md{m, body, {}, true};
          for (size_t tgt = 0; tgt < targets; ++tgt) md.history.push_back({*s->delivery(id + "." + std::to_string(tgt))});
          model[id] = std::move(md);
        } else if (r < 80) {
          auto it = model.begin();
          std::advance(it, rng() % model.size());
          if (!s->message(it->first)) continue;  // compacted away
          uint32_t tgt = static_cast<uint32_t>(rng() % it->second.history.size());
          Delivery d = *s->delivery(it->first + "." + std::to_string(tgt));
          static const DeliveryState states[] = {DeliveryState::Pending, DeliveryState::Delivered,
                                                 DeliveryState::DeadLettered, DeliveryState::Deleted};
          DeliveryState st = states[rng() % 4];  // one draw per statement: the same sequence with any compiler
          int status = static_cast<int>(200 + rng() % 300);
          std::string why = rng() % 2 ? "boom" : "";
          d = attempted(d, st, status, now, why);
          update_ok(*s, d);
          it->second.history[tgt].push_back(d);
        } else if (r < 95) {
          sync_ok(*s);
          mark_synced(*s);
        } else {
          std::map<std::string, std::string> before;
          bool lose_unlink = rng() % 4 == 0;
          if (lose_unlink)
            for (const auto& f : segment_files(t.path)) before[f] = read_file(f);
          s->compact(now, retention);
          REQUIRE(s->last_compaction().error.empty());
          total_deleted += s->last_compaction().segments_deleted;
          total_copied += s->last_compaction().bytes_copied;
          mark_synced(*s);  // compaction syncs
          // Expired dead letters became Deleted inside the store: follow them. A message may only
          // vanish when each delivery was finished or a dead letter past the retention.
          for (auto& entry : model) {
            const std::string& id = entry.first;
            Model& md = entry.second;
            if (md.dropped) continue;
            if (!s->message(id)) {
              CAPTURE(id);
              for (const auto& h : md.history) {
                const Delivery& d = h.back();
                bool gone_ok = d.state == DeliveryState::Delivered || d.state == DeliveryState::Deleted ||
                               (d.state == DeliveryState::DeadLettered &&
                                std::max(d.last_attempt_ms, d.age_base_ms) <= now - retention);
                CHECK(gone_ok);
              }
              for (auto& h : md.history)  // an expired dead letter was logged as Deleted first
                if (h.back().state == DeliveryState::DeadLettered) {
                  Delivery del = h.back();
                  del.state = DeliveryState::Deleted;
                  h.push_back(del);
                }
              md.dropped = true;
              continue;
            }
            for (size_t tgt = 0; tgt < md.history.size(); ++tgt)
              md.history[tgt].assign(1, *s->delivery(id + "." + std::to_string(tgt)));
          }
          if (lose_unlink) {  // deletions are made durable one by one: only the last can be lost
            auto now_files = segment_files(t.path);
            std::string last_deleted;
            for (const auto& [f, data] : before)
              if (std::find(now_files.begin(), now_files.end(), f) == now_files.end()) last_deleted = f;
            if (!last_deleted.empty()) {
              write_file(last_deleted, before[last_deleted]);
              unlink_lost = true;
              ++total_lost_unlinks;
              break;
            }
          }
        }
      }
      // A clean reopen first: recovery must rebuild exactly the index the store had. (Not after
      // a lost unlink: finished messages of the restored file are back, legitimately.)
      if (!unlink_lost) {
        std::map<std::string, std::vector<Delivery>> view;
        for (const auto& [id, md] : model)
          if (s->message(id))
            for (size_t tgt = 0; tgt < md.history.size(); ++tgt)
              view[id].push_back(*s->delivery(id + "." + std::to_string(tgt)));
        uint64_t live = s->bytes(), disk = s->disk_bytes();
        s.reset();
        RecoveryReport rep0;
        s = open_ok(o, &rep0);
        CHECK(rep0.corrupt_records == 0);
        CHECK(rep0.truncated_bytes == 0);
        CHECK(s->bytes() == live);
        CHECK(s->disk_bytes() == disk);
        for (const auto& entry : model) {
          const std::string& id = entry.first;
          const Model& md = entry.second;
          CAPTURE(id);
          REQUIRE((s->message(id) != nullptr) == (view.count(id) == 1));
          if (!view.count(id)) continue;
          for (size_t tgt = 0; tgt < md.history.size(); ++tgt)
            CHECK(same(*s->delivery(id + "." + std::to_string(tgt)), view[id][tgt]));
        }
      }
      // Then the crash: cut the newest file below (fsync: never, so nothing else was synced).
    }
    auto files = segment_files(t.path);
    REQUIRE(!files.empty());
    std::string last = files.back();
    uint64_t floor = last == synced_seg ? synced_size : 0;
    uint64_t size = file_size(last);
    REQUIRE(size >= floor);
    uint64_t cut = floor + (size > floor ? rng() % (size - floor + 1) : 0);
    std::string data = read_file(last).substr(0, cut);
    if (cut >= queue::kHeaderSize && rng() % 3 == 0) {
      size_t n = rng() % 200;
      data += pattern_body(n, static_cast<uint32_t>(rng()));
    }
    write_file(last, data);

    RecoveryReport rep;
    auto s = open_ok(o, &rep);
    CHECK(rep.corrupt_records == 0);
    for (auto& entry : model) {
      const std::string& id = entry.first;
      Model& md = entry.second;
      CAPTURE(id);
      const QueuedMessage* m = s->message(id);
      if (!m) {
        bool finished_at_sync = true;
        for (const auto& h : md.history)
          finished_at_sync = finished_at_sync && (h.front().state == DeliveryState::Delivered ||
                                                  h.front().state == DeliveryState::Deleted);
        CHECK((md.appended_after_sync || finished_at_sync || md.dropped));
        continue;
      }
      CHECK(same(*m, md.m));
      CHECK(body_of(*s, id) == md.body);
      for (size_t tgt = 0; tgt < md.history.size(); ++tgt) {
        auto d = s->delivery(id + "." + std::to_string(tgt));
        REQUIRE(d);
        bool known = std::any_of(md.history[tgt].begin(), md.history[tgt].end(),
                                 [&](const Delivery& h) { return same(h, *d); });
        CHECK(known);
      }
    }
  }
  CHECK(total_deleted > 0);
  CHECK(total_copied > 0);
  CHECK(total_lost_unlinks > 0);

}
