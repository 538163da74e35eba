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

OutQueue::Piece& OutQueue::push(Piece::Kind kind, size_t len) {
  // When full, reuse the written front if it is at least half the queue (so a push never moves
  // many pending pieces for few freed slots); otherwise the vector grows.
  if (head_ > 0 && pieces_.size() == pieces_.capacity() && head_ >= pieces_.size() / 2) {
    pieces_.erase(pieces_.begin(), pieces_.begin() + static_cast<std::ptrdiff_t>(head_));
    head_ = 0;
  }
  Piece& p = pieces_.emplace_back();
  p.kind = kind;
  p.len = len;
  bytes_ += len;
  return p;
}

void OutQueue::pop_front() {
  Piece& p = pieces_[head_];
  p.block.reset();  // a written span gives its block back now
  if (p.kind == Piece::Mem) std::string().swap(p.mem);  // and a written string its memory
  if (++head_ == pieces_.size()) {
    head_ = 0;
    if (pieces_.capacity() > kKeptPieces) {
      std::vector<Piece>().swap(pieces_);  // a burst of tiny pieces does not pin its peak
    } else {
      pieces_.clear();  // keeps the capacity
    }
  }
}

void OutQueue::add(std::string&& s) {
  if (s.empty()) return;
  Piece& p = push(Piece::Mem, s.size());
  p.mem = std::move(s);
}

void OutQueue::add_copy(const char* data, size_t n) { add(std::string(data, n)); }

void OutQueue::add_span(const Span& s) {
  if (s.len == 0) return;
  Piece& p = push(Piece::Ref, s.len);
  p.block = s.block;
  p.ptr = s.ptr;
}

void OutQueue::add_borrowed(const char* data, size_t n) {
  if (n == 0) return;
  push(Piece::Ref, n).ptr = data;
}

void OutQueue::add_file(int fd, off_t offset, uint64_t len) {
  if (len == 0) return;
  Piece& p = push(Piece::File, 0);
  bytes_ += len;
  p.fd = fd;
  p.offset = offset;
  p.flen = len;
}

void OutQueue::clear() {
  pieces_.clear();
  head_ = 0;
  bytes_ = 0;
}

IoStatus OutQueue::flush(int fd, int* err) {
  constexpr int kMaxIov = 64;
  while (!empty()) {
    Piece& first = front();
    if (first.kind == Piece::File) {
      size_t want = first.flen > (1u << 30) ? (1u << 30) : static_cast<size_t>(first.flen);
      ssize_t n = ::sendfile(fd, first.fd, &first.offset, want);
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
      first.flen -= n;
      bytes_ -= n;
      if (first.flen == 0) pop_front();
      continue;
    }
    iovec iov[kMaxIov];
    int cnt = 0;
    bool file_follows = false;
    for (size_t i = head_; i < pieces_.size() && cnt < kMaxIov; ++i) {
      const Piece& piece = pieces_[i];
      if (piece.kind == Piece::File) {
        file_follows = true;
        break;
      }
      iov[cnt].iov_base = const_cast<char*>(piece.data());
      iov[cnt].iov_len = piece.len;
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
      Piece& p = front();
      if (left >= p.len) {
        left -= p.len;
        pop_front();
      } else {
        p.consume(left);
        left = 0;
      }
    }
  }
  return IoStatus::Done;
}

size_t OutQueue::copy_out(char* dst, size_t max, int* err) {
  size_t got = 0;
  while (got < max && !empty()) {
    Piece& p = front();
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
      if (p.flen == 0) pop_front();
      continue;
    }
    size_t take = std::min(p.len, max - got);
    std::memcpy(dst + got, p.data(), take);
    got += take;
    bytes_ -= take;
    p.consume(take);
    if (p.len == 0) pop_front();
  }
  return got;
}

}  // namespace dechunkd
