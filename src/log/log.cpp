#include "log/log.hpp"

#include "core/append.hpp"

#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <mutex>

namespace dechunkd {

std::atomic<LogLevel> Log::level_{LogLevel::Info};

namespace {
std::mutex g_write_mu;  // keeps lines from several workers whole
bool g_journal = false;

std::string_view level_name(LogLevel l) {
  switch (l) {
    case LogLevel::Error: return "error";
    case LogLevel::Warn: return "warn";
    case LogLevel::Info: return "info";
    case LogLevel::Debug: return "debug";
  }
  return "info";
}

// sd-daemon(3) priorities: err=3, warning=4, info=6, debug=7.
char journal_priority(LogLevel l) {
  switch (l) {
    case LogLevel::Error: return '3';
    case LogLevel::Warn: return '4';
    case LogLevel::Info: return '6';
    case LogLevel::Debug: return '7';
  }
  return '6';
}
}  // namespace

int64_t wall_clock_ms() {
  using namespace std::chrono;
  return duration_cast<milliseconds>(system_clock::now().time_since_epoch()).count();
}

std::string format_rfc3339_ms(int64_t unix_ms) {
  std::string out;
  StringWriter w(out, 24);
  append_rfc3339_ms(w, unix_ms);
  w.finish();
  return out;
}

void append_rfc3339_ms(StringWriter& out, int64_t unix_ms) {
  time_t secs = static_cast<time_t>(unix_ms / 1000);
  int ms = static_cast<int>(unix_ms % 1000);
  // The date and time change once a second: formatted once per second and thread (the access
  // log formats one per request).
  thread_local time_t cached_secs = -1;
  thread_local char cached[32];
  thread_local size_t cached_len = 0;
  if (secs != cached_secs) {
    tm t{};
    gmtime_r(&secs, &t);
    cached_len = strftime(cached, sizeof cached, "%Y-%m-%dT%H:%M:%S", &t);
    cached_secs = secs;
  }
  const char frac[5] = {'.', static_cast<char>('0' + ms / 100), static_cast<char>('0' + ms / 10 % 10),
                        static_cast<char>('0' + ms % 10), 'Z'};
  out.put(std::string_view(cached, cached_len));
  out.put(std::string_view(frac, sizeof frac));
}

void Log::init_from_environment() {
  // JOURNAL_STREAM is "dev:ino" of the journal's stream; compare with our stderr (sd_journal
  // docs), so a redirected stderr in a child still gets plain lines.
  const char* js = std::getenv("JOURNAL_STREAM");
  if (!js) return;
  struct stat st {};
  if (fstat(STDERR_FILENO, &st) != 0) return;
  unsigned long long dev = 0, ino = 0;
  if (std::sscanf(js, "%llu:%llu", &dev, &ino) == 2 && dev == st.st_dev && ino == st.st_ino) g_journal = true;
}

void Log::write(LogLevel level, std::string_view message) {
  std::string line;
  line.reserve(message.size() + 40);
  if (g_journal) {
    line += '<';
    line += journal_priority(level);
    line += '>';
  } else {
    line += format_rfc3339_ms(wall_clock_ms());
    line += ' ';
    line += level_name(level);
    line += ' ';
  }
  line += message;
  line += '\n';
  std::lock_guard<std::mutex> lock(g_write_mu);
  size_t off = 0;
  while (off < line.size()) {
    ssize_t n = ::write(STDERR_FILENO, line.data() + off, line.size() - off);
    if (n <= 0) break;
    off += static_cast<size_t>(n);
  }
}

}  // namespace dechunkd
