// OutQueue: owned strings, spans of read blocks, borrowed bytes and file ranges leave in the
// order they were queued, whatever the socket takes per call, also while the queue grows with
// pieces still pending (its storage then moves) and when it drains and refills.
#include <doctest/doctest.h>

#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>

#include "net/buffer.hpp"

using namespace dechunkd;

namespace {

struct SocketPair {
  int fd[2] = {-1, -1};
  SocketPair() {
    REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, fd) == 0);
    int small = 4096;  // the writer meets a full socket often
    ::setsockopt(fd[0], SOL_SOCKET, SO_SNDBUF, &small, sizeof small);
  }
  ~SocketPair() {
    ::close(fd[0]);
    ::close(fd[1]);
  }
  void drain_into(std::string& got) {
    char buf[1500];  // the reader takes less than the writer offers
    for (;;) {
      ssize_t n = ::read(fd[1], buf, sizeof buf);
      if (n <= 0) break;
      got.append(buf, static_cast<size_t>(n));
    }
  }
};

// A small deterministic generator (fixed seed: a failure replays).
struct Lcg {
  uint64_t s;
  uint32_t next() {
    s = s * 6364136223846793005ULL + 1442695040888963407ULL;
    return static_cast<uint32_t>(s >> 33);
  }
};

std::string bytes_for(Lcg& r, size_t n) {
  std::string s(n, '\0');
  for (char& c : s) c = static_cast<char>('a' + r.next() % 26);
  return s;
}

}  // namespace

TEST_CASE("OutQueue writes every kind of piece in order across partial writes and refills") {
  BlockPool pool;
  Lcg r{20261205};
  std::string borrowed = bytes_for(r, 777);  // kept alive and unchanged until written
  char path[] = "/tmp/dechunkd-outqueue-XXXXXX";
  int file = ::mkstemp(path);
  REQUIRE(file >= 0);
  ::unlink(path);
  std::string file_bytes = bytes_for(r, 50000);
  REQUIRE(::write(file, file_bytes.data(), file_bytes.size()) == static_cast<ssize_t>(file_bytes.size()));

  for (int round = 0; round < 20; ++round) {
    SocketPair sp;
    OutQueue q;
    std::string want, got;
    BlockRef block = pool.acquire();
    block->used = 0;
    const int pieces = 1 + static_cast<int>(r.next() % 3000);  // past the kept capacity too
    for (int i = 0; i < pieces; ++i) {
      switch (r.next() % 5) {
        case 0:
        case 1: {  // short strings live inside the string object: moving a piece moves them
          std::string s = bytes_for(r, 1 + r.next() % (r.next() % 2 ? 12 : 3000));
          want += s;
          q.add(std::move(s));
          break;
        }
        case 2: {
          size_t n = 1 + r.next() % 2000;
          if (block->free_space() < n) {
            block = pool.acquire();
            block->used = 0;
          }
          std::string s = bytes_for(r, n);
          char* at = block->data + block->used;
          std::memcpy(at, s.data(), n);
          block->used += n;
          q.add_span(Span{block, at, n});
          want += s;
          break;
        }
        case 3: {
          size_t off = r.next() % borrowed.size();
          size_t n = 1 + r.next() % (borrowed.size() - off);
          q.add_borrowed(borrowed.data() + off, n);
          want.append(borrowed, off, n);
          break;
        }
        default: {
          size_t off = r.next() % file_bytes.size();
          size_t n = 1 + r.next() % std::min<size_t>(8000, file_bytes.size() - off);
          q.add_file(file, static_cast<off_t>(off), n);
          want.append(file_bytes, off, n);
          break;
        }
      }
      // Now and then write some of it, so pieces are added behind a partly written queue.
      if (r.next() % 7 == 0) {
        int err = 0;
        REQUIRE(q.flush(sp.fd[0], &err) != IoStatus::Error);
        sp.drain_into(got);
      }
    }
    block.reset();
    if (round % 2 == 0) {
      for (int guard = 0; !q.empty(); ++guard) {
        REQUIRE(guard < 100000);
        int err = 0;
        IoStatus st = q.flush(sp.fd[0], &err);
        REQUIRE(st != IoStatus::Error);
        CHECK(q.empty() == (st == IoStatus::Done));
        sp.drain_into(got);
      }
    } else {  // the TLS path: copy_out in small and large pieces
      char buf[5000];
      while (!q.empty()) {
        int err = 0;
        size_t max = 1 + r.next() % sizeof buf;
        size_t n = q.copy_out(buf, max, &err);
        REQUIRE(err == 0);
        REQUIRE(n > 0);
        sp.drain_into(got);  // bytes flushed earlier in this round come first
        got.append(buf, n);
      }
    }
    sp.drain_into(got);
    CHECK(q.pending() == 0);
    CHECK(got.size() == want.size());
    CHECK(got == want);
  }
  ::close(file);
  CHECK(pool.outstanding() == 0);  // every span's block came back
}

TEST_CASE("OutQueue reports a file shorter than promised instead of sending less") {
  char path[] = "/tmp/dechunkd-outqueue-XXXXXX";
  int file = ::mkstemp(path);
  REQUIRE(file >= 0);
  ::unlink(path);
  REQUIRE(::write(file, "abc", 3) == 3);
  SocketPair sp;
  OutQueue q;
  q.add(std::string("head"));
  q.add_file(file, 0, 10);
  int err = 0;
  IoStatus st = IoStatus::Done;
  for (int i = 0; i < 10 && (st = q.flush(sp.fd[0], &err)) != IoStatus::Error; ++i) {
  }
  CHECK(st == IoStatus::Error);
  CHECK(err == EIO);
  ::close(file);
}
