#include "log/access_log.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstring>

#include "core/append.hpp"
#include "http/errors.hpp"
#include "log/log.hpp"

namespace dechunkd {

namespace {
constexpr size_t kFlushAt = 64 * 1024;

void put_str(StringWriter& w, std::string_view key_open, std::string_view v) {
  w.put(key_open);  // ,"key":"
  json_escape(w, v);
  w.put('"');
}
}  // namespace

int AccessLogSink::open_target(const std::string& target, bool* owned, std::string* error) {
  *owned = false;
  if (target == "off") return -1;
  if (target == "stdout") return STDOUT_FILENO;
  if (target == "stderr") return STDERR_FILENO;
  int fd = ::open(target.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
  if (fd < 0) {
    *error = "cannot open access log " + target + ": " + std::strerror(errno);
    return -2;
  }
  *owned = true;
  return fd;
}

bool AccessLogSink::open(const std::string& target, std::string* error) { return reopen(target, error); }

bool AccessLogSink::reopen(const std::string& target, std::string* error) {
  bool owned = false;
  int fd = open_target(target, &owned, error);
  if (fd == -2) return false;
  std::lock_guard<std::mutex> lock(mu_);
  if (owned_ && fd_ >= 0) ::close(fd_);
  fd_ = fd;
  owned_ = owned;
  return true;
}

AccessLogSink::~AccessLogSink() {
  if (owned_ && fd_ >= 0) ::close(fd_);
}

void AccessLogSink::write(std::string_view data) {
  if (fd_ < 0) return;
  std::lock_guard<std::mutex> lock(mu_);
  size_t off = 0;
  while (off < data.size()) {
    ssize_t n = ::write(fd_, data.data() + off, data.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;  // a full disk must not stop request handling
    off += static_cast<size_t>(n);
  }
}

void AccessLog::append(const AccessRecord& r) {
  if (!enabled()) return;
  {
    // The fixed text and numbers fit in 256 bytes; the strings usually need no escaping.
    StringWriter w(buf_, 256 + r.request_id.size() + r.remote.size() + r.route.size() + r.method.size() +
                             r.path.size());
    w.put("{\"time\":\"");
    append_rfc3339_ms(w, r.time_ms);
    w.put('"');
    put_str(w, ",\"request_id\":\"", r.request_id);
    put_str(w, ",\"remote\":\"", r.remote);
    put_str(w, ",\"route\":\"", r.route);
    put_str(w, ",\"method\":\"", r.method);
    put_str(w, ",\"path\":\"", r.path);
    w.put(",\"status\":");
    w.decimal(r.status);
    w.put(",\"bytes_in\":");
    w.decimal(static_cast<int64_t>(r.bytes_in));
    w.put(r.chunked ? ",\"chunked\":true" : ",\"chunked\":false");
    w.put(",\"target_status\":");
    if (r.target_status < 0) w.put("null"); else w.decimal(r.target_status);
    w.put(",\"target_ms\":");
    if (r.target_ms < 0) w.put("null"); else w.decimal(r.target_ms);
    w.put(",\"duration_ms\":");
    w.decimal(r.duration_ms);
    w.put("}\n");
  }
  if (buf_.size() >= kFlushAt) flush();
}

void AccessLog::flush() {
  if (buf_.empty() || !sink_) return;
  sink_->write(buf_);
  buf_.clear();
}

}  // namespace dechunkd
