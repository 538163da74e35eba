#include "net/buffer.hpp"

#include <sys/sendfile.h>
#include <sys/socket.h>
#include <cerrno>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <new>

namespace dechunkd {

BlockPool::~BlockPool() {
  for (Block* b : free_) delete b;
}

BlockRef BlockPool::acquire() {
  Block* b;
  if (!free_.empty()) {
    b = free_.back();
    free_.pop_back();
  } else {
    b = new Block;
    b->pool = this;
  }
  b->used = 0;
  b->refs = 0;
  ++outstanding_;
  return BlockRef(b);
}

void BlockPool::give_back(Block* b) {
  --outstanding_;
  if (free_.size() < max_free_) {
    free_.push_back(b);
  } else {
    delete b;
  }
}

void OutQueue::add(std::string&& s) {
  if (s.empty()) return;
  bytes_ += s.size();
  Piece p;
  p.kind = Piece::Mem;
  p.mem = std::move(s);
  p.len = p.mem.size();
  pieces_.push_back(std::move(p));
  pieces_.back().ptr = pieces_.back().mem.data();
}

void OutQueue::add_copy(const char* data, size_t n) { add(std::string(data, n)); }

void OutQueue::add_span(const Span& s) {
  if (s.len == 0) return;
  bytes_ += s.len;
  Piece p;
  p.kind = Piece::Ref;
  p.block = s.block;
  p.ptr = s.ptr;
  p.len = s.len;
  pieces_.push_back(std::move(p));
}

void OutQueue::add_borrowed(const char* data, size_t n) {
  if (n == 0) return;
  bytes_ += n;
  Piece p;
  p.kind = Piece::Ref;
  p.ptr = data;
  p.len = n;
  pieces_.push_back(std::move(p));
}

void OutQueue::add_file(int fd, off_t offset, uint64_t len) {
  if (len == 0) return;
  bytes_ += len;
  Piece p;
  p.kind = Piece::File;
  p.fd = fd;
  p.offset = offset;
  p.flen = len;
  pieces_.push_back(std::move(p));
}

void OutQueue::clear() {
  pieces_.clear();
  bytes_ = 0;
}

IoStatus OutQueue::flush(int fd, int* err) {
  constexpr int kMaxIov = 64;
  while (!pieces_.empty()) {
    Piece& front = pieces_.front();
    if (front.kind == Piece::File) {
      size_t want = front.flen > (1u << 30) ? (1u << 30) : static_cast<size_t>(front.flen);
      ssize_t n = ::sendfile(fd, front.fd, &front.offset, want);
      if (n < 0) {
        if (errno == EINTR) continue;
        if (errno == EAGAIN) return IoStatus::WouldBlock;
        *err = errno;
        return IoStatus::Error;
      }
      if (n == 0) {  // the file is shorter than promised: never send a truncated body
        *err = EIO;
        return IoStatus::Error;
      }
      front.flen -= n;
      bytes_ -= n;
      if (front.flen == 0) pieces_.pop_front();
      continue;
    }
    iovec iov[kMaxIov];
    int cnt = 0;
    bool file_follows = false;
    for (auto it = pieces_.begin(); it != pieces_.end() && cnt < kMaxIov; ++it) {
      if (it->kind == Piece::File) {
        file_follows = true;
        break;
      }
      iov[cnt].iov_base = const_cast<char*>(it->ptr);
      iov[cnt].iov_len = it->len;
      ++cnt;
    }
    msghdr msg{};
    msg.msg_iov = iov;
    msg.msg_iovlen = cnt;
    // A head followed by a file body goes out with MSG_MORE so it does not leave as a small
    // segment that meets Nagle + delayed ACK (PERF-NOTES).
    ssize_t n = ::sendmsg(fd, &msg, MSG_NOSIGNAL | (file_follows ? MSG_MORE : 0));
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) return IoStatus::WouldBlock;
      *err = errno;
      return IoStatus::Error;
    }
    size_t left = static_cast<size_t>(n);
    bytes_ -= left;
    while (left > 0) {
      Piece& p = pieces_.front();
      if (left >= p.len) {
        left -= p.len;
        pieces_.pop_front();
      } else {
        p.ptr += left;
        p.len -= left;
        left = 0;
      }
    }
  }
  return IoStatus::Done;
}

size_t OutQueue::copy_out(char* dst, size_t max, int* err) {
  size_t got = 0;
  while (got < max && !pieces_.empty()) {
    Piece& p = pieces_.front();
    if (p.kind == Piece::File) {
      size_t want = std::min<uint64_t>(p.flen, max - got);
      ssize_t n = ::pread(p.fd, dst + got, want, p.offset);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        *err = n < 0 ? errno : EIO;  // a short file: never send a truncated body
        return got;
      }
      p.offset += n;
      p.flen -= static_cast<uint64_t>(n);
      got += static_cast<size_t>(n);
      bytes_ -= static_cast<size_t>(n);
      if (p.flen == 0) pieces_.pop_front();
      continue;
    }
    size_t take = std::min(p.len, max - got);
    std::memcpy(dst + got, p.ptr, take);
    got += take;
    bytes_ -= take;
    p.ptr += take;
    p.len -= take;
    if (p.len == 0) pieces_.pop_front();
  }
  return got;
}

}  // namespace dechunkd
