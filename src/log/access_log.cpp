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

void append_str(std::string& out, std::string_view key, std::string_view v) {
  out += '"';
  out += key;
  out += "\":\"";
  json_escape(out, v);
  out += '"';
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
  buf_ += "{\"time\":\"";
  append_rfc3339_ms(buf_, r.time_ms);
  buf_ += "\",";
  append_str(buf_, "request_id", r.request_id);
  buf_ += ',';
  append_str(buf_, "remote", r.remote);
  buf_ += ',';
  append_str(buf_, "route", r.route);
  buf_ += ',';
  append_str(buf_, "method", r.method);
  buf_ += ',';
  append_str(buf_, "path", r.path);
  buf_ += ",\"status\":";
  append_decimal(buf_, r.status);
  buf_ += ",\"bytes_in\":";
  append_decimal(buf_, static_cast<int64_t>(r.bytes_in));
  buf_ += ",\"chunked\":";
  buf_ += r.chunked ? "true" : "false";
  buf_ += ",\"target_status\":";
  if (r.target_status < 0) buf_ += "null"; else append_decimal(buf_, r.target_status);
  buf_ += ",\"target_ms\":";
  if (r.target_ms < 0) buf_ += "null"; else append_decimal(buf_, r.target_ms);
  buf_ += ",\"duration_ms\":";
  append_decimal(buf_, r.duration_ms);
  buf_ += "}\n";
  if (buf_.size() >= kFlushAt) flush();
}

void AccessLog::flush() {
  if (buf_.empty() || !sink_) return;
  sink_->write(buf_);
  buf_.clear();
}

}  // namespace dechunkd
