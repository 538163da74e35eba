// ${env:NAME} / ${file:PATH} expansion for config values (SPEC 3) and secret files.
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "config/config_detail.hpp"

namespace dechunkd::config_detail {
namespace {

bool is_env_name(std::string_view name) {
  if (name.empty()) return false;
  for (size_t i = 0; i < name.size(); ++i) {
    const char c = name[i];
    const bool alpha = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_';
    const bool digit = c >= '0' && c <= '9';
    if (!alpha && !(digit && i > 0)) return false;
  }
  return true;
}

}  // namespace

std::optional<std::string> read_secret_file(const std::string& path, std::string& out) {
  out.clear();
  if (path.empty()) return std::string("empty file path");
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY);
  if (fd < 0) return "cannot read '" + path + "': " + std::strerror(errno);
  char buf[8192];
  for (;;) {
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0) {
      if (errno == EINTR) continue;
      const int err = errno;
      ::close(fd);
      out.clear();
      return "cannot read '" + path + "': " + std::strerror(err);
    }
    if (n == 0) break;
    if (out.size() + static_cast<size_t>(n) > kMaxSecretFile) {
      ::close(fd);
      out.clear();
      return "'" + path + "' is larger than 1MiB";
    }
    out.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  if (!out.empty() && out.back() == '\n') {
    out.pop_back();
    if (!out.empty() && out.back() == '\r') out.pop_back();
  }
  return std::nullopt;
}

std::optional<std::string> expand(std::string_view in, std::string& out) {
  out.clear();
  size_t i = 0;
  while (i < in.size()) {
    if (in.compare(i, 3, "$${") == 0) {
      out += "${";
      i += 3;
      continue;
    }
    if (in.compare(i, 2, "${") != 0) {
      out += in[i++];
      continue;
    }
    const size_t close = in.find('}', i + 2);
    if (close == std::string_view::npos) {
      return std::string("unterminated '${' (write '$${' for a literal '${')");
    }
    const std::string_view inner = in.substr(i + 2, close - i - 2);
    if (inner.substr(0, 4) == "env:") {
      const std::string name(inner.substr(4));
      if (!is_env_name(name)) {
        return std::string("invalid environment variable name in '${env:...}'");
      }
      const char* value = std::getenv(name.c_str());
      if (value == nullptr) return "environment variable '" + name + "' is not set";
      out += value;
    } else if (inner.substr(0, 5) == "file:") {
      const std::string path(inner.substr(5));
      if (path.empty()) return std::string("empty path in '${file:}'");
      std::string content;
      if (auto err = read_secret_file(path, content)) return err;
      out += content;
    } else {
      // The text is not repeated: a literal '${' may sit inside a secret.
      return std::string(
          "unknown '${...}' expansion (use ${env:NAME} or ${file:PATH}; write '$${' for a "
          "literal '${')");
    }
    i = close + 1;
  }
  return std::nullopt;
}

}  // namespace dechunkd::config_detail
