// Read blocks and the output queue: the zero-copy body path (STYLE 5, PERF-NOTES).
// Sockets are read into pooled Blocks; a request body is kept as Spans that reference those
// blocks, and the outbound write hands the same bytes to the kernel with writev/sendfile.
// A BlockPool belongs to one worker thread; refcounts are not atomic.
#pragma once
#include <sys/types.h>
#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace dechunkd {

class BlockPool;

// A fixed-size read buffer. `used` grows as bytes are read into it; bytes below `used` never
// change, so spans into them stay valid while a reference is held.
struct Block {
  // 128 KiB: a 64 KiB webhook with its head and chunk framing (about 67 KiB) arrives in one
  // read; with 64 KiB blocks it took two (measured: 7-9 % more CPU per 64 KiB request).
  // Idle connections hold no block; pages are touched as used.
  static constexpr size_t kSize = 128 * 1024;
  uint32_t refs = 0;
  size_t used = 0;
  BlockPool* pool = nullptr;
  char data[kSize];
  size_t free_space() const { return kSize - used; }
};

// Intrusive shared reference to a Block; returns it to its pool when the last one goes.
class BlockRef {
 public:
  BlockRef() = default;
  explicit BlockRef(Block* b) : b_(b) { if (b_) ++b_->refs; }
  BlockRef(const BlockRef& o) : b_(o.b_) { if (b_) ++b_->refs; }
  BlockRef(BlockRef&& o) noexcept : b_(o.b_) { o.b_ = nullptr; }
  BlockRef& operator=(BlockRef o) noexcept { std::swap(b_, o.b_); return *this; }
  ~BlockRef() { release(); }
  Block* get() const { return b_; }
  Block* operator->() const { return b_; }
  explicit operator bool() const { return b_ != nullptr; }
  void reset() { release(); b_ = nullptr; }

 private:
  void release();
  Block* b_ = nullptr;
};

// Per-worker free list of blocks, so large bodies do not make glibc return and re-fault memory.
class BlockPool {
 public:
  explicit BlockPool(size_t max_free = 64) : max_free_(max_free) {}
  ~BlockPool();
  BlockPool(const BlockPool&) = delete;
  BlockPool& operator=(const BlockPool&) = delete;
  BlockRef acquire();
  void give_back(Block* b);
  size_t outstanding() const { return outstanding_; }

 private:
  std::vector<Block*> free_;
  size_t max_free_;
  size_t outstanding_ = 0;  // blocks handed out and not yet returned
};

inline void BlockRef::release() {
  if (b_ && --b_->refs == 0) b_->pool->give_back(b_);
}

// A run of bytes inside a block.
struct Span {
  BlockRef block;
  const char* ptr = nullptr;
  size_t len = 0;
};

enum class IoStatus { Done, WouldBlock, Closed, Error };

// Bytes waiting to be written to one socket, in order: owned strings (heads, chunk framing),
// spans of read blocks (body bytes), and file ranges (spilled bodies, sent with sendfile).
class OutQueue {
 public:
  void add(std::string&& s);
  void add_copy(const char* p, size_t n);
  void add_span(const Span& s);
  // Bytes the caller keeps alive and unchanged until they are written or the queue is cleared
  // (a buffer the caller reuses, such as a call's outbound head): queued without a copy.
  void add_borrowed(const char* p, size_t n);
  void add_file(int fd, off_t offset, uint64_t len);  // fd must stay open until written
  size_t pending() const { return bytes_; }
  bool empty() const { return head_ == pieces_.size(); }
  void clear();
  // Writes as much as the socket takes. Done when empty; WouldBlock when the kernel is full.
  IoStatus flush(int fd, int* err);
  // Moves up to max bytes from the front of the queue into dst (file ranges with pread), for
  // transports that cannot hand buffers to the kernel (TLS). Returns the count; 0 with *err
  // set when a file could not be read.
  size_t copy_out(char* dst, size_t max, int* err);

 private:
  struct Piece {
    enum Kind { Mem, Ref, File } kind = Mem;
    std::string mem;       // Mem
    BlockRef block;        // Ref (empty for borrowed bytes)
    const char* ptr = nullptr;  // Ref: the next byte
    size_t off = 0;        // Mem: the next byte's offset in mem (pieces move when the queue grows)
    size_t len = 0;        // Mem/Ref: remaining bytes
    int fd = -1;           // File
    off_t offset = 0;
    uint64_t flen = 0;     // File: remaining
    const char* data() const { return kind == Mem ? mem.data() + off : ptr; }
    void consume(size_t n) {
      if (kind == Mem) off += n;
      else ptr += n;
      len -= n;
    }
  };
  Piece& push(Piece::Kind kind, size_t len);  // a new piece at the back, counted in bytes_
  Piece& front() { return pieces_[head_]; }
  void pop_front();
  // A vector used as a queue: pieces_[head_..] are pending. It keeps its capacity when it
  // drains, so a keep-alive connection queues its responses without allocating (a deque frees
  // and reallocates its blocks as it empties and refills).
  static constexpr size_t kKeptPieces = 1024;  // capacity kept when the queue drains
  std::vector<Piece> pieces_;
  size_t head_ = 0;
  size_t bytes_ = 0;
};

}  // namespace dechunkd
